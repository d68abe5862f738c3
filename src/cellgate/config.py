"""Settings: read once from an INI file into frozen objects.

:func:`load_settings` is the only code in cellgate that reads a config file or
an environment variable. Everything else receives a :class:`Settings` (or one
of its parts) as an argument; there is no global config object.

The file uses Nova's section and option names where they exist
(``[DEFAULT] transport_url``, ``[api_database] connection``,
``[database] connection``, ``[DEFAULT] state_path``) so an operator's habits
carry over. Interpolation is off: a ``%`` in a password is just a ``%``.

Where the file comes from, first match wins: the ``path`` argument (the CLI's
``--config-file``), ``$CELLGATE_CONFIG``, ``./cellgate.conf``. With none of
them, cellgate runs the *embedded default*: SQLite files under ``state_path``
and the in-process transport, so a new user needs no servers.
"""

from __future__ import annotations

import configparser
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Final, TypeVar

from cellgate.errors import CellgateError, ConfigError, Hint
from cellgate.keyring import KeyRing
from cellgate.urls import DatabaseURL, TemplateDefaults, TransportURL

_T = TypeVar("_T")

CONFIG_ENV: Final = "CELLGATE_CONFIG"
DEFAULT_CONFIG_NAME: Final = "cellgate.conf"
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_QUERY_TIMEOUT: Final = 30.0
DEFAULT_VERIFY_TIMEOUT: Final = 3.0
DEFAULT_CACHE_TTL: Final = 30.0
DEFAULT_POOL_SIZE: Final = 2
DEFAULT_CONFLICT_ATTEMPTS: Final = 64
DEFAULT_MAX_ENGINES: Final = 1024
DEFAULT_MAX_CONNECTIONS: Final = 128
DEFAULT_MAX_IDLE_CONNECTIONS: Final = 64
DEFAULT_IDLE_GRACE: Final = 2.0
DEFAULT_SCATTER_WORKERS: Final = 128
DEFAULT_SCATTER_HUNG_THREADS: Final = 64
DEFAULT_SCATTER_TIMEOUT: Final = 30.0
DEFAULT_BREAKER_THRESHOLD: Final = 3
DEFAULT_BREAKER_COOLDOWN: Final = 30.0
DEFAULT_RPC_TIMEOUT: Final = 60.0
DEFAULT_HEARTBEAT: Final = 30
DEFAULT_MAX_TRANSPORTS: Final = 64
DEFAULT_API_PORT: Final = 8780
DEFAULT_CELL_TIMEOUT: Final = 5.0
DEFAULT_BUILD_TIMEOUT: Final = 600.0
DEFAULT_REQUEST_TIMEOUT: Final = 15.0
DEFAULT_HEARTBEAT_INTERVAL: Final = 5.0
DEFAULT_SERVICE_DOWN_TIME: Final = 30.0
SCHEDULER_POLICIES: Final = ("fewest_instances", "round_robin")
#: RabbitMQ queue types for topic queues; the first is the default (see
#: docs/deployment.md "Production topology" for why classic).
QUEUE_TYPES: Final = ("classic", "quorum")
EMBEDDED_TRANSPORT: Final = "memory://cellgate"


def default_state_path(environ: Mapping[str, str]) -> Path:
    """``$XDG_DATA_HOME/cellgate``, else ``~/.local/share/cellgate``."""
    base = environ.get("XDG_DATA_HOME") or str(Path(environ.get("HOME", "~")) / ".local/share")
    return Path(base).expanduser() / "cellgate"


@dataclass(frozen=True)
class Option:
    """One documented option: where it lives, its default and its help."""

    section: str
    name: str
    default: str | None
    help: str
    kind: str = "str"  # str | int | float | url


