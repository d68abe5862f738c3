"""CLI start-up: ``cellgate --version`` against ``python -c 'import sqlalchemy'``.

Both are whole processes (interpreter start included), run alternately so
that a busy machine slows both alike; the figure is the median of the
per-pair ratios. The baseline is the one heavy import every command needs,
so the ratio says what cellgate adds on top of it: a CLI that imported its
web stack or every command module for ``--version`` would show up here.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks.stats import Pair, interleaved_once


def cellgate_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m cellgate``."""
    script = Path(sys.executable).with_name("cellgate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cellgate"]


def _wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return time.perf_counter() - start


def version_over_import_sqlalchemy(samples: int) -> Pair:
    """Seconds of ``cellgate --version`` (a) and of importing SQLAlchemy (b), interleaved."""
    version = [*cellgate_command(), "--version"]
    baseline = [sys.executable, "-c", "import sqlalchemy"]
    return interleaved_once(lambda: _wall(version), lambda: _wall(baseline), samples=samples)
