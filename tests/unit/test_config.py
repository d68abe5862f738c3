"""Unit tests for :mod:`cellgate.config`: finding, reading and validating settings.

Every test passes ``environ`` explicitly, so nothing depends on the developer's
own environment; the shared ``_clean_environ`` fixture also chdirs into a fresh
``tmp_path``, so no stray ``./cellgate.conf`` is picked up.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from cellgate.cli.hints import cli_hint
from cellgate.config import (
    CONFIG_ENV,
    DEFAULT_CACHE_TTL,
    DEFAULT_CONFIG_NAME,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_QUERY_TIMEOUT,
    DEFAULT_VERIFY_TIMEOUT,
    EMBEDDED_TRANSPORT,
    OPTIONS,
    ApiDatabaseSettings,
    Settings,
    default_state_path,
    find_config,
    load_settings,
    sample_config,
)
from cellgate.errors import ConfigError
from cellgate.urls import DatabaseURL, TransportURL

SECRET = "hunter2secret"

FULL_CONFIG = f"""\
[DEFAULT]
state_path = {{state}}
transport_url = rabbit://nova:{SECRET}@mq.example.org:5672/cell1

[api_database]
connection = mysql+pymysql://nova:{SECRET}@db.example.org/nova_api
connect_timeout = 2.5
query_timeout = 11

[database]
connection = postgresql://nova:{SECRET}@pg.example.org:5432/nova
connect_timeout = 7
query_timeout = 0.5