#: Every option cellgate reads. ``config sample`` prints this list, and the
#: loader rejects anything not in it, so the two cannot drift apart.
OPTIONS: Final[tuple[Option, ...]] = (
    Option(
        "DEFAULT",
        "state_path",
        None,
        "Directory for the embedded default's SQLite files. "
        "Default: $XDG_DATA_HOME/cellgate or ~/.local/share/cellgate.",
    ),
    Option(
        "DEFAULT",
        "transport_url",
        None,
        "This host's message queue, e.g. rabbit://user:pass@127.0.0.1:5672/cell1. "
        "Cell transport URL templates are rendered against it. "
        f"Default: {EMBEDDED_TRANSPORT} (in-process).",
        "url",
    ),
    Option(
        "DEFAULT",
        "rpc_response_timeout",
        str(DEFAULT_RPC_TIMEOUT),
        "Seconds an RPC call waits for its reply (oslo.messaging's name).",
        "float",
    ),
    Option(
        "rpc",
        "connect_timeout",
        str(DEFAULT_CONNECT_TIMEOUT),
        "Seconds to wait for a connection to a cell's message broker.",
        "float",
    ),
    Option(
        "rpc",
        "heartbeat",
        str(DEFAULT_HEARTBEAT),
        "AMQP heartbeat in seconds: a silent broker connection is declared dead "
        "after about twice this.",
        "int",
    ),
    Option(
        "rpc",
        "max_transports",
        str(DEFAULT_MAX_TRANSPORTS),
        "Broker connections (one per transport URL) a process keeps for clients at most; "
        "the least recently used is closed beyond that.",
        "int",
    ),
    Option(
        "rpc",
        "queue_type",
        QUEUE_TYPES[0],
        "RabbitMQ type of the (durable) topic queues: classic or quorum. quorum needs "
        "RabbitMQ 3.8+ and replicates each topic queue over the cluster's nodes; a cast "
        "then returns only once the broker has confirmed it (at-least-once delivery). "
        "Changing it needs the topic queues empty and unused; see docs/operations.md.",
    ),
    Option(
        "api",
        "listen",
        "127.0.0.1",
        "Address the REST API listens on.",
    ),
    Option("api", "port", str(DEFAULT_API_PORT), "Port the REST API listens on.", "int"),
    Option(
        "api",
        "auth_tokens",
        None,
        "Bearer tokens, comma separated, each TOKEN:PROJECT:ROLE[+ROLE...], e.g. "
        "s3cret:admin:admin+member. The 'admin' role may manage cells and hosts. "
        "Tokens are secrets: they are never printed.",
    ),
    Option(
        "api",
        "cell_timeout",
        str(DEFAULT_CELL_TIMEOUT),
        "Seconds a request waits for each cell before reporting it down.",
        "float",
    ),
    Option(
        "api",
        "request_timeout",
        str(DEFAULT_REQUEST_TIMEOUT),
        "Seconds a REST request may work, everything included (API database, cells, "
        "RPC): no statement starts after it and every wait is cut to it (HTTP 504 "
        "DeadlineExceeded). Each cell is still given at most cell_timeout within it.",
        "float",
    ),
    Option(
        "api",
        "build_timeout",
        str(DEFAULT_BUILD_TIMEOUT),
        "Seconds an instance may stay building before the API service's reconciler "
        "marks it error (its build was lost or never carried out); 0 turns it off.",
        "float",
    ),
    Option(
        "scheduler",
        "policy",
        SCHEDULER_POLICIES[0],
        "How a new instance's cell is chosen when none is given: "
        + " or ".join(SCHEDULER_POLICIES)
        + ".",
    ),
    Option(
        "worker",
        "heartbeat_interval",
        str(DEFAULT_HEARTBEAT_INTERVAL),
        "Seconds between a worker's heartbeats in its cell database.",
        "float",
    ),
    Option(
        "worker",
        "service_down_time",
        str(DEFAULT_SERVICE_DOWN_TIME),
        "Seconds without a heartbeat after which a worker is reported down.",
        "float",
    ),
    Option(
        "api_database",
        "connection",
        None,
        "The API database (cell, host and instance mappings), e.g. "
        "mysql+pymysql://cellgate:secret@127.0.0.1/cellgate_api. "
        "Default: sqlite:///<state_path>/api.sqlite.",
        "url",
    ),
    Option(
        "api_database",
        "encryption_keys",
        None,
        "Fernet keys, comma separated, that encrypt the cell mappings' URLs in the "
        "API database. The first key encrypts; every key decrypts, so a new key goes "
        "first and the old one stays until 'cellgate cell rotate-key' has run. Keys "
        "are secrets: they are never printed. 'cellgate cell generate-key' makes one. "
        "Default: none (URLs are stored as given).",
    ),
    Option(
        "api_database",
        "connect_timeout",
        str(DEFAULT_CONNECT_TIMEOUT),
        "Seconds to wait for a connection to the API database.",
        "float",
    ),
    Option(
        "api_database",
        "query_timeout",
        str(DEFAULT_QUERY_TIMEOUT),
        "Seconds a single API database read or write may take.",
        "float",
    ),
    Option(
        "api_database",
        "conflict_attempts",
        str(DEFAULT_CONFLICT_ATTEMPTS),
        "Times a write transaction on the API database is run, whole, when the database "
        "refuses it as a conflict (deadlock 1213, lock wait timeout 1205, Galera "
        "certification failure; PostgreSQL 40001/40P01), with jittered waits between "
        "attempts, for at most 10 s from the first attempt. Past that the request fails "
        "(exit 5, HTTP 503) with nothing written.",
        "int",
    ),
    Option(
        "database",
        "connection",
        None,
        "This host's cell database. Cell database URL templates are rendered "
        "against it, and cell0's default is derived from it by appending "
        "'_cell0' to the database name. Default: sqlite:///<state_path>/cellgate.sqlite.",
        "url",
    ),
    Option(
        "database",
        "connect_timeout",
        str(DEFAULT_CONNECT_TIMEOUT),
        "Seconds to wait for a connection to a cell database.",
        "float",
    ),
    Option(
        "database",
        "query_timeout",
        str(DEFAULT_QUERY_TIMEOUT),
        "Seconds a single cell database read or write may take.",
        "float",
    ),
    Option(
        "database",
        "conflict_attempts",
        str(DEFAULT_CONFLICT_ATTEMPTS),
        "Times a write transaction on a cell database is run, whole, when the database "
        "refuses it as a conflict (deadlock 1213, lock wait timeout 1205, Galera "
        "certification failure; PostgreSQL 40001/40P01), with jittered waits between "
        "attempts, for at most 10 s from the first attempt. Past that the request fails "
        "(exit 5, HTTP 503) with nothing written.",
        "int",
    ),
    Option(
        "cells",
        "verify_timeout",
        str(DEFAULT_VERIFY_TIMEOUT),
        "Seconds 'cellgate cell verify' waits for each database and broker.",
        "float",
    ),
    Option(
        "database",
        "pool_size",
        str(DEFAULT_POOL_SIZE),
        "Connections kept open per cell database engine (and as many again on demand).",
        "int",
    ),
    Option(
        "cells",
        "max_engines",
        str(DEFAULT_MAX_ENGINES),
        "Cell database engines a process keeps at most (memory only, tens of kilobytes "
        "each; connections are bounded by max_connections and max_idle_connections); the "
        "least recently used idle one is dropped beyond that. Keep it above the number of "
        "cells, or every scatter-gather re-creates engines.",
        "int",
    ),
    Option(
        "cells",
        "max_connections",
        str(DEFAULT_MAX_CONNECTIONS),
        "Cell database connections a process holds open at most, in use or idle, over "
        "every cell. Beyond it a checkout first closes another cell's idle connection, "
        "else waits up to [database] connect_timeout and reports the cell timed out.",
        "int",
    ),
    Option(
        "cells",
        "max_idle_connections",
        str(DEFAULT_MAX_IDLE_CONNECTIONS),
        "Cell database connections a process keeps open while unused, over every cell; "
        "idle connections beyond it are closed, least recently used first, once idle for "
        "idle_grace seconds. At most max_connections.",
        "int",
    ),
    Option(
        "cells",
        "idle_grace",
        str(DEFAULT_IDLE_GRACE),
        "Seconds a cell database connection beyond max_idle_connections may stay idle "
        "before it is closed, so that a burst repeated within it (a scatter-gather over "
        "more cells than max_idle_connections) reuses its connections. 0 closes at once.",
        "float",
    ),
    Option(
        "cells",
        "scatter_workers",
        str(DEFAULT_SCATTER_WORKERS),
        "Threads a scatter-gather runs cells on at once, at most (started as the number "
        "of cells needs them; idle ones exit after a minute). A scatter over more cells "
        "runs the rest as threads free up.",
        "int",
    ),
    Option(
        "cells",
        "scatter_hung_threads",
        str(DEFAULT_SCATTER_HUNG_THREADS),
        "Threads still stuck in a cell call past its scatter-gather deadline that are "
        "replaced, at most. Beyond it a stuck thread is not replaced, so the pool runs "
        "fewer cells at once until stuck calls return.",
        "int",
    ),
    Option(
        "cells",
        "scatter_timeout",
        str(DEFAULT_SCATTER_TIMEOUT),
        "Default deadline, in seconds, of a scatter-gather over many cells.",
        "float",
    ),
    Option(
        "cells",
        "cache_ttl",
        str(DEFAULT_CACHE_TTL),
        "Seconds a process may serve cell mappings from memory before re-reading them.",
        "float",
    ),
    Option(
        "cells",
        "breaker_threshold",
        str(DEFAULT_BREAKER_THRESHOLD),
        "Consecutive database or broker failures after which a cell is skipped (its "
        "calls fail at once, reported as down) for breaker_cooldown seconds, then "
        "probed by one call. 0 disables the circuit breaker.",
        "int",
    ),
    Option(
        "cells",
        "breaker_cooldown",
        str(DEFAULT_BREAKER_COOLDOWN),
        "Seconds a cell's open circuit breaker skips the cell before one call probes it.",
        "float",
    ),
)


