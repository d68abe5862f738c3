"""Unit tests for :mod:`cellgate.urls`: parsing, masking and templating of URLs.

The rule every test here defends: a password never appears in anything a URL
type renders by default (``str``, ``repr``, error messages), whatever odd
characters it contains. Over-masking is acceptable; showing part of a password
is not. Only an explicit call (``reveal()``, ``render(hide_password=False)``)
returns the secret.

The last section holds hypothesis property tests over arbitrary passwords.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cellgate.cli.hints import cli_hint
from cellgate.errors import ConfigError, Hint, InvalidURL
from cellgate.urls import (
    DATABASE_SCHEMES,
    MASK,
    NO_TRANSPORT,
    TEMPLATE_FIELDS,
    TRANSPORT_SCHEMES,
    DatabaseURL,
    StoredURL,
    TemplateDefaults,
    TransportHost,
    TransportURL,
    expand,
    mask_url,
    redact,
    url_passwords,
)

SECRET = "hunter2secret"

# --------------------------------------------------------------------------
# DatabaseURL.parse
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "backend", "database"),
    [
        ("sqlite:///relative.sqlite", "sqlite", "relative.sqlite"),
        ("sqlite:////abs/path/x.sqlite", "sqlite", "/abs/path/x.sqlite"),
        ("sqlite+pysqlite:///x.sqlite", "sqlite", "x.sqlite"),
        ("sqlite://", "sqlite", None),
        (f"mysql+pymysql://nova:{SECRET}@db.example.org/nova_api", "mysql", "nova_api"),
        (f"mysql+pymysql://nova:{SECRET}@db.example.org:3307/nova?charset=utf8", "mysql", "nova"),
        (f"mariadb+pymysql://nova:{SECRET}@10.0.0.5/nova", "mysql", "nova"),
        (f"postgresql+psycopg://nova:{SECRET}@pg.example.org:5432/nova", "postgresql", "nova"),
    ],
)
def test_database_url_parses_supported_drivers(
    raw: str, backend: str, database: str | None
) -> None:
    url = DatabaseURL.parse(raw)
    assert url.backend == backend
    assert url.database == database
    assert url.sqlalchemy_url.drivername in DATABASE_SCHEMES


def test_database_url_reports_mariadb_as_mysql_backend() -> None:
    url = DatabaseURL.parse("mariadb+pymysql://u:p@h/db")
    assert url.backend == "mysql"
    assert url.sqlalchemy_url.drivername == "mariadb+pymysql"


def test_bare_postgresql_is_normalised_to_psycopg3() -> None:
    url = DatabaseURL.parse(f"postgresql://nova:{SECRET}@pg.example.org/nova")
    assert url.sqlalchemy_url.drivername == "postgresql+psycopg"
    assert (
        url.render(hide_password=False)
        == f"postgresql+psycopg://nova:{SECRET}@pg.example.org/nova"
    )
    assert url == DatabaseURL.parse(f"postgresql+psycopg://nova:{SECRET}@pg.example.org/nova")


@pytest.mark.parametrize("scheme", ["mysql", "mariadb", "mysql+mysqldb", "mysql+mysqlconnector"])
def test_mysql_without_pymysql_is_rejected_with_a_hint(scheme: str) -> None:
    with pytest.raises(InvalidURL) as info:
        DatabaseURL.parse(f"{scheme}://nova:{SECRET}@db.example.org/nova")
    err = info.value
    assert "unsupported driver" in err.reason
    assert cli_hint(err) == "use mysql+pymysql://"
    assert SECRET not in str(err)
    assert err.url == f"{scheme}://nova:{MASK}@db.example.org/nova"


@pytest.mark.parametrize(
    "raw",
    [
        f"oracle://scott:{SECRET}@ora.example.org/orcl",
        f"postgresql+psycopg2://nova:{SECRET}@pg.example.org/nova",
        f"mssql+pyodbc://sa:{SECRET}@mssql.example.org/nova",
    ],
)
def test_unknown_driver_is_rejected_without_a_mysql_hint(raw: str) -> None:
    with pytest.raises(InvalidURL) as info:
        DatabaseURL.parse(raw)
    assert "unsupported driver" in info.value.reason
    assert info.value.hint is None
    # The message lists what is supported, so the operator can fix it.
    for scheme in DATABASE_SCHEMES:
        assert scheme in info.value.reason
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (f"mysql+pymysql://nova:{SECRET}@/nova", "no host given"),
        (f"postgresql://nova:{SECRET}@/nova", "no host given"),
        (f"mysql+pymysql://nova:{SECRET}@db.example.org", "no database name given"),
        (f"mysql+pymysql://nova:{SECRET}@db.example.org/", "no database name given"),
        (f"postgresql+psycopg://nova:{SECRET}@pg.example.org", "no database name given"),
    ],
)
def test_server_urls_need_a_host_and_a_database(raw: str, reason: str) -> None:
    with pytest.raises(InvalidURL) as info:
        DatabaseURL.parse(raw)
    assert info.value.reason == reason
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("raw", ["", "garbage", "not a url at all", "://", "sqlite"])
def test_non_urls_are_rejected(raw: str) -> None:
    with pytest.raises(InvalidURL) as info:
        DatabaseURL.parse(raw)
    assert "not a database URL" in info.value.reason


def test_non_numeric_port_is_rejected_without_leaking_the_password() -> None:
    with pytest.raises(InvalidURL) as info:
        DatabaseURL.parse(f"mysql+pymysql://nova:{SECRET}@db.example.org:abc/nova")
    assert SECRET not in str(info.value)
    assert info.value.url == f"mysql+pymysql://nova:{MASK}@db.example.org:abc/nova"


def test_non_numeric_port_names_the_port_as_the_reason() -> None:
    with pytest.raises(InvalidURL) as info:
        DatabaseURL.parse(f"mysql+pymysql://nova:{SECRET}@db.example.org:abc/nova")
    assert info.value.reason == "the port is not a number"


def test_invalid_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        DatabaseURL.parse("oracle://h/db")


# --------------------------------------------------------------------------
# DatabaseURL masking, equality, helpers
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    [SECRET, "p%40ss:w/rd", "pässwörd-ünïcode", "x" * 500, "a,b,c", "with space"],
)
def test_database_url_str_and_repr_never_show_the_password(password: str) -> None:
    encoded = quote(password, safe="")
    url = DatabaseURL.parse(f"mysql+pymysql://nova:{encoded}@db.example.org/nova")
    assert url.sqlalchemy_url.password == password
    for text in (str(url), repr(url), url.render()):
        assert password not in text
        assert encoded not in text
        assert MASK in text
    assert str(url) == "mysql+pymysql://nova:***@db.example.org/nova"
    assert repr(url) == "DatabaseURL('mysql+pymysql://nova:***@db.example.org/nova')"


def test_database_url_render_can_reveal_the_password() -> None:
    url = DatabaseURL.parse(f"mysql+pymysql://nova:{SECRET}@db.example.org/nova")
    assert url.render(hide_password=False) == f"mysql+pymysql://nova:{SECRET}@db.example.org/nova"


def test_database_url_reveal_round_trips_an_encoded_password() -> None:
    url = DatabaseURL.parse("mysql+pymysql://nova:p%40ss%2Fw%3Ard@db.example.org/nova")
    again = DatabaseURL.parse(url.render(hide_password=False))
    assert again.sqlalchemy_url.password == "p@ss/w:rd"
    assert again == url


def test_database_url_with_unencoded_at_in_password_never_shows_any_of_it() -> None:
    raw = "mysql+pymysql://nova:hunter@2secretpart@db.example.org/nova"
    try:
        url = DatabaseURL.parse(raw)
    except InvalidURL as exc:  # rejecting it is also correct
        assert "2secretpart" not in str(exc)
    else:
        for text in (str(url), repr(url)):
            assert "2secretpart" not in text


def test_database_url_equality_and_hash_use_the_real_url() -> None:
    a = DatabaseURL.parse("mysql+pymysql://nova:one@db.example.org/nova")
    b = DatabaseURL.parse("mysql+pymysql://nova:one@db.example.org/nova")
    c = DatabaseURL.parse("mysql+pymysql://nova:two@db.example.org/nova")
    assert a == b
    assert hash(a) == hash(b)
    # Same masked text, different passwords: not equal.
    assert str(a) == str(c)
    assert a != c
    assert a != "mysql+pymysql://nova:one@db.example.org/nova"
    assert len({a, b, c}) == 2


def test_with_database_changes_only_the_database() -> None:
    url = DatabaseURL.parse(f"mysql+pymysql://nova:{SECRET}@db.example.org:3306/nova")
    other = url.with_database("nova_cell0")
    assert other.database == "nova_cell0"
    assert url.database == "nova"  # the original is unchanged
    assert (
        other.render(hide_password=False)
        == f"mysql+pymysql://nova:{SECRET}@db.example.org:3306/nova_cell0"
    )


# --------------------------------------------------------------------------
# TransportURL.parse
# --------------------------------------------------------------------------


def test_transport_url_single_host() -> None:
    url = TransportURL.parse(f"rabbit://nova:{SECRET}@mq.example.org:5672/cell1?ssl=1")
    assert url.scheme == "rabbit"
    assert url.virtual_host == "cell1"
    assert url.query == "ssl=1"
    assert not url.is_none
    (host,) = url.hosts
    assert (host.hostname, host.port, host.username, host.password) == (
        "mq.example.org",
        5672,
        "nova",
        SECRET,
    )


def test_transport_url_multi_host() -> None:
    url = TransportURL.parse("rabbit://u:p@h1:5672,u2:p2@h2:5673/vhost")
    assert [(h.hostname, h.port, h.username, h.password) for h in url.hosts] == [
        ("h1", 5672, "u", "p"),
        ("h2", 5673, "u2", "p2"),
    ]
    assert url.virtual_host == "vhost"
    assert str(url) == "rabbit://u:***@h1:5672,u2:***@h2:5673/vhost"
    assert url.render(hide_password=False) == "rabbit://u:p@h1:5672,u2:p2@h2:5673/vhost"


def test_transport_url_hosts_without_credentials_or_ports() -> None:
    url = TransportURL.parse("amqp://h1,h2,h3")
    assert [(h.hostname, h.port, h.username, h.password) for h in url.hosts] == [
        ("h1", None, None, None),
        ("h2", None, None, None),
        ("h3", None, None, None),
    ]
    assert url.virtual_host is None


def test_transport_url_ipv6_hosts() -> None:
    url = TransportURL.parse("rabbit://u:p@[::1]:5672,[fe80::1]/v")
    assert [(h.hostname, h.port) for h in url.hosts] == [("[::1]", 5672), ("[fe80::1]", None)]


def test_transport_url_decodes_credentials_and_vhost() -> None:
    url = TransportURL.parse("rabbit://us%40er:p%40ss%2Cw%3Ad@h:5672/my%2Fvhost")
    (host,) = url.hosts
    assert host.username == "us@er"
    assert host.password == "p@ss,w:d"
    assert url.virtual_host == "my/vhost"


def test_memory_transport_names_one_broker() -> None:
    url = TransportURL.parse("memory://cellgate")
    assert url.scheme == "memory"
    assert [h.hostname for h in url.hosts] == ["cellgate"]
    with pytest.raises(InvalidURL, match="one name"):
        TransportURL.parse("memory://a,b")


def test_none_transport() -> None:
    url = TransportURL.parse(NO_TRANSPORT)
    assert url.is_none
    assert url.hosts == ()
    assert str(url) == NO_TRANSPORT


@pytest.mark.parametrize("raw", ["none://somehost/", "none:///vhost", "none://u:p@h/"])
def test_none_transport_takes_no_host_or_path(raw: str) -> None:
    with pytest.raises(InvalidURL, match=r"exactly none:///"):
        TransportURL.parse(raw)


@pytest.mark.parametrize("raw", ["none://", "none:////", "none:///?x=1", "none:///#f"])
def test_none_transport_is_only_the_exact_string(raw: str) -> None:
    with pytest.raises(InvalidURL):
        TransportURL.parse(raw)


@pytest.mark.parametrize(
    "raw", ["rabbit://", "rabbit:///", "amqp://", "amqp:///vhost", "rabbit:///?x=1"]
)
def test_amqp_transports_need_a_host(raw: str) -> None:
    with pytest.raises(InvalidURL, match="no broker host given"):
        TransportURL.parse(raw)


@pytest.mark.parametrize("raw", ["rabbit://u:p@,h2", "rabbit://h1,,h3", "rabbit://:5672"])
def test_empty_host_in_list_is_rejected(raw: str) -> None:
    with pytest.raises(InvalidURL, match="empty host name"):
        TransportURL.parse(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "rabbit://h:0",
        "rabbit://h:65536",
        "rabbit://h:99999",
        "rabbit://h:abc",
        "rabbit://h:",
        "rabbit://h:-1",
        "rabbit://h:+5",
        "rabbit://h: 5",
        "rabbit://h1:5672,h2:http",
        f"rabbit://u:{SECRET}@h:5672x/v",
    ],
)
def test_bad_transport_ports_are_rejected(raw: str) -> None:
    with pytest.raises(InvalidURL, match="is not 1-65535") as info:
        TransportURL.parse(raw)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("port", ["1", "5672", "65535"])
def test_port_bounds_accepted(port: str) -> None:
    assert TransportURL.parse(f"rabbit://h:{port}").hosts[0].port == int(port)


@pytest.mark.parametrize("port", ["²", "¹²", "٥", "𝟓"])
def test_non_ascii_digit_ports_are_invalid_urls(port: str) -> None:
    with pytest.raises(InvalidURL):
        TransportURL.parse(f"rabbit://u:{SECRET}@h:{port}/v")


@pytest.mark.parametrize(
    "raw", ["kafka://h", "Rabbit://h", "NONE:///", "http://h", "kombu+rabbit://h"]
)
def test_unknown_transport_schemes_are_rejected(raw: str) -> None:
    with pytest.raises(InvalidURL, match="unsupported scheme") as info:
        TransportURL.parse(raw)
    for scheme in TRANSPORT_SCHEMES:
        assert f"{scheme}://" in info.value.reason


@pytest.mark.parametrize("raw", ["", "rabbit", "rabbit:/h", "5672://h", f"u:{SECRET}@h"])
def test_non_transport_urls_are_rejected(raw: str) -> None:
    with pytest.raises(InvalidURL, match="not a transport URL") as info:
        TransportURL.parse(raw)
    assert SECRET not in str(info.value)


def test_transport_url_masking_and_equality() -> None:
    a = TransportURL.parse(f"rabbit://nova:{SECRET}@h1:5672,nova:{SECRET}@h2:5672/v")
    b = TransportURL.parse(f"rabbit://nova:{SECRET}@h1:5672,nova:{SECRET}@h2:5672/v")
    c = TransportURL.parse("rabbit://nova:other@h1:5672,nova:other@h2:5672/v")
    for text in (str(a), repr(a), a.render()):
        assert SECRET not in text
    assert repr(a) == "TransportURL('rabbit://nova:***@h1:5672,nova:***@h2:5672/v')"
    assert a == b
    assert hash(a) == hash(b)
    assert str(a) == str(c)
    assert a != c
    assert a != str(a)


def test_transport_host_repr_does_not_show_the_password() -> None:
    host = TransportURL.parse(f"rabbit://nova:{SECRET}@h:5672/v").hosts[0]
    assert isinstance(host, TransportHost)
    assert SECRET not in repr(host)
    assert SECRET not in str(host)


# --------------------------------------------------------------------------
# mask_url
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "secret_parts"),
    [
        # Percent-encoded: the encoded and decoded forms must both be hidden.
        ("mysql+pymysql://u:p%40ssw0rd@h/db", ["p%40ssw0rd", "p@ssw0rd", "ssw0rd"]),
        # Unencoded "@": masked whole (the last "@" ends the userinfo).
        ("mysql+pymysql://u:p@ssw0rd@h/db", ["ssw0rd"]),
        ("rabbit://u:a@b@c@d3f@h:5672/v", ["d3f", "b@c"]),
        # Unencoded "/", "?", "#": the netloc does not end inside the password.
        ("mysql+pymysql://u:pa/ssw0rd@h/db", ["ssw0rd"]),
        ("mysql+pymysql://u:pa?ssw0rd@h/db", ["ssw0rd"]),
        ("mysql+pymysql://u:pa#ssw0rd@h/db", ["ssw0rd"]),
        ("mysql+pymysql://u:p@s/sw0rd@h/db", ["sw0rd"]),
        ("rabbit://u:p@s?sw0rd@h/v", ["sw0rd"]),
        # Unencoded "," in a single- and a multi-host URL.
        ("rabbit://u:pa,ssw0rd@h:5672/v", ["ssw0rd"]),
        ("rabbit://u:pa,ssw0rd@h1:5672,u2:ot,herpw@h2:5673/v", ["ssw0rd", "herpw"]),
        # Unencoded ":" (only the first ":" separates user and password).
        ("rabbit://u:pa:ssw:0rd@h:5672/v", ["ssw", "0rd"]),
        ("rabbit://u:pa://ssw0rd@h:5672/v", ["ssw0rd"]),
        # Unicode and very long passwords.
        ("rabbit://u:pässwörd-ünïcødé@h/v", ["pässwörd", "ünïcødé"]),
        ("rabbit://u:" + "s3cr" * 1000 + "@h/v", ["s3cr"]),
        # A user with an empty name, and an empty password.
        ("rabbit://:s3cr3t@h/v", ["s3cr3t"]),
    ],
)
def test_mask_url_hides_awkward_passwords(raw: str, secret_parts: list[str]) -> None:
    masked = mask_url(raw)
    for part in secret_parts:
        assert part not in masked
    assert MASK in masked


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "rabbit://u:p@h1:5672,u2:p2@h2:5673/vhost",
            "rabbit://u:***@h1:5672,u2:***@h2:5673/vhost",
        ),
        ("mysql+pymysql://u:p@ss@h/db?x=1#f", "mysql+pymysql://u:***@h/db?x=1#f"),
        ("rabbit://u:pw@h/v?x=y#z", "rabbit://u:***@h/v?x=y#z"),
        ("rabbit://u@h/v", "rabbit://u@h/v"),
        ("rabbit://h1,h2/v", "rabbit://h1,h2/v"),
        ("rabbit://u:@h/v", "rabbit://u:***@h/v"),
        ("sqlite:///x.sqlite", "sqlite:///x.sqlite"),
        ("none:///", "none:///"),
        ("rabbit://{username}:{password}@{hostname}:{port}/c1", None),
    ],
)
def test_mask_url_keeps_everything_but_the_password(raw: str, expected: str | None) -> None:
    assert mask_url(raw) == (raw if expected is None else expected)


def test_mask_url_keeps_placeholders_but_masks_a_brace_password() -> None:
    # {password} is a template field, not a secret.
    assert mask_url("rabbit://u:{password}@h/v") == "rabbit://u:{password}@h/v"
    # A literal password that merely looks brace-y is masked.
    assert mask_url("rabbit://u:{s3cret}@h/v") == "rabbit://u:***@h/v"
    assert mask_url("rabbit://u:{password!r}@h/v") == "rabbit://u:***@h/v"


@pytest.mark.parametrize("raw", ["", "garbage", "u:s3cr3t@host", "no scheme://u:s3cr3t@h"])
def test_mask_url_shows_only_the_length_of_non_urls(raw: str) -> None:
    assert mask_url(raw) == f"<unparseable URL, {len(raw)} characters>"


# --------------------------------------------------------------------------
# redact and url_passwords
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "connect to rabbit://u:p1ss@h1:5672,u2:p2ss@h2:5673/vhost failed",
            "connect to rabbit://u:***@h1:5672,u2:***@h2:5673/vhost failed",
        ),
        (
            "Can't connect 'mysql+pymysql://u:hunter2@db/x' (timeout)",
            "Can't connect 'mysql+pymysql://u:***@db/x' (timeout)",
        ),
        ('url="postgresql://u:hunter2@db/x"', 'url="postgresql://u:***@db/x"'),
        ("<postgresql://u:hunter2@db/x>", "<postgresql://u:***@db/x>"),
        (
            "a mysql+pymysql://u:one1@h/db and\nrabbit://u:two2@h/v",
            "a mysql+pymysql://u:***@h/db and\nrabbit://u:***@h/v",
        ),
        ("url: mysql+pymysql://u:p@ss@h/db end", "url: mysql+pymysql://u:***@h/db end"),
        ("nothing to hide here", "nothing to hide here"),
        ("ratio 3:2 at 10:30, user@host", "ratio 3:2 at 10:30, user@host"),
    ],
)
def test_redact_masks_urls_in_free_text(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("given", "password"),
    [("p@ss/w0rd", "p@ss/w0rd"), ("p%40ss%2Fw0rd", "p@ss/w0rd"), ("pässwörd", "pässwörd")],
    ids=["given-raw", "given-encoded", "unicode"],
)
def test_redact_removes_every_form_of_an_explicit_secret(given: str, password: str) -> None:
    encoded = quote(password, safe="")
    text = f"auth failed: password {password!r}; in URL form {encoded}; again {password}"
    out = redact(text, [given])
    assert password not in out
    assert encoded not in out
    assert out == f"auth failed: password '{MASK}'; in URL form {MASK}; again {MASK}"


def test_redact_with_several_secrets_and_a_url() -> None:
    text = "rabbit://u:first1@h/v said 'second2' and 'third3'"
    out = redact(text, ["second2", "third3"])
    assert out == "rabbit://u:***@h/v said '***' and '***'"


def test_redact_ignores_secrets_too_short_to_match_safely() -> None:
    # One- and two-character "secrets" would mangle ordinary text.
    assert redact("a b ab", ["ab", "a"]) == "a b ab"
    assert redact("abc", ["abc"]) == MASK


@pytest.mark.parametrize(
    ("raw", "passwords"),
    [
        ("rabbit://u:p1@h1:5672,u2:p2@h2:5673/v", ["p1", "p2"]),
        ("mysql+pymysql://u:p%40ss@h/db", ["p%40ss"]),
        ("mysql+pymysql://u:p@ss@h/db", ["p@ss"]),
        ("rabbit://u:{password}@h/v", []),
        ("rabbit://u@h/v", []),
        ("rabbit://u:@h/v", []),
        ("sqlite:///x.sqlite", []),
        ("garbage", []),
    ],
)
def test_url_passwords(raw: str, passwords: list[str]) -> None:
    assert url_passwords(raw) == passwords


def test_url_passwords_feed_redact() -> None:
    url = "mysql+pymysql://u:p%40ssw0rd@h/db"
    text = "driver said: Access denied (password p@ssw0rd)"
    assert redact(text, url_passwords(url)) == "driver said: Access denied (password ***)"


# --------------------------------------------------------------------------
# StoredURL
# --------------------------------------------------------------------------


def test_stored_url_is_masked_and_reveals_on_request() -> None:
    raw = f"mysql+pymysql://nova:{SECRET}@db.example.org/nova"
    stored = StoredURL(raw)
    assert str(stored) == "mysql+pymysql://nova:***@db.example.org/nova"
    assert repr(stored) == "StoredURL('mysql+pymysql://nova:***@db.example.org/nova')"
    assert SECRET not in f"{stored} {stored!r} {[stored]} {stored!s:>80}"
    assert stored.reveal() == raw


def test_stored_url_masks_even_unparseable_values() -> None:
    stored = StoredURL(f"nova:{SECRET}@db")
    assert SECRET not in str(stored)
    assert SECRET not in repr(stored)


@pytest.mark.parametrize(
    ("raw", "is_template"),
    [
        ("mysql+pymysql://{username}:{password}@{hostname}/cell1", True),
        ("{scheme}://h/v", True),
        ("rabbit://u:p@h/v", False),
        ("rabbit://u:p{{x}}@h/v", False),
        ("none:///", False),
    ],
)
def test_stored_url_is_template(raw: str, is_template: bool) -> None:
    assert StoredURL(raw).is_template is is_template


def test_stored_url_equality_and_hash() -> None:
    a = StoredURL("rabbit://u:one@h/v")
    b = StoredURL("rabbit://u:one@h/v")
    c = StoredURL("rabbit://u:two@h/v")
    assert a == b
    assert hash(a) == hash(b)
    assert str(a) == str(c)
    assert a != c
    assert a != "rabbit://u:one@h/v"
    assert len({a, b, c}) == 2


# --------------------------------------------------------------------------
# expand (URL templates)
# --------------------------------------------------------------------------

DEFAULT_DB = "mysql+pymysql://root:s3cret@dbhost:3306/nova?charset=utf8#frag"
OPTION = "[database] connection"


def test_expand_fills_every_field() -> None:
    template = "{scheme}://{username}:{password}@{hostname}:{port}/{path}?{query}#{fragment}"
    assert set(TEMPLATE_FIELDS) == {
        "scheme",
        "username",
        "password",
        "hostname",
        "port",
        "path",
        "query",
        "fragment",
    }
    assert expand(template, DEFAULT_DB, option=OPTION) == DEFAULT_DB


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{scheme}://x", "mysql+pymysql://x"),
        ("s://{username}@x", "s://root@x"),
        ("s://u:{password}@x", "s://u:s3cret@x"),
        ("s://{hostname}/x", "s://dbhost/x"),
        ("s://h:{port}/x", "s://h:3306/x"),
        ("s://h/{path}_cell1", "s://h/nova_cell1"),
        ("s://h/x?{query}", "s://h/x?charset=utf8"),
        ("s://h/x#{fragment}", "s://h/x#frag"),
        (
            "mysql+pymysql://{username}:{password}@{hostname}:{port}/cell1",
            "mysql+pymysql://root:s3cret@dbhost:3306/cell1",
        ),
    ],
)
def test_expand_single_fields(template: str, expected: str) -> None:
    assert expand(template, DEFAULT_DB, option=OPTION) == expected


def test_expand_keeps_the_default_password_encoded() -> None:
    out = expand(
        "mysql+pymysql://{username}:{password}@{hostname}/cell1",
        "mysql+pymysql://u:p%40ss@h/db",
        option=OPTION,
    )
    assert out == "mysql+pymysql://u:p%40ss@h/cell1"
    assert DatabaseURL.parse(out).sqlalchemy_url.password == "p@ss"


def test_expand_uses_the_first_host_of_a_multi_host_default() -> None:
    out = expand(
        "rabbit://{username}:{password}@{hostname}:{port}/cell1",
        "rabbit://u1:p1@h1:5672,u2:p2@h2:5673/top",
        option="[DEFAULT] transport_url",
    )
    assert out == "rabbit://u1:p1@h1:5672/cell1"


def test_expand_optional_fields_may_be_empty() -> None:
    out = expand("s://{hostname}/{path}?{query}#{fragment}", "s://h", option=OPTION)
    assert out == "s://h/?#"


@pytest.mark.parametrize(
    "raw", ["mysql+pymysql://u:p@h/db", "none:///", "sqlite:///x.sqlite", "rabbit://h1,h2/v"]
)
def test_expand_without_placeholders_returns_the_url_unchanged(raw: str) -> None:
    assert expand(raw, DEFAULT_DB, option=OPTION) == raw
    # No default needed when nothing is templated.
    assert expand(raw, None, option=OPTION) == raw


def test_expand_doubled_braces_mean_one_brace_with_or_without_placeholders() -> None:
    with_field = expand("s://{username}:p{{w}}@h/x", DEFAULT_DB, option=OPTION)
    without_field = expand("s://root:p{{w}}@h/x", DEFAULT_DB, option=OPTION)
    assert with_field == "s://root:p{w}@h/x"
    assert without_field == with_field


@pytest.mark.parametrize(
    ("template", "placeholder"),
    [
        ("s://{user}@h/x", "{user}"),
        ("s://{host}/x", "{host}"),
        ("s://h/{0}", "{0}"),
        ("s://u:{}@h/x", "{}"),
        ("s://u:{password.attr}@h/x", "{password.attr}"),
        ("s://u:{password[0]}@h/x", "{password[0]}"),
    ],
)
def test_expand_rejects_unknown_placeholders(template: str, placeholder: str) -> None:
    with pytest.raises(InvalidURL) as info:
        expand(template, DEFAULT_DB, option=OPTION)
    assert f"unknown placeholder {placeholder}" in info.value.reason
    # Raised before the default is even looked at.
    with pytest.raises(InvalidURL):
        expand(template, None, option=OPTION)


@pytest.mark.parametrize(
    "template", ["s://{username@h/x", "s://username}@h/x", "s://u:p{w@h/x", "s://{hostname}}/x"]
)
def test_expand_rejects_unbalanced_braces(template: str) -> None:
    with pytest.raises(InvalidURL) as info:
        expand(template, DEFAULT_DB, option=OPTION)
    assert "unbalanced" in info.value.reason
    assert "{{" in (cli_hint(info.value) or "")


def test_unbalanced_brace_error_does_not_show_the_password() -> None:
    with pytest.raises(InvalidURL) as info:
        expand(f"mysql+pymysql://u:{SECRET}{{@h/x", DEFAULT_DB, option=OPTION)
    assert SECRET not in str(info.value)


def test_expand_without_default_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        expand("mysql+pymysql://{username}:pw@h/cell1", None, option=OPTION)
    assert type(info.value) is ConfigError
    assert OPTION in str(info.value)
    assert cli_hint(info.value) == f"set {OPTION} in this host's config file"
    assert "pw@" not in str(info.value)


@pytest.mark.parametrize(
    ("template", "default", "field"),
    [
        ("s://h:{port}/x", "mysql+pymysql://root:s3cret@dbhost/nova", "port"),
        ("s://u:{password}@h/x", "mysql+pymysql://root@dbhost/nova", "password"),
        ("s://{username}@h/x", "mysql+pymysql://dbhost/nova", "username"),
        ("s://{username}@h/x", "mysql+pymysql://:s3cret@dbhost/nova", "username"),
        ("s://u:{password}@h/x", "mysql+pymysql://root:@dbhost/nova", "password"),
    ],
)
def test_expand_with_a_default_lacking_the_field_is_a_config_error(
    template: str, default: str, field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        expand(template, default, option=OPTION)
    assert type(info.value) is ConfigError
    assert f"uses {{{field}}} but {OPTION} has no {field}" in info.value.message
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("default", ["garbage", "", "u:pw@host/db"])
def test_expand_with_a_non_url_default_is_a_config_error(default: str) -> None:
    with pytest.raises(ConfigError, match="not a URL that templates can use") as info:
        expand("rabbit://{hostname}/v", default, option="[DEFAULT] transport_url")
    assert type(info.value) is ConfigError
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("default", ["none:///", "rabbit://", "sqlite:///x.sqlite"])
def test_expand_with_a_hostless_default_has_no_hostname(default: str) -> None:
    with pytest.raises(ConfigError, match="has no hostname"):
        expand("rabbit://{hostname}/v", default, option="[DEFAULT] transport_url")


def test_expand_sqlite_default_provides_scheme_and_path() -> None:
    out = expand("{scheme}:///{path}", "sqlite:///state/cell1.sqlite", option=OPTION)
    assert out == "sqlite:///state/cell1.sqlite"
    with pytest.raises(ConfigError, match="has no username"):
        expand("mysql+pymysql://{username}@h/x", "sqlite:///x.sqlite", option=OPTION)


def test_expand_errors_never_show_the_default_password() -> None:
    with pytest.raises(ConfigError) as info:
        expand("s://{hostname}/x", f"u:{SECRET}@not-a-url", option=OPTION)
    assert SECRET not in str(info.value)


# --------------------------------------------------------------------------
# TemplateDefaults
# --------------------------------------------------------------------------


def test_template_defaults_render_database_and_transport_urls() -> None:
    defaults = TemplateDefaults(
        database=f"mysql+pymysql://nova:{SECRET}@db.example.org:3306/nova",
        transport=f"rabbit://nova:{SECRET}@mq1:5672,nova:{SECRET}@mq2:5672/top",
    )
    db = defaults.database_url(StoredURL("{scheme}://{username}:{password}@{hostname}/cell1"))
    assert isinstance(db, DatabaseURL)
    assert db.render(hide_password=False) == f"mysql+pymysql://nova:{SECRET}@db.example.org/cell1"
    mq = defaults.transport_url(StoredURL("rabbit://{username}:{password}@{hostname}:{port}/c1"))
    assert isinstance(mq, TransportURL)
    assert mq.render(hide_password=False) == f"rabbit://nova:{SECRET}@mq1:5672/c1"
    # Nothing that was expanded leaks through the rendered values.
    assert SECRET not in f"{db} {db!r} {mq} {mq!r}"


def test_template_defaults_pass_plain_urls_through() -> None:
    defaults = TemplateDefaults(database=None, transport=None)
    db = defaults.database_url(StoredURL("sqlite:///cell1.sqlite"))
    assert db.database == "cell1.sqlite"
    assert defaults.transport_url(StoredURL(NO_TRANSPORT)).is_none


def test_template_defaults_fail_instead_of_using_the_raw_template() -> None:
    defaults = TemplateDefaults(database=None, transport=None)
    with pytest.raises(ConfigError, match=r"\[database\] connection"):
        defaults.database_url(StoredURL("mysql+pymysql://{username}:pw@h/cell1"))
    with pytest.raises(ConfigError, match=r"\[DEFAULT\] transport_url"):
        defaults.transport_url(StoredURL("rabbit://{username}:pw@h/cell1"))


def test_template_defaults_validate_the_rendered_url() -> None:
    defaults = TemplateDefaults(
        database=f"mysql://nova:{SECRET}@db/nova", transport=f"kafka://nova:{SECRET}@mq/v"
    )
    with pytest.raises(InvalidURL, match="unsupported driver") as db_info:
        defaults.database_url(StoredURL("{scheme}://{username}:{password}@{hostname}/cell1"))
    with pytest.raises(InvalidURL, match="unsupported scheme") as mq_info:
        defaults.transport_url(StoredURL("{scheme}://{username}:{password}@{hostname}/c1"))
    assert SECRET not in str(db_info.value)
    assert SECRET not in str(mq_info.value)


# --------------------------------------------------------------------------
# Property tests: arbitrary passwords never leak
# --------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
# Any text except surrogates (which cannot be UTF-8 encoded).
passwords = st.text(min_size=4, max_size=64)

DB_SKELETON = "mysql+pymysql://nova:***@db.example.org:3306/nova_api"
MQ_SKELETON = "rabbit://nova:***@mq1.example.org:5672,nova2:***@mq2.example.org:5673/cell1"


def _hidden_in(skeleton: str, *forms: str) -> None:
    """Skip passwords that are part of the URL's non-secret text (e.g. 'nova')."""
    for form in forms:
        assume(form not in skeleton)


