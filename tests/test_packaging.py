"""The package as a user gets it: a plain ``pip install .`` into a fresh virtualenv."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ("storeserver", "workerhost", "busnode", "txloom")


@pytest.mark.slow
def test_twistd_lists_every_plugin_after_plain_install(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    shown = subprocess.run(
        [str(env_dir / "bin" / "twistd"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    for name in PLUGINS:
        assert f"    {name} " in shown.stdout, f"{name} missing from twistd --help"
    # the dropin is installed as a file, not as a package shadowing Twisted's
    site = subprocess.run(
        [str(py), "-c", "import twisted.plugins.txloom_plugins as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert "site-packages" in site.stdout, site.stderr
    assert sys.prefix not in site.stdout