[cells]
verify_timeout = 1.25
cache_ttl = 60
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A HOME with no XDG_DATA_HOME, for environ dicts built by the tests."""
    path = tmp_path / "home"
    path.mkdir()
    return path


# --------------------------------------------------------------------------
# Where the config comes from
# --------------------------------------------------------------------------


def test_explicit_path_is_read(tmp_path: Path, home: Path) -> None:
    conf = write(tmp_path / "explicit.conf", FULL_CONFIG.format(state=tmp_path / "state"))
    settings = load_settings(conf, {"HOME": str(home)})
    assert settings.source == conf
    assert not settings.embedded
    assert settings.state_path == tmp_path / "state"
    assert settings.api_database == ApiDatabaseSettings(
        connection=DatabaseURL.parse(f"mysql+pymysql://nova:{SECRET}@db.example.org/nova_api"),
        connect_timeout=2.5,
        query_timeout=11.0,
    )
    assert settings.database.connection.sqlalchemy_url.drivername == "postgresql+psycopg"
    assert settings.database.connect_timeout == 7.0
    assert settings.database.query_timeout == 0.5
    assert settings.transport_url == TransportURL.parse(
        f"rabbit://nova:{SECRET}@mq.example.org:5672/cell1"
    )
    assert settings.cells.verify_timeout == 1.25
    assert settings.cells.cache_ttl == 60.0


def test_explicit_path_may_be_a_string(tmp_path: Path, home: Path) -> None:
    conf = write(tmp_path / "explicit.conf", "[cells]\ncache_ttl = 5\n")
    settings = load_settings(str(conf), {"HOME": str(home)})
    assert settings.source == conf
    assert settings.cells.cache_ttl == 5.0


def test_environ_config_is_read(tmp_path: Path, home: Path) -> None:
    conf = write(tmp_path / "from-env.conf", "[cells]\ncache_ttl = 7\n")
    settings = load_settings(None, {CONFIG_ENV: str(conf), "HOME": str(home)})
    assert settings.source == conf
    assert settings.cells.cache_ttl == 7.0


def test_cwd_config_is_read(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    write(workdir / DEFAULT_CONFIG_NAME, "[cells]\ncache_ttl = 9\n")
    monkeypatch.chdir(workdir)
    settings = load_settings(None, {"HOME": str(home)})
    assert settings.source == workdir / DEFAULT_CONFIG_NAME
    assert settings.cells.cache_ttl == 9.0


def test_precedence_is_path_then_environ_then_cwd(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit = write(tmp_path / "explicit.conf", "[cells]\ncache_ttl = 1\n")
    from_env = write(tmp_path / "env.conf", "[cells]\ncache_ttl = 2\n")
    write(tmp_path / DEFAULT_CONFIG_NAME, "[cells]\ncache_ttl = 3\n")
    monkeypatch.chdir(tmp_path)
    env = {CONFIG_ENV: str(from_env), "HOME": str(home)}

    assert load_settings(explicit, env).cells.cache_ttl == 1.0
    assert load_settings(None, env).cells.cache_ttl == 2.0
    assert load_settings(None, {"HOME": str(home)}).cells.cache_ttl == 3.0
    # An empty CELLGATE_CONFIG counts as unset.
    assert load_settings(None, {CONFIG_ENV: "", "HOME": str(home)}).cells.cache_ttl == 3.0


def test_cwd_directory_named_like_the_config_is_ignored(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / DEFAULT_CONFIG_NAME).mkdir()
    monkeypatch.chdir(tmp_path)
    assert find_config(None, {}) is None
    assert load_settings(None, {"HOME": str(home)}).embedded


# --------------------------------------------------------------------------
# The embedded default
# --------------------------------------------------------------------------


def test_embedded_default_uses_xdg_data_home(tmp_path: Path, home: Path) -> None:
    xdg = tmp_path / "xdg"
    settings = load_settings(None, {"XDG_DATA_HOME": str(xdg), "HOME": str(home)})
    state = xdg / "cellgate"
    assert settings.embedded
    assert settings.source is None
    assert settings.state_path == state
    assert settings.api_database.connection.backend == "sqlite"
    assert settings.api_database.connection.database == str(state / "api.sqlite")
    assert settings.database.connection.database == str(state / "cellgate.sqlite")
    assert settings.transport_url == TransportURL.parse(EMBEDDED_TRANSPORT)
    assert settings.api_database.connect_timeout == DEFAULT_CONNECT_TIMEOUT
    assert settings.api_database.query_timeout == DEFAULT_QUERY_TIMEOUT
    assert settings.database.connect_timeout == DEFAULT_CONNECT_TIMEOUT
    assert settings.database.query_timeout == DEFAULT_QUERY_TIMEOUT
    assert settings.cells.verify_timeout == DEFAULT_VERIFY_TIMEOUT
    assert settings.cells.cache_ttl == DEFAULT_CACHE_TTL


def test_embedded_default_falls_back_to_home(home: Path) -> None:
    settings = load_settings(None, {"HOME": str(home)})
    state = home / ".local" / "share" / "cellgate"
    assert settings.state_path == state
    assert settings.api_database.connection.database == str(state / "api.sqlite")


def test_empty_xdg_data_home_falls_back_to_home(home: Path) -> None:
    assert default_state_path({"XDG_DATA_HOME": "", "HOME": str(home)}) == (
        home / ".local/share/cellgate"
    )


def test_embedded_default_creates_no_files(tmp_path: Path, home: Path) -> None:
    load_settings(None, {"XDG_DATA_HOME": str(tmp_path / "xdg"), "HOME": str(home)})
    assert not (tmp_path / "xdg").exists()


def test_state_path_from_file_places_the_default_databases(tmp_path: Path, home: Path) -> None:
    conf = write(tmp_path / "c.conf", f"[DEFAULT]\nstate_path = {tmp_path / 'mine'}\n")
    settings = load_settings(conf, {"HOME": str(home)})
    assert settings.state_path == tmp_path / "mine"
    assert settings.api_database.connection.database == str(tmp_path / "mine" / "api.sqlite")
    assert settings.database.connection.database == str(tmp_path / "mine" / "cellgate.sqlite")
    assert settings.transport_url == TransportURL.parse(EMBEDDED_TRANSPORT)


def test_empty_values_mean_the_default(tmp_path: Path, home: Path) -> None:
    conf = write(
        tmp_path / "c.conf",
        "[DEFAULT]\ntransport_url =\n[database]\nconnection =\nquery_timeout =\n",
    )
    settings = load_settings(conf, {"XDG_DATA_HOME": str(tmp_path / "x"), "HOME": str(home)})
    assert settings.transport_url == TransportURL.parse(EMBEDDED_TRANSPORT)
    assert settings.database.connection.backend == "sqlite"
    assert settings.database.query_timeout == DEFAULT_QUERY_TIMEOUT


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def test_missing_file_is_a_config_error(tmp_path: Path, home: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_settings(missing, {"HOME": str(home)})
    assert str(missing) in str(info.value)
    assert CONFIG_ENV in (cli_hint(info.value) or "")


def test_missing_file_named_by_environ_is_a_config_error(tmp_path: Path, home: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(None, {CONFIG_ENV: str(tmp_path / "nope.conf"), "HOME": str(home)})


def test_unreadable_file_is_a_config_error(tmp_path: Path, home: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path, {"HOME": str(home)})  # a directory


def test_non_utf8_file_is_a_config_error(tmp_path: Path, home: Path) -> None:
    conf = tmp_path / "latin1.conf"
    conf.write_bytes(b"[database]\nconnection = mysql+pymysql://u:p\xe4ss@h/db\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(conf, {"HOME": str(home)})


@pytest.mark.parametrize(
    ("section", "name"),
    [("DEFAULT", "debug"), ("database", "pool_sizes"), ("cells", "connection"), ("nova", "x")],
)
def test_unknown_option_is_a_config_error(
    tmp_path: Path, home: Path, section: str, name: str
) -> None:
    conf = write(tmp_path / "c.conf", f"[{section}]\n{name} = 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(conf, {"HOME": str(home)})
    assert f"unknown option [{section}] {name}" in str(info.value)
    assert str(conf) in str(info.value)


def test_section_names_are_case_sensitive(tmp_path: Path, home: Path) -> None:
    conf = write(tmp_path / "c.conf", "[DATABASE]\nconnection = sqlite:///x.sqlite\n")
    with pytest.raises(ConfigError, match=r"unknown option \[DATABASE\] connection"):
        load_settings(conf, {"HOME": str(home)})


def test_default_section_is_not_inherited(tmp_path: Path, home: Path) -> None:
    # [DEFAULT] options are not copied into the other sections (so they are
    # neither "unknown" there nor silently applied).
    conf = write(
        tmp_path / "c.conf",
        f"[DEFAULT]\nstate_path = {tmp_path}\n[cells]\ncache_ttl = 4\n",
    )
    settings = load_settings(conf, {"HOME": str(home)})
    assert settings.state_path == tmp_path
    assert settings.cells.cache_ttl == 4.0


@pytest.mark.parametrize(
    "text",
    [
        # No section header: configparser quotes the whole line.
        f"connection = mysql+pymysql://nova:{SECRET}@db/nova\n",
        # A broken section header.
        f"[database\nconnection = mysql+pymysql://nova:{SECRET}@db/nova\n",
        # A duplicate option.
        f"[database]\nconnection = mysql+pymysql://nova:{SECRET}@db/a\n"
        f"connection = mysql+pymysql://nova:{SECRET}@db/b\n",
        # A line with no delimiter.
        f"[database]\n{SECRET}\n",
    ],
    ids=["no-section", "broken-header", "duplicate", "no-delimiter"],
)
def test_invalid_ini_is_a_config_error_without_the_line(
    tmp_path: Path, home: Path, text: str
) -> None:
    conf = write(tmp_path / "bad.conf", text)
    with pytest.raises(ConfigError, match="not valid INI") as info:
        load_settings(conf, {"HOME": str(home)})
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)
    # The original configparser error (which quotes the line) is not chained.
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_invalid_ini_names_the_line(tmp_path: Path, home: Path) -> None:
    conf = write(tmp_path / "bad.conf", "# comment\n\nconnection = sqlite://\n")
    with pytest.raises(ConfigError, match="at line 3"):
        load_settings(conf, {"HOME": str(home)})


def test_percent_in_password_is_literal(tmp_path: Path, home: Path) -> None:
    conf = write(
        tmp_path / "c.conf",
        "[api_database]\nconnection = mysql+pymysql://nova:50%25%(off)s@db/nova_api\n"
        "[DEFAULT]\ntransport_url = rabbit://nova:100%@mq:5672/\n",
    )
    settings = load_settings(conf, {"HOME": str(home)})
    # With interpolation on, "%(off)s" would be a missing-option error and a
    # lone "%" a syntax error; here both are just characters of the password.
    assert settings.api_database.connection.sqlalchemy_url.password == "50%%(off)s"
    assert settings.transport_url.hosts[0].password == "100%"


@pytest.mark.parametrize(
    ("section", "name", "value"),
    [
        ("api_database", "connect_timeout", "abc"),
        ("api_database", "query_timeout", "0"),
        ("database", "connect_timeout", "-1"),
        ("database", "query_timeout", "nan"),
        ("cells", "verify_timeout", "5s"),
        ("cells", "cache_ttl", "1,5"),
    ],
)
def test_bad_number_is_a_config_error(
    tmp_path: Path, home: Path, section: str, name: str, value: str
) -> None:
    conf = write(tmp_path / "c.conf", f"[{section}]\n{name} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(conf, {"HOME": str(home)})
    message = str(info.value)
    assert f"[{section}] {name} must be a positive number" in message
    assert repr(value) in message
    assert str(conf) in message


@pytest.mark.parametrize("value", ["inf", "1e999", "Infinity"])
def test_infinite_timeout_is_a_config_error(tmp_path: Path, home: Path, value: str) -> None:
    conf = write(tmp_path / "c.conf", f"[database]\nquery_timeout = {value}\n")
    with pytest.raises(ConfigError):
        load_settings(conf, {"HOME": str(home)})


@pytest.mark.parametrize(
    ("section", "name", "url"),
    [
        ("database", "connection", f"mysql://nova:{SECRET}@db.example.org/nova"),
        ("api_database", "connection", f"oracle://nova:{SECRET}@db.example.org/nova"),
        ("api_database", "connection", f"mysql+pymysql://nova:{SECRET}@/nova"),
        ("DEFAULT", "transport_url", f"kafka://nova:{SECRET}@mq.example.org/"),
        ("DEFAULT", "transport_url", f"rabbit://nova:{SECRET}@mq.example.org:99999/"),
    ],
)
def test_invalid_url_is_a_config_error_with_a_masked_url(
    tmp_path: Path, home: Path, section: str, name: str, url: str
) -> None:
    conf = write(tmp_path / "c.conf", f"[{section}]\n{name} = {url}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(conf, {"HOME": str(home)})
    message = str(info.value)
    assert f"[{section}] {name}" in message
    assert "invalid URL" in message
    assert "nova:***@" in message
    assert SECRET not in message
    assert SECRET not in repr(info.value)


# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------


def test_settings_are_frozen(home: Path) -> None:
    settings = load_settings(None, {"HOME": str(home)})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.state_path = Path("/elsewhere")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.database.query_timeout = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.cells.cache_ttl = 1.0  # type: ignore[misc]


def test_settings_repr_does_not_show_passwords(tmp_path: Path, home: Path) -> None:
    conf = write(tmp_path / "c.conf", FULL_CONFIG.format(state=tmp_path))
    settings = load_settings(conf, {"HOME": str(home)})
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)


def _with_cell_database(tmp_path: Path, home: Path, url: str) -> Settings:
    conf = write(tmp_path / "c.conf", f"[database]\nconnection = {url}\n")
    return load_settings(conf, {"HOME": str(home)})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///x.sqlite", "sqlite:///x_cell0.sqlite"),
        (
            "sqlite:////var/lib/cellgate/cellgate.sqlite",
            "sqlite:////var/lib/cellgate/cellgate_cell0.sqlite",
        ),
        ("sqlite:///nodot", "sqlite:///nodot_cell0"),
        (
            f"mysql+pymysql://nova:{SECRET}@db.example.org:3306/nova?charset=utf8mb4",
            f"mysql+pymysql://nova:{SECRET}@db.example.org:3306/nova_cell0?charset=utf8mb4",
        ),
        (
            f"mariadb+pymysql://nova:{SECRET}@db.example.org/nova",
            f"mariadb+pymysql://nova:{SECRET}@db.example.org/nova_cell0",
        ),
        (
            f"postgresql://nova:{SECRET}@pg.example.org/nova",
            f"postgresql+psycopg://nova:{SECRET}@pg.example.org/nova_cell0",
        ),
    ],
)
def test_cell0_database(tmp_path: Path, home: Path, url: str, expected: str) -> None:
    settings = _with_cell_database(tmp_path, home, url)
    cell0 = settings.cell0_database()
    assert cell0.render(hide_password=False) == expected
    # The cell's own URL is untouched.
    assert settings.database.connection == DatabaseURL.parse(url)


def test_cell0_database_of_the_embedded_default(tmp_path: Path, home: Path) -> None:
    settings = load_settings(None, {"XDG_DATA_HOME": str(tmp_path), "HOME": str(home)})
    assert settings.cell0_database().database == str(
        tmp_path / "cellgate" / "cellgate_cell0.sqlite"
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/srv/.data/cells/db", "/srv/.data/cells/db_cell0"),
        ("/srv/state.d/cellgate", "/srv/state.d/cellgate_cell0"),
    ],
)
def test_cell0_database_sqlite_only_changes_the_file_name(
    tmp_path: Path, home: Path, path: str, expected: str
) -> None:
    settings = _with_cell_database(tmp_path, home, f"sqlite:///{path}")
    assert settings.cell0_database().database == expected


# --------------------------------------------------------------------------
# sample_config
# --------------------------------------------------------------------------


def _sections_of_sample(text: str) -> dict[str, str]:
    """Map each commented ``#name = default`` line's option to its section."""
    found: dict[str, str] = {}
    section = None
    for line in text.splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line):
            section = m.group(1)
        elif (m := re.fullmatch(r"#(\w+) =(?: (.*))?", line)) and section is not None:
            found[f"{section}.{m.group(1)}"] = m.group(2) or ""
    return found