@dataclass(frozen=True)
class DatabaseSettings:
    """How to reach one database, and how long to wait for it."""

    connection: DatabaseURL
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    query_timeout: float = DEFAULT_QUERY_TIMEOUT
    pool_size: int = DEFAULT_POOL_SIZE
    conflict_attempts: int = DEFAULT_CONFLICT_ATTEMPTS


@dataclass(frozen=True)
class ApiDatabaseSettings(DatabaseSettings):
    """The API database, plus the keys that encrypt the credentials it stores."""

    encryption_keys: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class CellSettings:
    """Options that apply to every cell."""

    verify_timeout: float = DEFAULT_VERIFY_TIMEOUT
    cache_ttl: float = DEFAULT_CACHE_TTL
    max_engines: int = DEFAULT_MAX_ENGINES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_idle_connections: int = DEFAULT_MAX_IDLE_CONNECTIONS
    idle_grace: float = DEFAULT_IDLE_GRACE
    scatter_timeout: float = DEFAULT_SCATTER_TIMEOUT
    scatter_workers: int = DEFAULT_SCATTER_WORKERS
    scatter_hung_threads: int = DEFAULT_SCATTER_HUNG_THREADS
    breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD  # 0: no circuit breaker
    breaker_cooldown: float = DEFAULT_BREAKER_COOLDOWN