@PROPERTY_SETTINGS
@given(password=passwords)
def test_property_database_url_never_renders_the_password(password: str) -> None:
    encoded = quote(password, safe="")
    _hidden_in(DB_SKELETON, password, encoded)
    raw = f"mysql+pymysql://nova:{encoded}@db.example.org:3306/nova_api"
    url = DatabaseURL.parse(raw)
    assert url.sqlalchemy_url.password == password
    assert str(url) == DB_SKELETON
    assert repr(url) == f"DatabaseURL({DB_SKELETON!r})"
    assert mask_url(raw) == DB_SKELETON
    assert str(StoredURL(raw)) == DB_SKELETON
    assert DatabaseURL.parse(url.render(hide_password=False)) == url


@PROPERTY_SETTINGS
@given(password=passwords, other=passwords)
def test_property_transport_url_never_renders_a_password(password: str, other: str) -> None:
    encoded, other_encoded = quote(password, safe=""), quote(other, safe="")
    _hidden_in(MQ_SKELETON, password, encoded, other, other_encoded)
    raw = (
        f"rabbit://nova:{encoded}@mq1.example.org:5672,"
        f"nova2:{other_encoded}@mq2.example.org:5673/cell1"
    )
    url = TransportURL.parse(raw)
    assert [h.password for h in url.hosts] == [password, other]
    assert [h.username for h in url.hosts] == ["nova", "nova2"]
    assert [h.port for h in url.hosts] == [5672, 5673]
    assert str(url) == MQ_SKELETON
    assert mask_url(raw) == MQ_SKELETON
    assert url.render(hide_password=False) == raw
    assert url_passwords(raw) == [encoded, other_encoded]


