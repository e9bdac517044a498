"""Extensions are found as Twisted plugins: a dropin on the plugin path is all it takes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import twisted.plugins
from twisted.python import usage

from txloom.extensions import available, choose, describe, parse_options
from txloom.interfaces import IAddressResolverFactory

DROPIN = textwrap.dedent(
    """
    from twisted.plugin import IPlugin
    from twisted.python import usage
    from zope.interface import implementer

    from txloom.interfaces import IAddressResolverFactory


    class Options(usage.Options):
        optParameters = [["path", None, None, "Where the map is."]]
        optFlags = [["watch", None, "Re-read on change."]]


    @implementer(IPlugin, IAddressResolverFactory)
    class FakeResolverFactory:
        name = "fake"
        description = "A resolver a test dropped in."
        options = Options

        def resolver(self, options):
            return options


    fake = FakeResolverFactory()
    """
)


@pytest.fixture
def dropin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = tmp_path / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "txloom_test_fake_resolver.py").write_text(DROPIN)
    monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, str(plugins)])


def test_a_dropin_is_found_and_chosen(dropin: None) -> None:
    factory = available(IAddressResolverFactory)["fake"]
    assert choose(IAddressResolverFactory, "fake", "--resolver") is factory
    assert "fake (A resolver a test dropped in.)" in describe(IAddressResolverFactory)
    options = parse_options(factory, ["path=/tmp/map", "watch"], "--resolver-option")
    assert options is not None
    assert options["path"] == "/tmp/map"
    assert options["watch"]


def test_unknown_name_lists_the_choices(dropin: None) -> None:
    with pytest.raises(usage.UsageError, match=r"--resolver nope: not installed; .*fake"):
        choose(IAddressResolverFactory, "nope", "--resolver")


def test_bad_factory_option_is_one_line(dropin: None) -> None:
    factory = available(IAddressResolverFactory)["fake"]
    with pytest.raises(usage.UsageError, match=r"--resolver-option \(fake\): .*colour"):
        parse_options(factory, ["colour=red"], "--resolver-option")
