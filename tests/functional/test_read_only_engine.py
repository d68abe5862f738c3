"""A read-only engine: the server itself refuses writes, on every backend.

``make_engine(read_only=True)`` is how cellgate reads databases it does not
own (a Nova deployment's): inspect and verify must never write, and this is
what makes a bug that tried fail instead of write.
"""

from __future__ import annotations

import pytest
import sqlalchemy
from sqlalchemy import text

from cellgate.sql.engines import make_engine
from tests.support import Server


def _seed(server: Server) -> sqlalchemy.engine.Engine:
    url = server.new_database()
    writer = make_engine(url, connect_timeout=5, query_timeout=5, create_missing=True)
    with writer.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v VARCHAR(10))"))
        conn.execute(text("INSERT INTO t (id, v) VALUES (1, 'a')"))
    writer.dispose()
    return make_engine(url, connect_timeout=5, query_timeout=5, read_only=True)


def test_reads_work_and_writes_are_refused(server: Server) -> None:
    engine = _seed(server)
    try:
        with engine.begin() as conn:
            assert conn.execute(text("SELECT v FROM t")).scalar_one() == "a"
        for statement in ("INSERT INTO t (id, v) VALUES (2, 'b')", "DELETE FROM t"):
            with pytest.raises(sqlalchemy.exc.DBAPIError), engine.begin() as conn:
                conn.execute(text(statement))
        with engine.begin() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
    finally:
        engine.dispose()


def test_read_only_cannot_create_a_database(server: Server) -> None:
    with pytest.raises(ValueError, match="read-only"):
        make_engine(
            server.new_database(),
            connect_timeout=5,
            query_timeout=5,
            read_only=True,
            create_missing=True,
        )