@dataclass(frozen=True)
class RPCSettings:
    """How RPC reaches cells' brokers."""

    response_timeout: float = DEFAULT_RPC_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    heartbeat: int = DEFAULT_HEARTBEAT
    max_transports: int = DEFAULT_MAX_TRANSPORTS
    queue_type: str = QUEUE_TYPES[0]


@dataclass(frozen=True)
class TokenGrant:
    """What one bearer token stands for. The token never appears in a repr."""

    token: str = field(repr=False)
    project_id: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class ServiceSettings:
    """The reference service: REST API, scheduling and workers."""

    listen: str = "127.0.0.1"
    port: int = DEFAULT_API_PORT
    tokens: tuple[TokenGrant, ...] = ()
    cell_timeout: float = DEFAULT_CELL_TIMEOUT
    #: Seconds a REST request may work in all (its deadline, cellgate.deadline).
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    #: Seconds ``building`` before the reconciler says ``error``; 0: never.
    build_timeout: float = DEFAULT_BUILD_TIMEOUT
    scheduler_policy: str = SCHEDULER_POLICIES[0]
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    service_down_time: float = DEFAULT_SERVICE_DOWN_TIME


def parse_tokens(raw: str | None, where: str) -> tuple[TokenGrant, ...]:
    """``TOKEN:PROJECT:ROLE+ROLE, ...`` -> grants; errors never quote a token."""
    grants = []
    for index, item in enumerate(filter(None, (p.strip() for p in (raw or "").split(","))), 1):
        parts = item.split(":")
        if len(parts) != 3 or not all(parts):
            raise ConfigError(
                f"{where}: entry {index} is not TOKEN:PROJECT:ROLE[+ROLE...]",
                hint=Hint.TOKEN_NOT_SHOWN,
            )
        token, project, roles = parts
        grants.append(TokenGrant(token, project, tuple(r for r in roles.split("+") if r)))
    return tuple(grants)


