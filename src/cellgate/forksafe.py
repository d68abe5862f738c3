"""Repairing process-local state in a child after ``os.fork()``.

A forked child inherits the parent's memory but only the forking thread:
locks held by other threads stay held forever, counts of worker threads are
wrong, and pooled sockets are shared with the parent. Objects that own such
state register here and get ``_after_fork_in_child()`` called in the child
(Nova instead clears another module's global by hand after fork).

This registry is weak: it keeps nothing alive, and it holds no routing state.
Services should still prefer to build their ``App`` after spawning.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_objects: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def register(obj: ForkAware) -> None:
    _objects.add(obj)


def _repair_all() -> None:
    for obj in list(_objects):
        obj._after_fork_in_child()


os.register_at_fork(after_in_child=_repair_all)
