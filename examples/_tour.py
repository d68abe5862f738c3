"""What both tours share: printing a step, and running the CLI in this process.

Imported as ``_tour`` because Python puts a script's own directory first on
``sys.path``, so the tours run from any working directory.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

from cellgate.cli import cli


def say(line: str = "") -> None:
    print(line, flush=True)


def cellgate(config: Path, *args: str) -> str:
    """Run ``cellgate --config-file CONFIG ARGS...`` in this process; return its stdout."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--config-file", str(config), *args], standalone_mode=False)
    if code not in (None, 0):
        sys.stderr.write(out.getvalue() + err.getvalue())
        raise SystemExit(f"cellgate {' '.join(args)} failed with exit code {code}")
    return out.getvalue()