@PROPERTY_SETTINGS
@given(password=passwords, other=passwords)
def test_property_redact_hides_urls_in_text(password: str, other: str) -> None:
    encoded, other_encoded = quote(password, safe=""), quote(other, safe="")
    _hidden_in(DB_SKELETON + MQ_SKELETON, password, encoded, other, other_encoded)
    db = f"mysql+pymysql://nova:{encoded}@db.example.org:3306/nova_api"
    mq = (
        f"rabbit://nova:{encoded}@mq1.example.org:5672,"
        f"nova2:{other_encoded}@mq2.example.org:5673/cell1"
    )
    text = f"cannot reach '{db}' nor {mq}: refused"
    assert redact(text) == f"cannot reach '{DB_SKELETON}' nor {MQ_SKELETON}: refused"


@PROPERTY_SETTINGS
@given(password=passwords)
def test_property_redact_hides_explicit_secrets(password: str) -> None:
    # A password made of the mask's own '*' cannot be told apart from the mask.
    assume("*" not in password)
    encoded = quote(password, safe="")
    text = f"login failed [{password}] (sent as {encoded})"
    _hidden_in("login failed [***] (sent as ***)", password, encoded)
    out = redact(text, [password])
    assert password not in out
    assert encoded not in out
    # The encoded form given as the secret works just as well.
    out = redact(text, [encoded])
    assert password not in out
    assert encoded not in out


