"""``cellgate api-db sync`` / ``db sync`` that pauses after its Nth write statement.

Run as a script by ``test_interrupted_sync.py``, which then kills or
interrupts the paused process, so every revision boundary and every point
inside a revision is hit deterministically instead of by a timer. Arguments:
``CONFIG LINE N READY_FILE``. When the Nth statement that writes (CREATE,
ALTER, DROP, INSERT, UPDATE) has run, the statement's first line is written to
READY_FILE and the process waits until READY_FILE with the suffix ``.go``
exists (at most a minute), then carries on. With N = 0 it never pauses and
writes the number of write statements it ran to READY_FILE at exit.
"""

from __future__ import annotations

import atexit
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from cellgate.cli import cli

WRITES = ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE")


def main() -> None:
    config, line, nth, ready = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    seen = 0

    @event.listens_for(Engine, "after_cursor_execute")
    def pause(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        nonlocal seen
        if not statement.lstrip().upper().startswith(WRITES):
            return
        seen += 1
        if seen != nth:
            return
        ready.write_text(statement.strip().splitlines()[0][:120])
        go = ready.with_suffix(".go")
        deadline = time.monotonic() + 60
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    if nth == 0:
        atexit.register(lambda: ready.write_text(str(seen)))
    command = ["api-db", "sync"] if line == "api" else ["db", "sync", "--local"]
    cli.main(["--config-file", config, *command], prog_name="cellgate")


if __name__ == "__main__":
    main()
