"""``with`` support for objects that own resources and release them in ``close()``.

``App``, ``AllInOne`` and ``FanoutPool`` each own threads, engines or sockets
and must be closed exactly as they are used in a ``with`` block; one base
class keeps the three from repeating the protocol.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """A base whose ``with`` block ends in :meth:`close`."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