def test_sample_config_lists_every_option_with_its_default() -> None:
    listed = _sections_of_sample(sample_config())
    assert listed == {f"{o.section}.{o.name}": o.default or "" for o in OPTIONS}


def test_sample_config_carries_every_help_text() -> None:
    text = sample_config()
    flat = " ".join(line.removeprefix("# ") for line in text.splitlines() if line.startswith("# "))
    for option in OPTIONS:
        assert " ".join(option.help.split()) in flat


def test_sample_config_is_loadable_as_is(tmp_path: Path, home: Path) -> None:
    conf = write(tmp_path / "sample.conf", sample_config())
    settings = load_settings(conf, {"XDG_DATA_HOME": str(tmp_path / "x"), "HOME": str(home)})
    assert settings.source == conf
    assert settings.sets_nothing  # all commented out: the CLI warns (issue 13.6)
    embedded = load_settings(None, {"XDG_DATA_HOME": str(tmp_path / "x"), "HOME": str(home)})
    assert not embedded.sets_nothing
    assert dataclasses.replace(settings, source=None, sets_nothing=False) == embedded


def test_sample_config_is_loadable_uncommented(tmp_path: Path, home: Path) -> None:
    # Uncommenting every option line proves each name is one the loader knows,
    # in the section the loader expects, with a default that validates.
    uncommented = re.sub(r"(?m)^#(\w+ =)", r"\1", sample_config())
    assert uncommented != sample_config()
    conf = write(tmp_path / "sample.conf", uncommented)
    settings = load_settings(conf, {"XDG_DATA_HOME": str(tmp_path / "x"), "HOME": str(home)})
    assert settings.database.connect_timeout == DEFAULT_CONNECT_TIMEOUT
    assert settings.cells.cache_ttl == DEFAULT_CACHE_TTL


