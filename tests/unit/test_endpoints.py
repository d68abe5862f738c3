"""Endpoint normalisation: spellings of one place compare equal, different places don't."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellgate.apidb.endpoints import database_endpoint, transport_endpoints
from cellgate.urls import DatabaseURL, TransportURL


def db(raw: str) -> object:
    return database_endpoint(DatabaseURL.parse(raw))


def mq(raw: str) -> set[object]:
    return set(transport_endpoints(TransportURL.parse(raw)))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("mysql+pymysql://u:p@127.0.0.1/c1", "mysql+pymysql://v:q@LOCALHOST:3306/c1?charset=utf8"),
        ("postgresql+psycopg://u:p@db.example/c1", "postgresql://x@DB.example:5432/c1"),
        ("postgresql+psycopg://u:p@[::1]:5432/c1", "postgresql+psycopg://u@127.0.0.1/c1"),
    ],
)
def test_spellings_of_one_database_are_one_endpoint(a: str, b: str) -> None:
    assert db(a) == db(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("mysql+pymysql://u:p@127.0.0.1/c1", "mysql+pymysql://u:p@127.0.0.1/c2"),
        ("mysql+pymysql://u:p@127.0.0.1/c1", "mysql+pymysql://u:p@127.0.0.1:3307/c1"),
        ("mysql+pymysql://u:p@127.0.0.1/c1", "postgresql+psycopg://u:p@127.0.0.1/c1"),
        ("mysql+pymysql://u:p@127.0.0.2/c1", "mysql+pymysql://u:p@127.0.0.1/c1"),
    ],
)
def test_different_databases_are_different_endpoints(a: str, b: str) -> None:
    assert db(a) != db(b)


def test_sqlite_paths_compare_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert db(f"sqlite:///{tmp_path}/c.sqlite") == db("sqlite:///./sub/../c.sqlite")
    assert db("sqlite://") is None  # in-memory: never shared


def test_rabbit_and_amqp_with_implied_port_and_vhost_are_one_broker() -> None:
    a = mq("rabbit://u:p@127.0.0.1:5672/cell1")
    b = mq("amqp://other:pw@Localhost/cell1")
    assert a == b
    assert mq("rabbit://u:p@127.0.0.1/") == mq("rabbit://u:p@127.0.0.1")  # "/" is the default


def test_a_multi_host_url_shares_with_any_of_its_brokers() -> None:
    multi = mq("rabbit://u:p@h1:5672,u:p@h2:5673/v")
    assert multi & mq("rabbit://x:y@h2:5673/v")
    assert not multi & mq("rabbit://x:y@h2:5673/other")


def test_memory_names_and_none() -> None:
    assert mq("memory://a") == mq("memory://a")
    assert mq("memory://a") != mq("memory://b")
    assert mq("none:///") == set()


def test_endpoint_text_holds_no_password() -> None:
    (endpoint,) = mq("rabbit://u:s3cret-pw@127.0.0.1:5672/v")
    assert "s3cret" not in str(endpoint) and "s3cret" not in repr(endpoint)
    assert "s3cret" not in str(db("mysql+pymysql://u:s3cret-pw@127.0.0.1/c1"))