# --------------------------------------------------------------------------
# Passwords in the query string, and an "@" after "?" or "#" (issue 12.1)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "mysql+pymysql://u@127.0.0.1/db?password=Qp@ss-7Hk2",
            "mysql+pymysql://u@127.0.0.1/db?password=***",
        ),
        ("mysql+pymysql://u@h/db?pass%77ord=Qp@ss", "mysql+pymysql://u@h/db?pass%77ord=***"),
        ("mysql+pymysql://u@h/db?PASSWORD=s3cr3t", "mysql+pymysql://u@h/db?PASSWORD=***"),
        ("mysql+pymysql://u@h/db?passwd=s3cr3t", "mysql+pymysql://u@h/db?passwd=***"),
        ("postgresql://u@h/db?sslpassword=s3cr3t", "postgresql://u@h/db?sslpassword=***"),
        (
            "postgresql://u@h/db?password=one1&x=1&password=two2",
            "postgresql://u@h/db?password=***&x=1&password=***",
        ),
        ("postgresql://u@h/db?a=1;password=s3cr3t", "postgresql://u@h/db?a=1;password=***"),
        ("postgresql://u@h/db#f?password=s3cr3t", "postgresql://u@h/db#f?password=***"),
        ("rabbit://u:p1@h1,u2:p2@h2/vh", "rabbit://u:***@h1,u2:***@h2/vh"),
    ],
)
def test_mask_url_masks_query_secrets_by_decoded_key(raw: str, expected: str) -> None:
    assert mask_url(raw) == expected
    assert redact(f"x {raw} y") == f"x {expected} y"
    assert str(StoredURL(raw)) == expected


