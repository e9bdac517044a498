"""Every worker-host implementation provides the interface it declares."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import verify

from txloom.interfaces import (
    IAddressResolver,
    IDownstream,
    IReplyChannel,
    IService,
    IUpstream,
    IWorkerLauncher,
)
from txloom.worker.app_service import AppService, IgnoredUpstream
from txloom.worker.client import LocatorAddressResolver
from txloom.worker.dispatch import PRIMITIVE, ChannelReply, ServiceConnection
from txloom.worker.http_front import HttpReply
from txloom.worker.locator import Locator
from txloom.worker.logging_service import LoggingService
from txloom.worker.manifest import AppManifest
from txloom.worker.pool import WorkerPool
from txloom.worker.process import ProcessLauncher
from txloom.worker.profile import Profile
from txloom.worker.session import Session


def test_services() -> None:
    manifest = AppManifest("app", ("x",), "/", {}, Profile())
    pool = WorkerPool(manifest, "/s", "127.0.0.1:1", ProcessLauncher(Clock()), Clock())
    for service in (Locator(), LoggingService(), AppService(pool)):
        verify.verifyObject(IService, service)


def test_streams() -> None:
    reply = ChannelReply(ServiceConnection(Locator()), 1, PRIMITIVE)
    verify.verifyObject(IReplyChannel, reply)
    verify.verifyObject(IDownstream, HttpReply(DummyRequest([b""]), "app"))
    verify.verifyObject(IUpstream, Session(b"e", (), reply))
    verify.verifyObject(IUpstream, IgnoredUpstream())
    verify.verifyObject(IWorkerLauncher, ProcessLauncher(Clock()))


def test_locator_resolver() -> None:
    resolver = LocatorAddressResolver(("127.0.0.1", 10053))
    verify.verifyObject(IAddressResolver, resolver)
