"""Logging that cannot print a password.

:class:`RedactingFilter` masks every URL password in a record's final message
(and in the traceback text, if any) before any handler formats it. It is
installed on the handlers cellgate configures, so third-party loggers that
echo a connection URL are masked too.
"""

from __future__ import annotations

import logging
import sys
from typing import Final

from cellgate.urls import redact

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFilter(logging.Filter):
    """Replace ``record.msg`` with its redacted, fully formatted text."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def configure_logging(level: int) -> logging.Handler:
    """Send logs to stderr through the redacting filter; return the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not getattr(h, "_cellgate", False)]
    handler._cellgate = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    return handler