def test_url_passwords_include_query_secrets() -> None:
    assert url_passwords("mysql+pymysql://u@h/db?password=Qp@ss") == ["Qp@ss"]
    assert url_passwords("mysql+pymysql://u@h/db?pass%77ord=a1b&PASSWD=c2d") == ["a1b", "c2d"]


@pytest.mark.parametrize(
    "raw",
    [
        "mysql+pymysql://u@127.0.0.1/db?password=Qp@ss-7Hk2",
        "mysql+pymysql://u@h/db?pass%77ord=Qp%40ss-7Hk2",
        "mysql+pymysql://u@h/db?PASSWORD=Qp%40ss-7Hk2&password=Qp%40ss-7Hk2",
    ],
)
def test_database_url_masks_query_secrets_by_decoded_key(raw: str) -> None:
    url = DatabaseURL.parse(raw)
    for text in (str(url), repr(url)):
        assert "Qp" not in text and "7Hk2" not in text, text


def test_database_url_refuses_an_at_in_the_query_after_a_port() -> None:
    # SQLAlchemy reads this as user "u@h", password "3306/db?password=Qp", host "ss".
    with pytest.raises(InvalidURL, match="unencoded '@'") as info:
        DatabaseURL.parse("mysql+pymysql://u@h:3306/db?password=Qp@ss-7Hk2")
    assert "7Hk2" not in str(info.value)


