"""Run one ``cellgate`` command that pauses after its Nth write statement.

Run as a script by tests that SIGKILL a command in the middle of its work
(``test_archive.py``): a pause at a chosen write is a deterministic "middle",
where a timer would be a random one. Arguments: ``N READY_FILE CLI_ARGS...``.
When the Nth statement that writes (INSERT, UPDATE, DELETE), on any database,
has run (its transaction not yet committed), the statement's first line is
written to READY_FILE and the process waits up to a minute for READY_FILE
with the suffix ``.go`` to appear, then carries on.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from cellgate.cli import cli

WRITES = ("INSERT", "UPDATE", "DELETE")


def main() -> None:
    nth, ready, args = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    seen = 0
    lock = threading.Lock()

    @event.listens_for(Engine, "after_cursor_execute")
    def pause(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        nonlocal seen
        if not statement.lstrip().upper().startswith(WRITES):
            return
        with lock:
            seen += 1
            if seen != nth:
                return
        ready.write_text(statement.strip().splitlines()[0][:120])
        go = ready.with_suffix(".go")
        deadline = time.monotonic() + 60
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    cli.main(args, prog_name="cellgate")


if __name__ == "__main__":
    main()
