"""OpenStack Nova's own code, in a virtualenv of its own, built once per machine.

The Nova tests build their databases with ``nova-manage`` (Nova's schema is
Nova's, not our reading of it), so they need Nova installed, and Nova's
dependency set (oslo.*, eventlet, its own SQLAlchemy pin) must never meet
cellgate's. The virtualenv lives in ``~/.cache/cellgate/nova-<version>``
and is reused while it is complete; a file lock makes parallel workers (and
parallel runs) build it once. ``.complete`` is written last, so an
interrupted build is redone rather than trusted.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import in_ci

NOVA_VERSION = "34.0.0"
#: Drivers Nova itself uses for the servers: PyMySQL and psycopg2.
_PACKAGES = [f"nova=={NOVA_VERSION}", "PyMySQL", "psycopg2-binary"]
_INSTALL_TIMEOUT = 900.0


def venv_dir() -> Path:
    base = Path(os.environ.get("CELLGATE_CACHE", Path.home() / ".cache" / "cellgate"))
    return base / f"nova-{NOVA_VERSION}"


def nova_manage() -> Path:
    """The ``nova-manage`` of the cached virtualenv, building it first if need be."""
    venv = venv_dir()
    venv.parent.mkdir(parents=True, exist_ok=True)
    complete = venv / ".complete"
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not complete.exists():
            _build(venv)
            complete.write_text(" ".join(_PACKAGES) + "\n")
    return venv / "bin" / "nova-manage"


def _build(venv: Path) -> None:
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", *_PACKAGES],
            check=True,
            capture_output=True,
            text=True,
            timeout=_INSTALL_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        message = f"installing Nova {NOVA_VERSION} into {venv} failed: {str(detail)[-2000:]}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
