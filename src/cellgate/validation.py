"""Text a client or operator sends, checked before it reaches any database.

A NUL byte is refused by PostgreSQL's driver, a newline splits a ``cell
list`` row in two, an ANSI escape repaints an operator's terminal: none is a
name. :func:`control_character` is the one test every entry point uses (the
REST API, the CLI and the library, through :func:`cellgate.apidb.mappings.check_name`),
so the same input is refused the same way everywhere, and nothing is written.
"""

from __future__ import annotations

import unicodedata

#: Unicode categories refused in names: controls (C0, DEL, C1, so NUL, newline
#: and ESC), format characters (bidi overrides) and line/paragraph separators.
_REFUSED = frozenset({"Cc", "Cf", "Zl", "Zp"})


def control_character(text: str) -> str | None:
    """A description of the first control character in ``text``, or ``None``."""
    for index, char in enumerate(text):
        if unicodedata.category(char) in _REFUSED:
            return f"a control character (U+{ord(char):04X}) at position {index + 1}"
    return None