def parse_keys(raw: str | None) -> tuple[str, ...]:
    """``KEY, KEY, ...`` -> keys, each checked now so a bad one stops start-up."""
    keys = tuple(k for k in (p.strip() for p in (raw or "").split(",")) if k)
    KeyRing(keys)  # raises EncryptionKeyError (a ConfigError) naming the key's position
    return keys


@dataclass(frozen=True)
class Settings:
    """Everything cellgate was configured with. Build it with :func:`load_settings`."""

    api_database: ApiDatabaseSettings
    database: DatabaseSettings
    transport_url: TransportURL
    state_path: Path
    cells: CellSettings
    source: Path | None
    rpc: RPCSettings = RPCSettings()
    service: ServiceSettings = (
        ServiceSettings()
    )  # the config file read, or None for the embedded default
    #: A config file was read but sets no option (empty, or all commented out,
    #: as ``config sample`` prints it): every value is the embedded default.
    sets_nothing: bool = False

    @property
    def embedded(self) -> bool:
        return self.source is None

    def cell0_database(self) -> DatabaseURL:
        """cell0's database: this host's cell database name plus ``_cell0``."""
        url = self.database.connection
        name = url.database or ""
        if url.backend == "sqlite":
            path = PurePath(name)
            return url.with_database(str(path.with_name(f"{path.stem}_cell0{path.suffix}")))
        return url.with_database(f"{name}_cell0")


def template_defaults(settings: Settings) -> TemplateDefaults:
    """This host's own URLs, which templated cell URLs are rendered against.

    Here, next to :class:`Settings`, because both the composition root
    (``App``) and the operator tasks (``cellgate.admin``) need it, and the
    root must not import an operator task to get it.
    """
    return TemplateDefaults(
        database=settings.database.connection.render(hide_password=False),
        transport=settings.transport_url.render(hide_password=False),
    )


