"""Database and transport URLs as values that cannot leak their password.

A cell mapping stores two URLs, and both usually carry credentials. Every
type here renders itself with the password replaced by ``***``; the only way to
get the real string is an explicit call (``reveal()`` or
``render(hide_password=False)``), the way alembic's ``obfuscate_url_pw`` and
SQLAlchemy's ``URL.render_as_string`` work.

Parsing is deliberately lenient when *masking* (an operator's typo must still
print safely, so a password with an unencoded ``@``, ``/`` or ``,`` is masked
whole rather than shown in part) and strict when *validating*.

Nothing here does I/O.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote, unquote_plus

import sqlalchemy.engine
import sqlalchemy.exc

from cellgate.errors import ConfigError, Hint, InvalidURL

MASK: Final = "***"

#: Database drivers cellgate is tested with, as ``scheme`` of the URL.
DATABASE_SCHEMES: Final = frozenset(
    {
        "sqlite",
        "sqlite+pysqlite",
        "mysql+pymysql",
        "mariadb+pymysql",
        "postgresql",
        "postgresql+psycopg",
    }
)

#: Transport schemes: AMQP brokers, the in-process transport, and cell0's none.
TRANSPORT_SCHEMES: Final = frozenset({"rabbit", "amqp", "memory", "none"})

#: Transport scheme meaning "this cell has no message queue" (cell0 only).
NO_TRANSPORT: Final = "none:///"

#: Placeholders a templated cell URL may use (Nova's set).
TEMPLATE_FIELDS: Final = frozenset(
    {"scheme", "username", "password", "hostname", "port", "path", "query", "fragment"}
)
#: Per-host placeholders of a multi-host default URL, numbered from 1 (Nova's
#: ``{username1}``, ``{hostname2}`` ...): ``{hostname1}`` is the first host's.
INDEXED_FIELDS: Final = frozenset({"username", "password", "hostname", "port"})
_INDEXED_RE: Final = re.compile(r"^(username|password|hostname|port)([1-9][0-9]*)$")
# Fields that may be empty in the default URL without making the result wrong.
_OPTIONAL_FIELDS: Final = frozenset({"path", "query", "fragment"})

#: libpq's ``target_session_attrs`` values (libpq 14+).
TARGET_SESSION_ATTRS: Final = frozenset(
    {"any", "read-write", "read-only", "primary", "standby", "prefer-standby"}
)
#: libpq's ``load_balance_hosts`` values (libpq 16+; psycopg 3 implements it itself).
LOAD_BALANCE_HOSTS: Final = frozenset({"disable", "random"})
# A host of a PostgreSQL multi-host URL: a name or IPv4 address. Not a Unix
# socket directory (a path) nor an IPv6 literal: SQLAlchemy splits "h:p" on
# the colon, so an IPv6 address would be cut into pieces.
_PG_HOST_RE: Final = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?$")

_SCHEME_RE: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*|\{scheme\})$")
_HOSTPORT_RE: Final = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._\-]+)(:\d+)?$")
_URL_IN_TEXT_RE: Final = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.\-]*|\{scheme\})://[^\s'\"<>]*")


@dataclass(frozen=True)
class _Host:
    username: str | None
    password: str | None
    hostport: str

    @property
    def hostname(self) -> str:
        host, _, _ = self._split_port()
        return host

    @property
    def port(self) -> str | None:
        _, sep, port = self._split_port()
        return port if sep else None

    def _split_port(self) -> tuple[str, str, str]:
        if self.hostport.startswith("["):  # [ipv6]:port
            end = self.hostport.find("]")
            if end != -1:
                rest = self.hostport[end + 1 :]
                return self.hostport[: end + 1], ":" if rest.startswith(":") else "", rest[1:]
        return self.hostport.rpartition(":") if ":" in self.hostport else (self.hostport, "", "")

    def render(self, hide_password: bool) -> str:
        if self.username is None and self.password is None:
            return self.hostport
        user = self.username or ""
        if self.password is None:
            return f"{user}@{self.hostport}"
        password = MASK if hide_password and not _is_placeholder(self.password) else self.password
        return f"{user}:{password}@{self.hostport}"


@dataclass(frozen=True)
class _Parts:
    scheme: str
    hosts: tuple[_Host, ...]
    tail: str  # "/path?query#fragment", unchanged

    def render(self, hide_password: bool) -> str:
        netloc = ",".join(h.render(False) for h in self.hosts)
        raw = f"{self.scheme}://{netloc}{self.tail}"
        return mask_url(raw) if hide_password else raw

    @property
    def path(self) -> str:
        return self.tail.split("?", 1)[0].split("#", 1)[0].lstrip("/")

    @property
    def query(self) -> str:
        before_fragment = self.tail.split("#", 1)[0]
        return before_fragment.split("?", 1)[1] if "?" in before_fragment else ""

    @property
    def fragment(self) -> str:
        return self.tail.split("#", 1)[1] if "#" in self.tail else ""


#: Query parameters that drivers accept as a password (PyMySQL, libpq).
SECRET_QUERY_KEYS: Final = frozenset({"password", "passwd", "sslpassword"})
# Any query key that looks like one is masked too: PASSWORD, db_password, token...
_SECRET_KEY_RE: Final = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)
# A query (or fragment) item "key=": its value runs to the next "&".
_QUERY_ITEM_RE: Final = re.compile(r"(?=[?&;#]([^?&;#=]*)=([^&]*))")


def is_secret_key(key: str) -> bool:
    """True if a (percent-decoded) query key may carry a password."""
    return bool(_SECRET_KEY_RE.search(unquote_plus(key)))


def _is_field(name: str) -> bool:
    return name in TEMPLATE_FIELDS or _INDEXED_RE.match(name) is not None


def _is_placeholder(value: str) -> bool:
    return value.startswith("{") and value.endswith("}") and _is_field(value[1:-1])


def _split(raw: str) -> _Parts | None:
    """Split ``scheme://[user[:pass]@]host[,...]/tail``; ``None`` if not URL-shaped.

    The userinfo ends at the last ``@`` before the first ``?`` or ``#`` (an
    ``@`` after them belongs to the query or fragment, as in
    ``?password=p@ss``), so an unencoded ``@`` or ``/`` in a password cannot
    cut it short. Hosts are split on the first comma after each ``@``, so a
    comma in a password only ever over-masks.
    """
    found = _split_spans(raw, legacy=False)
    return found[0] if found else None


def _delimiter(rest: str, *, legacy: bool) -> int:
    """Index of the ``@`` ending the userinfo in ``rest`` (``-1``: none)."""
    if legacy:  # the last "@" anywhere: how a password with a raw "?" or "#" reads
        return rest.rfind("@")
    stop = min((i for i in (rest.find("?"), rest.find("#")) if i != -1), default=len(rest))
    return rest.rfind("@", 0, stop)


def _split_spans(raw: str, *, legacy: bool) -> tuple[_Parts, list[tuple[int, int]]] | None:
    """:func:`_split`, plus where in ``raw`` each secret (password, query secret) is."""
    scheme, sep, rest = raw.partition("://")
    if not sep or not _SCHEME_RE.match(scheme):
        return None
    base = len(scheme) + 3
    at = _delimiter(rest, legacy=legacy)
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop, at + 1)
        if found != -1:
            end = min(end, found)
    netloc, tail = rest[:end], rest[end:]
    spans = [
        (base + end + m.start(2), base + end + m.end(2))
        for m in _QUERY_ITEM_RE.finditer(tail)
        if is_secret_key(m.group(1))
    ]
    if not netloc:
        return _Parts(scheme, (), tail), spans
    segments = netloc.split("@")
    hosts: list[_Host] = []
    userinfo: str | None = segments[0] if len(segments) > 1 else None
    start = 0  # where userinfo starts in rest
    pos = len(segments[0]) + 1  # where the next segment starts in rest
    for seg in segments[1:-1]:
        hostport, comma, next_userinfo = seg.partition(",")
        if comma and _HOSTPORT_RE.match(hostport) and ":" in next_userinfo:
            # "host[:port],user:password": the end of one broker, the start of the next
            spans.extend(_password_span(userinfo, base + start))
            hosts.append(_host(userinfo, hostport))
            userinfo, start = next_userinfo, pos + len(hostport) + 1
        else:  # an unencoded "@" (and maybe ",") inside the password: keep it whole
            userinfo = f"{userinfo}@{seg}"
        pos += len(seg) + 1
    spans.extend(_password_span(userinfo, base + start))
    first, *others = segments[-1].split(",")
    hosts.append(_host(userinfo, first))
    hosts.extend(_Host(None, None, h) for h in others)
    return _Parts(scheme, tuple(hosts), tail), spans


def _password_span(userinfo: str | None, start: int) -> list[tuple[int, int]]:
    if userinfo is None or ":" not in userinfo:
        return []
    colon = userinfo.index(":")
    if _is_placeholder(userinfo[colon + 1 :]):
        return []
    return [(start + colon + 1, start + len(userinfo))]


def secret_spans(raw: str) -> list[tuple[int, int]] | None:
    """Every ``(start, end)`` of ``raw`` that may be a secret; ``None`` if not a URL.

    The union of two readings: the userinfo ending before any ``?`` or ``#``
    (what RFC 3986 and the query-string password form need), and ending at
    the last ``@`` (a password holding a raw ``?`` or ``#``, which SQLAlchemy
    and libpq read as part of it). Where they disagree, both are masked.
    """
    found = _split_spans(raw, legacy=False)
    if found is None:
        return None
    spans = list(found[1])
    scheme_len = len(raw.partition("://")[0]) + 3
    rest = raw[scheme_len:]
    if _delimiter(rest, legacy=True) != _delimiter(rest, legacy=False):
        other = _split_spans(raw, legacy=True)
        if other is not None:
            spans.extend(other[1])
    return spans


def _host(userinfo: str | None, hostport: str) -> _Host:
    if userinfo is None:
        return _Host(None, None, hostport)
    user, colon, password = userinfo.partition(":")
    return _Host(user, password if colon else None, hostport)


def mask_url(raw: str) -> str:
    """Return ``raw`` with every password replaced by ``***``.

    Never raises. Placeholders such as ``{password}`` are kept, since they are
    not secrets. A value that is not URL-shaped is shown only by its length.
    Query secrets (``?password=``, ``?pass%77ord=``, ``?PASSWD=``...) are masked
    by their decoded key; where two readings of the URL disagree, every part
    either reading takes for a secret is masked.
    """
    spans = secret_spans(raw)
    if spans is None:
        return f"<unparseable URL, {len(raw)} characters>"
    out: list[str] = []
    pos = 0
    for start, end in sorted(spans):
        if start < pos:  # overlaps (or equals) the span just masked
            pos = max(pos, end)
            continue
        out += [raw[pos:start], MASK]
        pos = end
    out.append(raw[pos:])
    return "".join(out)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask passwords of any URL inside free text, plus the given ``secrets``.

    Used on messages we do not control (driver exceptions, log records). Each
    secret is removed raw, percent-encoded and percent-decoded.
    """
    text = _URL_IN_TEXT_RE.sub(lambda m: mask_url(m.group(0)), text)
    for secret in secrets:
        for form in {secret, quote(secret, safe=""), unquote(secret)}:
            if len(form) >= 3:
                text = text.replace(form, MASK)
    return text


