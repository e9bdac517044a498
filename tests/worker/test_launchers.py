"""Worker launchers are found as Twisted plugins and chosen with ``--launcher NAME``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import twisted.plugins
from twisted.internet.task import Clock
from twisted.python import usage
from zope.interface import verify

from txloom.extensions import available
from txloom.interfaces import IWorkerLauncher, IWorkerLauncherFactory
from txloom.worker.process import ProcessLauncher
from txloom.worker.tap import Options, makeService

DROPIN = textwrap.dedent(
    """
    from twisted.plugin import IPlugin
    from twisted.python import usage
    from zope.interface import implementer

    from txloom.interfaces import IWorkerLauncher, IWorkerLauncherFactory


    class Options(usage.Options):
        optParameters = [["image", None, None, "Container image."]]


    @implementer(IWorkerLauncher)
    class ContainerLauncher:
        def __init__(self, reactor, image):
            self.reactor = reactor
            self.image = image

        def launch(self, protocol, argv, env, cwd):
            raise NotImplementedError


    @implementer(IPlugin, IWorkerLauncherFactory)
    class ContainerLauncherFactory:
        name = "container"
        description = "each worker in a container"
        options = Options

        def launcher(self, reactor, options):
            return ContainerLauncher(reactor, options["image"])


    container = ContainerLauncherFactory()
    """
)


@pytest.fixture
def dropin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = tmp_path / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "txloom_test_container_launcher.py").write_text(DROPIN)
    monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, str(plugins)])


def test_the_process_launcher_is_a_plugin_and_the_default(tmp_path: Path) -> None:
    factory = available(IWorkerLauncherFactory)["process"]
    verify.verifyObject(IWorkerLauncherFactory, factory)
    launcher = factory.launcher(Clock(), None)
    assert isinstance(launcher, ProcessLauncher)
    verify.verifyObject(IWorkerLauncher, launcher)
    options = Options()
    options.parseOptions(["--apps", str(tmp_path)])
    assert isinstance(makeService(options).launcher, ProcessLauncher)


def test_a_third_party_launcher_is_chosen_by_name_with_its_options(
    dropin: None, tmp_path: Path
) -> None:
    options = Options()
    options.parseOptions(
        ["--apps", str(tmp_path), "--launcher", "container", "--launcher-option", "image=app:1"]
    )
    launcher = makeService(options).launcher
    verify.verifyObject(IWorkerLauncher, launcher)
    assert launcher.image == "app:1"
    assert "container (each worker in a container)" in " ".join(str(Options()).split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--launcher", "nope"], "--launcher nope: not installed; choose one of: process"),
        (["--launcher-option", "x=1"], "--launcher-option: process takes no options"),
    ],
)
def test_bad_launcher_choices_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match=message):
        Options().parseOptions(["--apps", str(tmp_path), *args])