def find_config(path: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    """The config file to read, or ``None`` for the embedded default."""
    if path is not None:
        return Path(path)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    local = Path.cwd() / DEFAULT_CONFIG_NAME
    return local if local.is_file() else None


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Find, read and validate the configuration once.

    Raises :class:`ConfigError` naming the file, section and option at fault.
    """
    env = os.environ if environ is None else environ
    source = find_config(path, env)
    values = _read(source) if source is not None else {}
    return _build(values, source, env)


def embedded_settings(state_path: Path) -> Settings:
    """The embedded default rooted at ``state_path``, ignoring any config file."""
    return _build({("DEFAULT", "state_path"): str(state_path)}, None, {})


def _build(
    values: dict[tuple[str, str], str], source: Path | None, env: Mapping[str, str]
) -> Settings:
    get = _Getter(values, source)
    # Absolute from here on: the default databases under it must not move with
    # the working directory (a cell's SQLite file is refused if relative).
    state_path = (
        Path(get.text("DEFAULT", "state_path") or default_state_path(env)).expanduser().absolute()
    )
    api_default = f"sqlite:///{state_path / 'api.sqlite'}"
    cell_default = f"sqlite:///{state_path / 'cellgate.sqlite'}"
    return Settings(
        api_database=ApiDatabaseSettings(
            connection=get.url("api_database", "connection", api_default, DatabaseURL.parse),
            connect_timeout=get.number("api_database", "connect_timeout"),
            query_timeout=get.number("api_database", "query_timeout"),
            conflict_attempts=get.count("api_database", "conflict_attempts"),
            encryption_keys=parse_keys(get.text("api_database", "encryption_keys")),
        ),
        database=DatabaseSettings(
            connection=get.url("database", "connection", cell_default, DatabaseURL.parse),
            connect_timeout=get.number("database", "connect_timeout"),
            query_timeout=get.number("database", "query_timeout"),
            pool_size=get.count("database", "pool_size"),
            conflict_attempts=get.count("database", "conflict_attempts"),
        ),
        transport_url=get.url("DEFAULT", "transport_url", EMBEDDED_TRANSPORT, TransportURL.parse),
        state_path=state_path,
        cells=CellSettings(
            verify_timeout=get.number("cells", "verify_timeout"),
            cache_ttl=get.number("cells", "cache_ttl"),
            max_engines=get.count("cells", "max_engines"),
            max_connections=get.count("cells", "max_connections"),
            max_idle_connections=get.count(
                "cells",
                "max_idle_connections",
                minimum=0,
                maximum=(get.count("cells", "max_connections"), "[cells] max_connections"),
            ),
            idle_grace=get.number("cells", "idle_grace", minimum=0.0),
            scatter_timeout=get.number("cells", "scatter_timeout"),
            scatter_workers=get.count("cells", "scatter_workers"),
            scatter_hung_threads=get.count("cells", "scatter_hung_threads", minimum=0),
            breaker_threshold=get.count("cells", "breaker_threshold", minimum=0),
            breaker_cooldown=get.number("cells", "breaker_cooldown"),
        ),
        source=source,
        sets_nothing=source is not None and not values,
        rpc=RPCSettings(
            response_timeout=get.number("DEFAULT", "rpc_response_timeout"),
            connect_timeout=get.number("rpc", "connect_timeout"),
            heartbeat=get.count("rpc", "heartbeat"),
            max_transports=get.count("rpc", "max_transports"),
            queue_type=get.choice("rpc", "queue_type", QUEUE_TYPES),
        ),
        service=ServiceSettings(
            listen=get.text("api", "listen") or "127.0.0.1",
            port=get.count("api", "port"),
            tokens=parse_tokens(get.text("api", "auth_tokens"), get.where("api", "auth_tokens")),
            cell_timeout=get.number("api", "cell_timeout"),
            request_timeout=get.number("api", "request_timeout"),
            build_timeout=get.number("api", "build_timeout", minimum=0),
            scheduler_policy=get.choice("scheduler", "policy", SCHEDULER_POLICIES),
            heartbeat_interval=get.number("worker", "heartbeat_interval"),
            service_down_time=get.number("worker", "service_down_time"),
        ),
    )


def _read(source: Path) -> dict[tuple[str, str], str]:
    # A default_section no file can name makes [DEFAULT] an ordinary section, so
    # its options are not copied into every other section.
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00")
    try:
        with source.open(encoding="utf-8") as fh:
            parser.read_file(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {str(source)!r} does not exist",
            hint=Hint.CONFIG_FILE,
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(source)!r}: {exc}") from None
    except configparser.Error as exc:
        # configparser messages quote the offending line, which may hold a password.
        line = getattr(exc, "lineno", None)
        where = f" at line {line}" if line else ""
        raise ConfigError(f"config file {str(source)!r} is not valid INI{where}") from None
    known = {(o.section, o.name) for o in OPTIONS}
    values: dict[tuple[str, str], str] = {}
    for section in parser.sections():
        for name, value in parser.items(section, raw=True):
            if (section, name) not in known:
                raise ConfigError(
                    f"{source}: unknown option [{section}] {name}",
                    hint=Hint.SAMPLE_CONFIG,
                )
            values[(section, name)] = value.strip()
    return values


class _Getter:
    def __init__(self, values: dict[tuple[str, str], str], source: Path | None) -> None:
        self._values = values
        self._source = source
        self._defaults = {(o.section, o.name): o.default for o in OPTIONS}

    def text(self, section: str, name: str) -> str | None:
        value = self._values.get((section, name))
        return value if value else self._defaults[(section, name)]

    def number(self, section: str, name: str, *, minimum: float | None = None) -> float:
        """A finite number above 0 or, with ``minimum``, at least ``minimum``."""
        raw = self.text(section, name)
        try:
            value = float(raw or "")
        except ValueError:
            value = math.nan
        low_ok = value > 0 if minimum is None else value >= minimum
        if not (math.isfinite(value) and low_ok):
            what = "a positive number" if minimum is None else f"a number of at least {minimum:g}"
            raise ConfigError(f"{self._where(section, name)} must be {what}, got {raw!r}")
        return value

    def count(
        self, section: str, name: str, *, minimum: int = 1, maximum: tuple[int, str] | None = None
    ) -> int:
        """A whole number of at least ``minimum`` and, if given, at most ``(value, its name)``."""
        raw = self.text(section, name) or ""
        if not (raw.isascii() and raw.isdigit() and int(raw) >= minimum):
            what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
            raise ConfigError(f"{self._where(section, name)} must be {what}, got {raw!r}")
        if maximum is not None and int(raw) > maximum[0]:
            raise ConfigError(
                f"{self._where(section, name)} must be at most {maximum[1]} ({maximum[0]}), "
                f"got {raw!r}"
            )
        return int(raw)

    def url(self, section: str, name: str, default: str, parse: Callable[[str], _T]) -> _T:
        raw = self.text(section, name) or default
        try:
            return parse(raw)
        except CellgateError as exc:
            # Keep the hint key: each edge renders it (str() would drop it).
            raise ConfigError(
                f"{self._where(section, name)}: {exc.message}",
                hint=exc.hint,
                hint_args=exc.hint_args,
            ) from None

    def choice(self, section: str, name: str, choices: tuple[str, ...]) -> str:
        value = self.text(section, name) or ""
        if value not in choices:
            raise ConfigError(
                f"{self._where(section, name)} must be one of {', '.join(choices)}, got {value!r}"
            )
        return value

    def where(self, section: str, name: str) -> str:
        return self._where(section, name)

    def _where(self, section: str, name: str) -> str:
        origin = str(self._source) if self._source else "embedded default"
        return f"{origin} [{section}] {name}"


def sample_config() -> str:
    """A commented config file listing every option with its default and help."""
    lines = [
        "# cellgate configuration. Every option is shown commented out with its default.",
        "# Passwords belong in URLs; percent-encode '@', ':', '/', '%' and braces in them.",
    ]
    sections = list(dict.fromkeys(opt.section for opt in OPTIONS))
    for section in sections:
        lines += ["", f"[{section}]"]
        for opt in (o for o in OPTIONS if o.section == section):
            lines.append("")
            lines += [f"# {chunk}" for chunk in _wrap(opt.help)]
            lines.append(f"#{opt.name} = {opt.default}" if opt.default else f"#{opt.name} =")
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int = 76) -> list[str]:
    out: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*out, line] if line else out