# --------------------------------------------------------------------------
# Connection and fan-out bounds (issue 14)
# --------------------------------------------------------------------------


def test_connection_and_fanout_bounds_are_read(tmp_path: Path, home: Path) -> None:
    conf = write(
        tmp_path / "c.conf",
        "[cells]\nmax_connections = 10\nmax_idle_connections = 0\nidle_grace = 0\n"
        "scatter_workers = 7\nscatter_hung_threads = 0\n",
    )
    cells = load_settings(conf, {"HOME": str(home)}).cells
    assert (cells.max_connections, cells.max_idle_connections, cells.idle_grace) == (10, 0, 0.0)
    assert (cells.scatter_workers, cells.scatter_hung_threads) == (7, 0)


def test_more_idle_than_open_connections_is_a_config_error(tmp_path: Path, home: Path) -> None:
    conf = write(tmp_path / "c.conf", "[cells]\nmax_connections = 4\nmax_idle_connections = 5\n")
    with pytest.raises(ConfigError, match=r"max_idle_connections must be at most \[cells\] "):
        load_settings(conf, {"HOME": str(home)})


@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_negative_idle_grace_is_a_config_error(tmp_path: Path, home: Path, value: str) -> None:
    conf = write(tmp_path / "c.conf", f"[cells]\nidle_grace = {value}\n")
    with pytest.raises(ConfigError, match="idle_grace must be a number of at least 0"):
        load_settings(conf, {"HOME": str(home)})


@pytest.mark.parametrize(("text", "expected"), [("", "classic"), ("quorum", "quorum")])
def test_rpc_queue_type_defaults_to_classic(
    tmp_path: Path, home: Path, text: str, expected: str
) -> None:
    conf = write(tmp_path / "c.conf", f"[rpc]\nqueue_type = {text}\n")
    assert load_settings(conf, {"HOME": str(home)}).rpc.queue_type == expected
    assert "queue_type = classic" in sample_config()


def test_an_unknown_rpc_queue_type_is_a_config_error(tmp_path: Path, home: Path) -> None:
    conf = write(tmp_path / "c.conf", "[rpc]\nqueue_type = stream\n")
    with pytest.raises(ConfigError) as info:
        load_settings(conf, {"HOME": str(home)})
    assert "[rpc] queue_type must be one of classic, quorum, got 'stream'" in str(info.value)
