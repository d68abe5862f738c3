"""``cellgate ...`` (a move or a drain) that pauses after its Nth write statement.

Run as a script by ``test_move_crash.py``, which then SIGKILLs the paused
process, so every step boundary and every point inside a step (each INSERT,
UPDATE and DELETE, on any of the three databases) is hit deterministically
instead of by a timer. Arguments: ``N READY_FILE CLI-ARGS...``. When the Nth
write statement has run, its first line is written to READY_FILE and the
process waits (at most a minute) to be killed. With N = 0 it never pauses
and writes the number of write statements it ran to READY_FILE at exit.
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

WRITES = ("INSERT", "UPDATE", "DELETE")


def main() -> None:
    nth, ready, args = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
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
        time.sleep(60)  # the test kills us here

    if nth == 0:
        atexit.register(lambda: ready.write_text(str(seen)))
    cli.main(args, prog_name="cellgate")


if __name__ == "__main__":
    main()
