"""SIGINT and SIGTERM during a sync: finish the current revision, then stop and say so.

A sync killed inside a revision resumes on the next run (every revision's
operations are guarded, :mod:`cellgate.migrations.guarded`), but stopping
*between* revisions is cleaner and can say where it stopped. The first signal
sets the event the runner checks after each revision and prints one line;
the runner then raises :class:`~cellgate.errors.MigrationInterrupted` (exit
130, like a shell's Ctrl-C). A second signal aborts at once.

Signals are an edge concern, so they are handled here and not in the
library: library callers pass their own ``threading.Event``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import click

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals(what: str) -> Iterator[threading.Event]:
    """An event set by the first SIGINT/SIGTERM while the block runs (main thread only)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo(
            f"cellgate: {signal.Signals(signum).name} received: {what} stops after the "
            "current revision (send it again to abort at once)",
            err=True,
        )

    previous = {s: signal.signal(s, handler) for s in _SIGNALS}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