def url_passwords(raw: str) -> list[str]:
    """Every password in ``raw`` (for :func:`redact`); empty if none."""
    spans = dict.fromkeys(secret_spans(raw) or [])  # the two readings may repeat one
    return [raw[start:end] for start, end in spans if end > start]


class StoredURL:
    """A URL (or URL template) as stored in a cell mapping.

    ``str()`` and ``repr()`` are masked. :meth:`reveal` returns the stored
    text for the rare caller that must have it (connecting, or
    ``cell show --reveal-secrets``).
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: str) -> None:
        self._raw = raw

    def reveal(self) -> str:
        return self._raw

    @property
    def is_template(self) -> bool:
        return any(field for _, field, _, _ in _parse_format(self._raw) if field is not None)

    def __str__(self) -> str:
        return mask_url(self._raw)

    def __repr__(self) -> str:
        return f"StoredURL({mask_url(self._raw)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoredURL) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)


class DatabaseURL:
    """A validated SQLAlchemy database URL for a supported driver.

    Bare ``postgresql://`` is normalised to psycopg 3; bare ``mysql://`` is
    rejected, because its default driver (mysqlclient) is not installed.

    PostgreSQL URLs may name several servers the libpq way, for a primary with
    standbys (what Patroni and pg_auto_failover deployments hand out): no host
    before the database name, and either repeated ``host=name:port``
    parameters or ``host=a,b&port=1,2``, with ``target_session_attrs`` (e.g.
    ``read-write``: the connection goes to whichever server is the primary
    now) and ``load_balance_hosts``. SQLAlchemy's psycopg dialect renders
    them for psycopg 3 as libpq's ``host=a,b port=1,2``; they are checked
    here, where a mistake is one line, and not at the first connection.
    """

    __slots__ = ("_key", "_masked", "_url")

    def __init__(self, url: sqlalchemy.engine.URL) -> None:
        self._url = url
        self._key: str | None = None
        self._masked: str | None = None  # str() is on the per-session path (error labels)

    @property
    def key(self) -> str:
        """The full URL, password included: an identity for registries, never output."""
        if self._key is None:
            self._key = self._url.render_as_string(hide_password=False)
        return self._key

    @classmethod
    def parse(cls, raw: str) -> DatabaseURL:
        masked = mask_url(raw)
        try:
            url = sqlalchemy.engine.make_url(raw)
        except sqlalchemy.exc.ArgumentError:
            reason = "not a database URL (expected driver://user:password@host/database)"
            raise InvalidURL(url=masked, reason=reason) from None
        except ValueError:  # make_url's only ValueError is int(port)
            raise InvalidURL(url=masked, reason="the port is not a number") from None
        if url.drivername not in DATABASE_SCHEMES:
            hint = Hint.USE_PYMYSQL if url.get_backend_name() in {"mysql", "mariadb"} else None
            supported = ", ".join(sorted(DATABASE_SCHEMES))
            raise InvalidURL(
                url=masked,
                reason=f"unsupported driver {url.drivername!r} (supported: {supported})",
                hint=hint,
            )
        if url.get_backend_name() != "sqlite" and "@" in f"{url.host or ''}{url.database or ''}":
            raise InvalidURL(
                url=masked,
                reason="the password contains an unencoded '@'",
                hint=Hint.ENCODE_AT_SIGN,
            )
        if url.port is not None and not 0 < url.port < 65536:  # as for transport URLs
            raise InvalidURL(url=masked, reason="the port is not 1-65535")
        if "@" in (url.username or ""):  # "u@h:1/db?password=p@ss" reads as user "u@h"
            raise InvalidURL(
                url=masked,
                reason="an unencoded '@' after the host",
                hint=Hint.ENCODE_QUERY_AT,
            )
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        if url.get_backend_name() == "postgresql":
            _check_pg_query(url, masked)
        multi_host = url.get_backend_name() == "postgresql" and _pg_query_hosts(url)
        if url.get_backend_name() != "sqlite" and not url.host and not multi_host:
            raise InvalidURL(url=masked, reason="no host given")
        if url.get_backend_name() != "sqlite" and not url.database:
            raise InvalidURL(url=masked, reason="no database name given")
        return cls(url)

    @property
    def backend(self) -> str:
        """``sqlite``, ``mysql`` or ``postgresql`` (MariaDB reports ``mysql``)."""
        name = self._url.get_backend_name()
        return "mysql" if name == "mariadb" else name

    @property
    def database(self) -> str | None:
        return self._url.database

    @property
    def hosts(self) -> tuple[tuple[str, int | None], ...]:
        """Every server the URL names, as ``(host, port)``; empty for SQLite.

        One entry for the usual URL; one per server for a PostgreSQL
        multi-host URL, in the order libpq tries them.
        """
        if self.backend == "sqlite":
            return ()
        multi = _pg_query_hosts(self._url) if self.backend == "postgresql" else ()
        if multi:
            return multi
        return ((self._url.host or "", self._url.port),)

    @property
    def sqlalchemy_url(self) -> sqlalchemy.engine.URL:
        return self._url

    def with_database(self, database: str) -> DatabaseURL:
        return DatabaseURL(self._url.set(database=database))

    def render(self, *, hide_password: bool = True) -> str:
        if hide_password and self._masked is not None:
            return self._masked
        url = self._url
        secret_keys = [k for k in url.query if is_secret_key(k)]  # decoded by make_url
        if hide_password and secret_keys:
            url = url.update_query_dict({k: MASK for k in secret_keys}, append=False)
        rendered = url.render_as_string(hide_password=hide_password)
        if hide_password:
            self._masked = rendered
        return rendered

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return f"DatabaseURL({self.render()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DatabaseURL) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


def _query_values(url: sqlalchemy.engine.URL, key: str) -> tuple[str, ...]:
    value = url.query.get(key)
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _pg_query_hosts(url: sqlalchemy.engine.URL) -> tuple[tuple[str, int | None], ...]:
    """The servers of a PostgreSQL multi-host URL (``host=`` in the query), if any.

    Assumes :func:`_check_pg_query` has passed; lenient otherwise.
    """
    hosts = _query_values(url, "host")
    if not hosts:
        return ()
    if len(hosts) == 1 and "," in hosts[0]:  # host=a,b&port=1,2
        names = hosts[0].split(",")
        ports: list[str] = []
        for value in _query_values(url, "port"):
            ports.extend(value.split(","))
        pairs = list(zip(names, ports or [""] * len(names), strict=False))
    else:  # host=a:1&host=b:2
        pairs = [(h.partition(":")[0], h.partition(":")[2]) for h in hosts]
    return tuple((name, int(port) if port.isdigit() else None) for name, port in pairs)


def _check_pg_query(url: sqlalchemy.engine.URL, masked: str) -> None:
    """Refuse multi-host and failover parameters that libpq would refuse or misread."""

    def bad(reason: str) -> InvalidURL:
        return InvalidURL(url=masked, reason=reason)

    for key in ("target_session_attrs", "load_balance_hosts", "port"):
        if len(_query_values(url, key)) > 1:
            raise bad(f"{key} is given more than once")
    for key, allowed in (
        ("target_session_attrs", TARGET_SESSION_ATTRS),
        ("load_balance_hosts", LOAD_BALANCE_HOSTS),
    ):
        values = _query_values(url, key)
        if values and values[0] not in allowed:
            raise bad(f"{key} must be one of {', '.join(sorted(allowed))}, not {values[0]!r}")
    hosts = _query_values(url, "host")
    ports = _query_values(url, "port")
    if not hosts:
        if ports:
            raise bad("port= in the query needs host= there too")
        return
    if url.host or url.port:
        raise bad("hosts given both before the database name and as host= in the query")
    if len(hosts) == 1 and "," in hosts[0]:
        names = hosts[0].split(",")
        port_list = ports[0].split(",") if ports else []
        if port_list and len(port_list) != len(names):  # SQLAlchemy wants one port per host
            raise bad(f"{len(names)} hosts but {len(port_list)} ports (give one per host)")
        pairs = list(zip(names, port_list or [""] * len(names), strict=True))
    else:
        if ports:
            raise bad("port= cannot be combined with host=name:port; give one or the other")
        pairs = [(h.partition(":")[0], h.partition(":")[2]) for h in hosts]
        if any(h.count(":") > 1 for h in hosts):
            raise bad("an IPv6 address in host= is not supported; use a host name")
    for name, port in pairs:
        if not name:
            raise bad("empty host name in host=")
        if not _PG_HOST_RE.match(name):
            raise bad(f"host {name!r} in host= is not a host name or IPv4 address")
        if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise bad(f"port of host {name!r} is not 1-65535")


@dataclass(frozen=True, repr=False)
class TransportHost:
    """One broker of a (possibly multi-host) transport URL."""

    hostname: str
    port: int | None
    username: str | None
    password: str | None


class TransportURL:
    """A validated transport URL in oslo.messaging's grammar.

    ``driver://[user:pass@]host:port[,[user:pass@]hostN:portN]/virtual_host?query``

    ``rabbit``/``amqp`` need at least one host; ``memory://NAME`` names an
    in-process broker (different names are isolated like different brokers);
    ``none:///`` means "no message queue" and is reserved for cell0.
    """

    __slots__ = ("_parts", "hosts", "query", "scheme", "virtual_host")

    def __init__(self, parts: _Parts, hosts: tuple[TransportHost, ...]) -> None:
        self._parts = parts
        self.scheme = parts.scheme
        self.hosts = hosts
        self.virtual_host = unquote(parts.path) if parts.path else None
        self.query = parts.query

    @classmethod
    def parse(cls, raw: str) -> TransportURL:
        masked = mask_url(raw)
        parts = _split(raw)
        if parts is None:
            raise InvalidURL(
                url=masked,
                reason="not a transport URL (expected rabbit://user:pass@host:5672/vhost)",
            )
        if parts.scheme not in TRANSPORT_SCHEMES:
            supported = ", ".join(f"{s}://" for s in sorted(TRANSPORT_SCHEMES))
            raise InvalidURL(
                url=masked, reason=f"unsupported scheme {parts.scheme!r} (supported: {supported})"
            )
        rest = raw.partition("://")[2]
        if _delimiter(rest, legacy=True) != _delimiter(rest, legacy=False):
            raise InvalidURL(
                url=masked,
                reason="an '@' after '?' or '#'",
                hint=Hint.ENCODE_PASSWORD_CHARS,
            )
        hosts = tuple(_transport_host(h, masked) for h in parts.hosts)
        if parts.scheme in {"rabbit", "amqp"} and not hosts:
            raise InvalidURL(url=masked, reason="no broker host given")
        if parts.scheme == "memory" and len(hosts) > 1:
            raise InvalidURL(url=masked, reason="memory:// takes one name, not a host list")
        if parts.scheme == "none" and raw != NO_TRANSPORT:
            raise InvalidURL(url=masked, reason="the none transport is written exactly none:///")
        return cls(parts, hosts)

    @property
    def is_none(self) -> bool:
        return self.scheme == "none"

    def render(self, *, hide_password: bool = True) -> str:
        return self._parts.render(hide_password)

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return f"TransportURL({self.render()!r})"

    @property
    def key(self) -> str:
        """The full URL, password included: an identity for registries, never output."""
        return self._parts.render(hide_password=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TransportURL) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


def _transport_host(host: _Host, masked: str) -> TransportHost:
    if not host.hostname:
        raise InvalidURL(url=masked, reason="empty host name in the host list")
    if host.password is not None and "@" in host.password:  # refused as in database URLs
        raise InvalidURL(
            url=masked,
            reason="the password contains an unencoded '@'",
            hint=Hint.ENCODE_AT_SIGN,
        )
    port: int | None = None
    if host.port is not None:
        if not (host.port.isascii() and host.port.isdigit()) or not 0 < int(host.port) < 65536:
            raise InvalidURL(url=masked, reason=f"port of host {host.hostname!r} is not 1-65535")
        port = int(host.port)
    return TransportHost(
        hostname=host.hostname,
        port=port,
        username=unquote(host.username) if host.username is not None else None,
        password=unquote(host.password) if host.password is not None else None,
    )


def _parse_format(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(string.Formatter().parse(template))
    except ValueError:
        raise InvalidURL(
            url=mask_url(template),
            reason="unbalanced '{' or '}' in URL template",
            hint=Hint.ESCAPE_BRACES,
        ) from None


def expand(template: str, default: str | None, *, option: str) -> str:
    """Render a templated cell URL against this host's default URL.

    ``template`` may use ``{scheme}``, ``{username}``, ``{password}``,
    ``{hostname}``, ``{port}``, ``{path}``, ``{query}`` and ``{fragment}``,
    filled from ``default`` (the value of ``option`` in this host's config;
    the first host of a multi-host URL), and the indexed ``{username1}``,
    ``{password1}``, ``{hostname1}``, ``{port1}``, ``{username2}`` ... of
    the N-th host of a multi-host default, as Nova's templates use them (an
    index past the default's last host is an error). A URL without placeholders is
    returned unchanged. Any failure raises :class:`ConfigError`; the raw
    template is never used in place of a rendered URL.
    """
    parsed = _parse_format(template)
    fields = [f for _, f, _, _ in parsed if f is not None]
    if not fields:  # still honour '{{' and '}}', as str.format does below
        return "".join(literal for literal, _, _, _ in parsed)
    masked = mask_url(template)
    if any(spec or conv for _, f, spec, conv in parsed if f is not None):
        raise InvalidURL(url=masked, reason="placeholders take no conversion or format spec")
    unknown = sorted({f for f in fields if not _is_field(f)})
    if unknown:
        allowed = ", ".join("{" + f + "}" for f in sorted(TEMPLATE_FIELDS))
        allowed += ", and {username1}, {password1}, {hostname1}, {port1}, {username2} ..."
        raise InvalidURL(
            url=masked, reason=f"unknown placeholder {{{unknown[0]}}} (allowed: {allowed})"
        )
    if default is None:
        raise ConfigError(
            f"URL template {masked!r} needs a default URL, but {option} is not set",
            hint=Hint.SET_TEMPLATE_OPTION,
            hint_args={"option": option},
        )
    parts = _split(default)
    if parts is None:
        raise ConfigError(f"{option} ({mask_url(default)!r}) is not a URL that templates can use")
    host = parts.hosts[0] if parts.hosts else _Host(None, None, "")  # sqlite:///file has none
    values: dict[str, str | None] = {
        "scheme": parts.scheme,
        "username": host.username,
        "password": host.password,
        "hostname": host.hostname,
        "port": host.port,
        "path": parts.path,
        "query": parts.query,
        "fragment": parts.fragment,
    }
    for index, each in enumerate(parts.hosts, start=1):
        values.update(
            {
                f"username{index}": each.username,
                f"password{index}": each.password,
                f"hostname{index}": each.hostname,
                f"port{index}": each.port,
            }
        )
    for field in fields:
        if field not in values:  # an indexed field past the last host
            raise ConfigError(
                f"URL template {masked!r} uses {{{field}}} but {option} has only"
                f" {len(parts.hosts)} host(s)",
                hint=Hint.ADD_TEMPLATE_FIELD,
                hint_args={"field": field, "option": option},
            )
        if values[field] is None or (values[field] == "" and field not in _OPTIONAL_FIELDS):
            raise ConfigError(
                f"URL template {masked!r} uses {{{field}}} but {option} has no {field}",
                hint=Hint.ADD_TEMPLATE_FIELD,
                hint_args={"field": field, "option": option},
            )
    return template.format(**{k: v or "" for k, v in values.items()})


@dataclass(frozen=True, repr=False)
class TemplateDefaults:
    """This host's own URLs, against which templated cell URLs are rendered.

    Built from :class:`~cellgate.config.Settings` by the composition root, so
    the mapping code never reads global configuration (Nova's
    ``CellMapping.format_db_url`` reads ``CONF`` and falls back to the raw
    template on error; here a failure is an error).
    """

    database: str | None
    transport: str | None

    def database_url(self, stored: StoredURL) -> DatabaseURL:
        raw = expand(stored.reveal(), self.database, option="[database] connection")
        return DatabaseURL.parse(raw)

    def transport_url(self, stored: StoredURL) -> TransportURL:
        raw = expand(stored.reveal(), self.transport, option="[DEFAULT] transport_url")
        return TransportURL.parse(raw)
