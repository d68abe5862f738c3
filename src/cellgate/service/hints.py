"""The REST API's words for :class:`~cellgate.errors.Hint` keys, and its error text.

A REST client cannot run ``cellgate cell list`` or pass ``--force``: it gets
an endpoint to call, or no hint. Free-text hints (the transition path in
:mod:`cellgate.errors`) are CLI-only and never appear here, nor does
``str(exc)``, which may still carry one. ``tests/unit/test_errors.py`` walks
every key and every error class to check that no shell command gets through.
"""

from __future__ import annotations

from typing import Final

from cellgate.errors import CellgateError, Hint

#: Keys a REST client can act on; every other key renders as no hint.
REST_HINTS: Final[dict[Hint, str]] = {
    Hint.LIST_CELLS: "GET /v1/cells lists the cells",
    Hint.CHOOSE_OTHER_NAME: "choose another",
    Hint.START_SERVER: "the cell's workers may be down",
    Hint.RESUME_MOVE: "try again once the move has finished",
    Hint.USE_PYMYSQL: "use mysql+pymysql://",
    Hint.ENCODE_QUERY_AT: "percent-encode '@' in the query string as %40",
    Hint.ENCODE_PASSWORD_CHARS: "percent-encode '@', '?' and '#' in a password (%40, %3F, %23)",
}


def rest_hint(exc: CellgateError) -> str | None:
    """The hint for an API client, or None (free text and CLI-only keys)."""
    hint = exc.hint
    return REST_HINTS.get(hint) if isinstance(hint, Hint) else None


def rest_message(exc: CellgateError) -> str:
    """What an API client reads: the plain (or public) message and a REST hint, if any."""
    public = getattr(exc, "public_message", None)
    message = public if isinstance(public, str) else exc.message
    hint = rest_hint(exc)
    return f"{message}; {hint}" if hint else message
