"""``Target``: where an RPC message goes, inside one cell's transport.

The cell itself is not part of the target: it comes from the request context
(``ctx.cell``), so the same ``Target`` reaches "the compute topic" of whichever
cell a call is aimed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# No ':' in names: drivers use it to join topic and server (see rpc/rabbit.py).
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
_VERSION_RE: Final = re.compile(r"^\d+\.\d+$")


@dataclass(frozen=True)
class Target:
    """Addressing value object: ``topic``, optionally one ``server``, or ``fanout``.

    - ``Target("compute")``: one of the topic's servers (round robin);
    - ``Target("compute", server="host1")``: exactly that server;
    - ``Target("compute", fanout=True)``: every server of the topic (cast only).

    ``version`` is ``"MAJOR.MINOR"``: on a client, the version a call needs;
    on a server, the newest it implements (same major, minor up to it).
    """

    topic: str
    server: str | None = None
    fanout: bool = False
    version: str | None = None

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.topic):
            raise ValueError(f"invalid RPC topic {self.topic!r}")
        if self.server is not None and not _NAME_RE.match(self.server):
            raise ValueError(f"invalid RPC server name {self.server!r}")
        if self.version is not None and not _VERSION_RE.match(self.version):
            raise ValueError(f"RPC version must be MAJOR.MINOR, not {self.version!r}")
        if self.fanout and self.server is not None:
            raise ValueError("a fanout target addresses every server; do not name one")

    def __str__(self) -> str:
        where = "fanout" if self.fanout else (self.server or "any server")
        return f"topic {self.topic!r} ({where})"


def version_compatible(requested: str | None, supported: str | None) -> bool:
    """Can a server implementing ``supported`` serve a call asking for ``requested``?"""
    if requested is None or supported is None:
        return True
    req_major, req_minor = (int(p) for p in requested.split("."))
    sup_major, sup_minor = (int(p) for p in supported.split("."))
    return req_major == sup_major and req_minor <= sup_minor
