"""The status site itself: readiness from checks, one registry per site."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import threads

from support.status import get, ready, scrape
from txloom.status import StatusService, Watch
from txloom.status.metrics import ServerCollector, counter


@pytest_twisted.ensureDeferred
async def test_readyz_is_503_with_the_failing_checks_until_they_pass() -> None:
    from twisted.internet import reactor

    state = {"recovered": False, "count": 0}
    watch = Watch(
        "part",
        [
            ServerCollector(
                lambda: [counter("txloom_test_things", "Things.", state["count"])], reactor
            )
        ],
        {
            "recovered": lambda: None if state["recovered"] else "recovering",
            "broken": lambda: 1 / 0 and None,
        },
    )
    other = Watch("other", [ServerCollector(lambda: [], reactor)], {})
    status = StatusService("tcp:0:interface=127.0.0.1", [watch, other], reactor)
    status.startService()
    try:
        port = status.address[1]
        code, body = await threads.deferToThread(ready, port)
        assert code == 503
        assert body["checks"] == {
            "part.recovered": "recovering",
            "part.broken": "check failed: division by zero",
        }
        watch.checks.pop("broken")
        state["recovered"] = True
        state["count"] = 7
        assert (await threads.deferToThread(ready, port))[0] == 200
        # the collector is read on the reactor thread while the resource renders in a thread
        assert (await threads.deferToThread(scrape, port))["txloom_test_things_total"] == 7
        assert (await threads.deferToThread(get, port, "/healthz"))[0] == 200
    finally:
        await status.stopService()


def test_sites_do_not_share_a_registry() -> None:
    a = StatusService("tcp:0", [Watch("a")])
    b = StatusService("tcp:0", [Watch("b")])
    assert a.registry is not b.registry
