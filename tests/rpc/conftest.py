"""The ``harness`` fixture: the behaviour suite runs once per transport in HARNESSES."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted

from support.rpc import HARNESSES, Harness


@pytest.fixture(params=sorted(HARNESSES))
def harness_factory(request: pytest.FixtureRequest, tmp_path: Path):
    return lambda: HARNESSES[request.param](tmp_path)


@pytest_twisted.async_yield_fixture
async def harness(harness_factory) -> AsyncIterator[Harness]:
    h = harness_factory()
    yield h
    await h.stop()
