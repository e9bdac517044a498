"""Fixtures shared by the store tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.certs import self_signed_certificate


@pytest.fixture
def tls_server(tmp_path: Path):
    """A memory-backed server listening only on TLS; yields ``(service, cert_file)``."""
    # imported here: a conftest is loaded before pytest-twisted installs the reactor
    from support.store import serve

    cert_file, key_file = self_signed_certificate(tmp_path / "tls")
    listen = [f"ssl:0:interface=127.0.0.1:privateKey={key_file}:certKey={cert_file}"]
    for service in serve(tmp_path / "data", backend="memory", listen=listen):
        yield service, cert_file
