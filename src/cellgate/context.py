"""The request context: who is asking, and which cell the work targets.

A :class:`RequestContext` is frozen. Targeting a cell returns a *copy*
(:meth:`RequestContext.for_cell`), so a context shared between threads or
scatter-gather branches can never be re-pointed under another caller's feet
(Nova's ``set_target_cell`` mutates in place). It is passed explicitly; no
thread-local or global holds "the current context"; the request deadline it
carries is entered as a context variable by the code doing the work
(:mod:`cellgate.deadline`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from cellgate.apidb.mappings import CellMapping


def _request_id() -> str:
    return f"req-{uuid.uuid4()}"


@dataclass(frozen=True)
class RequestContext:
    """Identity of a request plus its target cell (``None`` until targeted)."""

    project_id: str | None = None
    user_id: str | None = None
    roles: tuple[str, ...] = ()
    request_id: str = field(default_factory=_request_id)
    cell: CellMapping | None = None
    #: The request's deadline, a ``time.monotonic()`` instant (``None``: none).
    #: Local to this process: it never travels over RPC (see cellgate.deadline).
    deadline: float | None = field(default=None, compare=False)

    def without_deadline(self) -> RequestContext:
        """A copy with no deadline, for undoing what a request half did."""
        return replace(self, deadline=None)

    def for_cell(self, cell: CellMapping | None) -> RequestContext:
        """A copy of this context targeting ``cell``; ``self`` is unchanged."""
        return replace(self, cell=cell)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form for RPC: the cell travels as its uuid, never its URLs."""
        return {
            "request_id": self.request_id,
            "project_id": self.project_id,
            "user_id": self.user_id,
            "roles": list(self.roles),
            "cell_uuid": self.cell.uuid if self.cell else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], cell: CellMapping | None = None) -> RequestContext:
        """Rebuild a context; the receiver supplies ``cell`` from its own mappings."""
        return cls(
            project_id=data.get("project_id"),
            user_id=data.get("user_id"),
            roles=tuple(data.get("roles") or ()),
            request_id=str(data.get("request_id") or _request_id()),
            cell=cell,
        )
