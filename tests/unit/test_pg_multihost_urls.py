"""PostgreSQL multi-host URLs (issue 15.3): accepted, checked, masked, rendered for psycopg 3.

What psycopg receives is checked through SQLAlchemy's own psycopg dialect
(``create_connect_args``), the code that turns the URL into connect
arguments when an engine connects. tests/ha/test_pg_failover.py connects with
these URLs to a real primary and standby.
"""

from __future__ import annotations

import pytest
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

from cellgate.apidb.endpoints import database_endpoints
from cellgate.errors import InvalidURL
from cellgate.urls import DatabaseURL, StoredURL, mask_url, redact

PW = "S3cr@t:pw/x"
Q = "S3cr%40t%3Apw%2Fx"
BASE = f"postgresql+psycopg://app:{Q}@/api"


def connect_args(raw: str) -> dict[str, object]:
    url = DatabaseURL.parse(raw).sqlalchemy_url
    _cargs, cparams = PGDialect_psycopg().create_connect_args(url)
    return dict(cparams)


@pytest.mark.parametrize(
    ("query", "hosts", "libpq"),
    [
        (
            "host=10.0.0.1:5433&host=10.0.0.2:5434&target_session_attrs=read-write",
            (("10.0.0.1", 5433), ("10.0.0.2", 5434)),
            {
                "host": "10.0.0.1,10.0.0.2",
                "port": "5433,5434",
                "target_session_attrs": "read-write",
            },
        ),
        (
            "host=db1.example,db2.example&port=5432,5433&load_balance_hosts=random",
            (("db1.example", 5432), ("db2.example", 5433)),
            {
                "host": "db1.example,db2.example",
                "port": "5432,5433",
                "load_balance_hosts": "random",
            },
        ),
        (
            "host=db1&host=db2&target_session_attrs=primary",
            (("db1", None), ("db2", None)),
            {"host": "db1,db2", "target_session_attrs": "primary"},
        ),
        ("host=db1:6432", (("db1", 6432),), {"host": "db1", "port": "6432"}),
    ],
)
def test_multi_host_urls_are_accepted_and_rendered_for_psycopg(
    query: str, hosts: tuple[tuple[str, int | None], ...], libpq: dict[str, str]
) -> None:
    raw = f"{BASE}?{query}"
    url = DatabaseURL.parse(raw)
    assert url.hosts == hosts
    args = connect_args(raw)
    for key, value in libpq.items():
        assert str(args[key]) == value, key
    assert args["password"] == PW and args["dbname"] == "api" and args["user"] == "app"


def test_target_session_attrs_on_a_single_host_url() -> None:
    raw = f"postgresql://app:{Q}@db1:5433/api?target_session_attrs=read-write"
    assert DatabaseURL.parse(raw).hosts == (("db1", 5433),)
    assert connect_args(raw)["target_session_attrs"] == "read-write"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (f"postgresql://app:{Q}@db0/api?host=db1", "both before the database name and as host="),
        (f"{BASE}?host=db1:1&port=2", "port= cannot be combined with host=name:port"),
        (f"{BASE}?host=a,b&port=1", "2 hosts but 1 ports"),
        (f"{BASE}?host=a,b&port=1,2,3", "2 hosts but 3 ports"),
        (f"{BASE}?host=a&port=1&port=2", "port is given more than once"),
        (f"{BASE}?host=[::1]:5432", "IPv6"),
        (f"{BASE}?host=/run/postgresql", "not a host name or IPv4 address"),
        (f"{BASE}?host=db1:0", "port of host 'db1' is not 1-65535"),
        (f"{BASE}?host=db1:99999", "port of host 'db1' is not 1-65535"),
        (f"{BASE}?host=db1:5x", "port of host 'db1' is not 1-65535"),
        (f"{BASE}?host=db1,,db2", "empty host name"),
        (f"{BASE}?host=db1&target_session_attrs=rw", "target_session_attrs must be one of"),
        (
            f"{BASE}?host=a&target_session_attrs=any&target_session_attrs=primary",
            "target_session_attrs is given more than once",
        ),
        (f"{BASE}?host=db1&load_balance_hosts=yes", "load_balance_hosts must be one of"),
        (f"{BASE}?port=5432", "port= in the query needs host="),
        (f"{BASE}?host=", "no host given"),
        (f"mysql+pymysql://app:{Q}@/api?host=db1", "no host given"),
    ],
)
def test_bad_multi_host_urls_are_refused_in_one_line_without_the_password(
    raw: str, reason: str
) -> None:
    with pytest.raises(InvalidURL) as caught:
        DatabaseURL.parse(raw)
    message = str(caught.value)
    assert reason in message
    assert "\n" not in message
    for form in (PW, Q, "S3cr"):
        assert form not in message


@pytest.mark.parametrize(
    "raw",
    [
        f"{BASE}?host=10.0.0.1:5433&host=10.0.0.2:5434&target_session_attrs=read-write",
        f"postgresql+psycopg://app@/api?host=a,b&port=1,2&password={Q}",
        f"postgresql+psycopg://app@/api?host=a:1&host=b:2&load_balance_hosts=random&pass%77ord={Q}",
    ],
)
def test_multi_host_urls_are_masked_everywhere(raw: str) -> None:
    url = DatabaseURL.parse(raw)
    shown = [
        str(url),
        repr(url),
        url.render(),
        mask_url(raw),
        str(StoredURL(raw)),
        repr(StoredURL(raw)),
        redact(f"cannot reach {raw}: refused"),
    ]
    for text in shown:
        for form in (PW, Q, "S3cr"):
            assert form not in text, text
    assert url.render(hide_password=False) != url.render()


def test_multi_host_endpoints_are_every_server() -> None:
    a = DatabaseURL.parse(f"{BASE}?host=DB1:5433&host=db2:5434")
    b = DatabaseURL.parse("postgresql://other@db2:5434/api")
    c = DatabaseURL.parse("postgresql://other@db2:5434/another")
    assert set(database_endpoints(a)) & set(database_endpoints(b))
    assert not set(database_endpoints(a)) & set(database_endpoints(c))
    assert [str(e) for e in database_endpoints(a)] == ["db1:5433/api", "db2:5434/api"]
