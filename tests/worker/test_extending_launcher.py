"""The launcher example of docs/extending.md, run as the plugin it says it is."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import pytest_twisted
import twisted.plugins
from zope.interface import verify

from support.workerhost import call, short_tmpdir, start_host
from txloom.extensions import choose, parse_options
from txloom.interfaces import IWorkerLauncher, IWorkerLauncherFactory

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def _example() -> str:
    text = DOC.read_text()
    section = text[text.index("## Worker launchers") :]
    match = re.search(
        r"```python\n(# twisted/plugins/example_nice_launcher\.py\n.*?)```", section, re.S
    )
    assert match, "the launcher example is missing from docs/extending.md"
    return match[1]


@pytest.fixture
def nice_dropin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = tmp_path / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "example_nice_launcher.py").write_text(_example())
    monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, str(plugins)])


@pytest_twisted.ensureDeferred
async def test_the_nice_launcher_of_the_docs_runs_workers_at_its_level(nice_dropin: None) -> None:
    from twisted.internet import reactor

    factory = choose(IWorkerLauncherFactory, "nice", "--launcher")
    verify.verifyObject(IWorkerLauncherFactory, factory)
    options = parse_options(factory, ["level=5"], "--launcher-option")
    launcher = factory.launcher(reactor, options)
    verify.verifyObject(IWorkerLauncher, launcher)
    with short_tmpdir() as root:
        host = start_host(root, {"nice": {}}, launcher=launcher)
        try:
            pid = int(await call(host, "nice", "pid"))
            assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 5
        finally:
            await host.stopService()
