"""Nova's cell URLs in cellgate's terms: translate the drivers, refuse what means otherwise.

Nova deployments write database URLs for the drivers oslo.db uses:
``mysql+pymysql://`` (cellgate's own), plain ``mysql://`` (mysqlclient) and
``postgresql+psycopg2://``. cellgate ships PyMySQL and psycopg 3, and the
same server speaks to either, so those are rewritten to
``mysql+pymysql://`` and ``postgresql+psycopg://``; the rest of the URL
(credentials, host, query) is kept as written. A ``{scheme}`` template is
left alone: it renders from the default URL at use.

Transport URLs are kept, except oslo.messaging's ``amqp://``: there it
selects the AMQP 1.0 driver (qpid dispatch router), not RabbitMQ's AMQP
0-9-1, which is what ``amqp://`` means to cellgate (and kombu). Reading it as
RabbitMQ would route a cell's calls to the wrong kind of broker, so it is
refused, never reinterpreted.
"""

from __future__ import annotations

from typing import Final

from cellgate.errors import InvalidURL
from cellgate.urls import mask_url

#: Nova's database drivers -> the driver cellgate uses for the same server.
DRIVER_TRANSLATIONS: Final = {
    "mysql": "mysql+pymysql",
    "mysql+mysqldb": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
    "postgresql+psycopg2": "postgresql+psycopg",
}

#: Transport schemes oslo.messaging gives a meaning cellgate's would misread.
REFUSED_TRANSPORT_SCHEMES: Final = {
    "amqp": "oslo.messaging's amqp:// is its AMQP 1.0 driver, not RabbitMQ (AMQP 0-9-1)",
    "kafka": "oslo.messaging's kafka driver carries notifications only, not RPC",
}


def _scheme(raw: str) -> tuple[str, str] | None:
    scheme, sep, rest = raw.partition("://")
    return (scheme, rest) if sep else None


def translate_database_url(raw: str) -> str:
    """The URL with Nova's driver replaced by the one cellgate ships; otherwise unchanged."""
    split = _scheme(raw)
    if split is None:
        return raw
    scheme, rest = split
    new = DRIVER_TRANSLATIONS.get(scheme.lower())
    return f"{new}://{rest}" if new is not None else raw


def database_translation(raw: str) -> str | None:
    """``"mysql -> mysql+pymysql"`` when :func:`translate_database_url` changes ``raw``."""
    split = _scheme(raw)
    if split is None or split[0].lower() not in DRIVER_TRANSLATIONS:
        return None
    return f"{split[0]} -> {DRIVER_TRANSLATIONS[split[0].lower()]}"


def check_transport_url(raw: str) -> str:
    """``raw`` unchanged, or :class:`~cellgate.errors.InvalidURL` for a scheme it would misread."""
    split = _scheme(raw)
    if split is not None:
        reason = REFUSED_TRANSPORT_SCHEMES.get(split[0].lower())
        if reason is not None:
            raise InvalidURL(url=mask_url(raw), reason=reason)
    return raw