def test_transport_url_refuses_an_at_after_a_question_mark() -> None:
    with pytest.raises(InvalidURL, match="after '\\?' or '#'") as info:
        TransportURL.parse("rabbit://u:pa?ss-7Hk2@h/v")
    assert "7Hk2" not in str(info.value)


@pytest.mark.parametrize(
    "raw",
    [
        "rabbit://u:p@ss@127.0.0.1:5672/v",
        "rabbit://u:ok@127.0.0.1:5672,u:p@ss@127.0.0.2:5672/v",
        "amqp://u:@@127.0.0.1/",
    ],
)
def test_a_raw_at_in_a_transport_password_is_refused_as_in_a_database_url(raw: str) -> None:
    """Issue 13.5: the same rule for both URL kinds (percent-encode it as %40)."""
    with pytest.raises(InvalidURL, match="unencoded '@'") as info:
        TransportURL.parse(raw)
    assert info.value.hint is Hint.ENCODE_AT_SIGN
    assert "p@ss" not in str(info.value)
    with pytest.raises(InvalidURL, match="unencoded '@'"):
        DatabaseURL.parse("mysql+pymysql://u:p@ss@127.0.0.1/db")
    assert TransportURL.parse("rabbit://u:p%40ss@127.0.0.1:5672/v").hosts[0].password == "p@ss"


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_database_and_transport_ports_share_one_range(port: str) -> None:
    for raw in (
        f"mysql+pymysql://u:pw@127.0.0.1:{port}/db",
        f"postgresql+psycopg://u:pw@127.0.0.1:{port}/db",
    ):
        with pytest.raises(InvalidURL, match="not 1-65535"):
            DatabaseURL.parse(raw)
    with pytest.raises(InvalidURL, match="not 1-65535"):
        TransportURL.parse(f"rabbit://u:pw@127.0.0.1:{port}/v")
    for ok in ("1", "65535"):
        assert DatabaseURL.parse(f"mysql+pymysql://u:pw@127.0.0.1:{ok}/db").hosts[0][1] == int(ok)
