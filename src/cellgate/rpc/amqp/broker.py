"""The kombu seam: one broker connection, a probe, and kombu's errors translated.

Errors from kombu and py-amqp are translated here into cellgate's backend
errors, with the broker named by host and port only, never by full URL.
kombu itself is imported only when a connection is made (import cost:
``cell verify`` on a cell with an in-process transport needs none of it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from cellgate.errors import BackendTimeout, BackendUnavailable
from cellgate.urls import TransportHost, TransportURL, redact

if TYPE_CHECKING:
    from kombu.connection import Connection

DEFAULT_AMQP_PORT = 5672


def broker_label(host: TransportHost) -> str:
    return f"{host.hostname}:{host.port or DEFAULT_AMQP_PORT}"


def broker_address(url: TransportURL, host: TransportHost) -> str:
    """One broker of ``url`` as a masked URL: ``rabbit://user:***@host:port/vhost``.

    Built masked (the password is never put into the string), for reports
    that name one broker of a multi-host URL on its own.
    """
    user = f"{quote(host.username, safe='')}:***@" if host.username else ""
    vhost = quote(url.virtual_host, safe="") if url.virtual_host else ""
    return f"{url.scheme}://{user}{broker_label(host)}/{vhost}"


def connection_for(url: TransportURL, host: TransportHost, *, timeout: float) -> Connection:
    """A kombu connection (not yet opened) to one broker of ``url``."""
    from kombu.connection import Connection  # import cost: see the module docstring

    return Connection(
        hostname=host.hostname,
        port=host.port or DEFAULT_AMQP_PORT,
        userid=host.username or "guest",
        password=host.password or "guest",
        virtual_host=url.virtual_host or "/",
        transport="pyamqp",
        connect_timeout=timeout,
        transport_options={"max_retries": 0},
    )


def probe_broker(
    url: TransportURL, host: TransportHost, *, timeout: float, component: str
) -> None:
    """Open and close one AMQP connection; raise a backend error on failure.

    One attempt, bounded by ``timeout``: kombu's ``connect()`` retries once
    after a 2 s pause, so a broker that accepts TCP and never answers cost
    ``2 * timeout + 2`` seconds while the report said "no answer within
    ``timeout``". ``ensure_connection(max_retries=0)`` makes exactly one
    attempt, and its ``timeout`` caps the attempt's TCP connect and the AMQP
    handshake (each read waits at most ``connect_timeout``).
    """
    conn = connection_for(url, host, timeout=timeout)
    try:
        conn.ensure_connection(max_retries=0, reraise_as_library_errors=False, timeout=timeout)
    except TimeoutError as exc:
        raise BackendTimeout(component=component, reason=f"no answer within {timeout:g}s") from exc
    except Exception as exc:  # kombu/amqp raise many unrelated types; all mean "unusable"
        raise BackendUnavailable(component=component, reason=describe_amqp_error(exc)) from exc
    finally:
        conn.release()


def describe_amqp_error(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return redact(first)
