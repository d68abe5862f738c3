"""Whole-transaction retry on real conflicts (``cellgate.sql.retry``).

The deadlocks are real: two writers on two connections lock cell A then B
and cell B then A, held apart by a barrier until each holds its first row,
so the server must refuse one of them (MariaDB 1213, PostgreSQL 40P01). On
SQLite, where ``BEGIN IMMEDIATE`` serialises writers and no deadlock can
form, the conflict is a held write lock that outlasts the busy timeout
(``SQLITE_BUSY``). Each test checks what was written afterwards, audit rows
included: a retried transaction leaves its effects once, an exhausted one
not at all.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cellgate import App, RequestContext, admin
from cellgate.apidb import updates
from cellgate.apidb.mappings import CellMapping, cell_history
from cellgate.apidb.schema import CellMappingRow, InstanceMappingRow
from cellgate.celldb import queries
from cellgate.config import template_defaults
from cellgate.errors import BackendError, TransactionConflict
from cellgate.service.http import create_api
from cellgate.service.runner import HttpServer
from cellgate.sql.retry import RetryPolicy, RetryStats, conflict_code, run_transaction
from tests.functional.conftest import Deployment, make_deployment
from tests.support import Server

ADMIN = {"Authorization": "Bearer admin-tok"}

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture
def net_deployment(network_server: Server, tmp_path: Path) -> Deployment:
    """A deployment on MariaDB, then PostgreSQL: where two writers can deadlock."""
    return make_deployment(network_server, tmp_path)


def _app(deployment: Deployment, attempts: int | None = None) -> App:
    if attempts is not None:
        text = deployment.config_file.read_text(encoding="utf-8")
        text = text.replace(
            "[api_database]\n", f"[api_database]\nconflict_attempts = {attempts}\n"
        )
        deployment.config_file.write_text(text, encoding="utf-8")
    return App(deployment.settings())


def _two_cells(deployment: Deployment, app: App) -> None:
    deployment.run("api-db", "sync")
    for name in ("a", "b"):
        admin.create_cell(
            app,
            name=name,
            transport_url=f"memory://{name}",
            database_connection=deployment.new_cell_url().render(hide_password=False),
        )


def _crossed_writers(
    app: App,
) -> tuple[dict[str, BaseException | None], dict[str, int]]:
    """Writer x updates a then b, writer y b then a; both hold their first row first.

    Returns each writer's error (None: committed) and how many attempts each made.
    """
    defaults = template_defaults(app.settings)
    barrier = threading.Barrier(2, timeout=20)
    errors: dict[str, BaseException | None] = {}
    attempts = {"x": 0, "y": 0}

    def writer(
        actor: str, first: str, second: str, change: Callable[[str], dict[str, Any]]
    ) -> None:
        def transaction(session: Session) -> None:
            attempts[actor] += 1
            # Every mapping write also bumps one shared generation row, so the
            # rows are locked first: x holds a, y holds b, then each asks for
            # the generation row and the other's cell, and the locks cross.
            session.execute(
                select(CellMappingRow.id).where(CellMappingRow.name == first).with_for_update()
            )
            if attempts[actor] == 1:
                barrier.wait()
            for ident in (first, second):
                updates.update_cell(
                    session, ident, defaults=defaults, actor=actor, **change(ident)
                )

        try:
            app.api.write(transaction)
            errors[actor] = None
        except BaseException as exc:  # reported to the test, not lost in the thread
            errors[actor] = exc

    threads = [
        threading.Thread(
            target=writer, args=("x", "a", "b", lambda c: {"transport_url": f"memory://x-{c}"})
        ),
        threading.Thread(target=writer, args=("y", "b", "a", lambda c: {"disabled": True})),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return errors, attempts


def _actors(app: App, ident: str) -> list[str]:
    with app.api.session() as session:
        return sorted(e.actor for e in cell_history(session, ident) if e.action == "update")


def _cell(app: App, ident: str) -> CellMapping:
    return admin.show_cell(app, ident)


def test_a_real_deadlock_is_retried_whole(net_deployment: Deployment) -> None:
    with _app(net_deployment) as app:
        _two_cells(net_deployment, app)
        errors, attempts = _crossed_writers(app)
        assert errors == {"x": None, "y": None}
        # One of them was the deadlock victim and ran again from the start
        # (more than once if its retry met the survivor's locks again).
        assert min(attempts.values()) == 1 and max(attempts.values()) >= 2
        assert app.retries.total_retries == sum(attempts.values()) - 2
        assert {k[0] for k in app.retries.retries()} == {"api"}
        assert {k[1] for k in app.retries.retries()} <= {"1213", "1205", "40P01"}
        for ident in ("a", "b"):
            cell = _cell(app, ident)
            assert str(cell.transport_url) == f"memory://x-{ident}" and cell.disabled
            assert _actors(app, ident) == ["x", "y"]  # once each: no double audit entry


def test_exhausted_attempts_leave_nothing_half_written(net_deployment: Deployment) -> None:
    with _app(net_deployment, attempts=1) as app:
        _two_cells(net_deployment, app)
        errors, attempts = _crossed_writers(app)
        assert attempts == {"x": 1, "y": 1}
        failed = [actor for actor, error in errors.items() if error is not None]
        assert len(failed) == 1, errors
        (loser,) = failed
        error = errors[loser]
        assert isinstance(error, TransactionConflict)
        assert error.attempts == 1 and error.code in {"1213", "40P01"}
        assert "nothing was written" in str(error)
        assert app.retries.exhausted_counts() == {"api": 1}
        winner = "y" if loser == "x" else "x"
        for ident in ("a", "b"):
            cell = _cell(app, ident)
            # Only the winner's change, on both rows: the loser's first row rolled back too.
            assert (str(cell.transport_url) == f"memory://x-{ident}") is (winner == "x")
            assert cell.disabled is (winner == "y")
            assert _actors(app, ident) == [winner]


# --- SQLite: a held write lock ----------------------------------------------------


def _sqlite_deployment(deployment: Deployment, attempts: int) -> None:
    text = deployment.config_file.read_text(encoding="utf-8")
    text = text.replace(
        "[api_database]\n",
        f"[api_database]\nconflict_attempts = {attempts}\nquery_timeout = 0.2\n",
    )
    text += "[api]\nauth_tokens = admin-tok:admin:admin+member\n"
    deployment.config_file.write_text(text, encoding="utf-8")


def _lock(deployment: Deployment) -> sqlite3.Connection:
    holder = sqlite3.connect(str(deployment.api_url.database), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_sqlite_busy_is_retried_until_the_lock_is_released(
    sqlite_deployment: Deployment,
) -> None:
    _sqlite_deployment(sqlite_deployment, attempts=4)
    with App(sqlite_deployment.settings()) as app:
        _two_cells(sqlite_deployment, app)
        holder = _lock(sqlite_deployment)
        seen: list[tuple[int, str]] = []

        def release(retry: int, code: str) -> None:
            seen.append((retry, code))
            holder.commit()  # the writer's next attempt gets the lock

        defaults = template_defaults(app.settings)
        app.api.write(
            lambda s: updates.update_cell(s, "a", disabled=True, defaults=defaults, actor="w"),
            on_retry=release,
        )
        holder.close()
        assert seen == [(1, "SQLITE_BUSY")]
        assert _cell(app, "a").disabled and _actors(app, "a") == ["w"]


def test_service_answers_503_with_retry_after_and_writes_nothing(
    sqlite_deployment: Deployment,
) -> None:
    """An instance create whose mapping write is refused every time: 503, no row anywhere."""
    _sqlite_deployment(sqlite_deployment, attempts=2)
    with App(sqlite_deployment.settings()) as app:
        _two_cells(sqlite_deployment, app)
        sqlite_deployment.run("db", "sync", "--all-cells")
        server = HttpServer(create_api(app, app.settings.service), "127.0.0.1", 0).start()
        ctx = RequestContext(request_id="req-warm", roles=("admin",))
        app.cells.list(ctx)  # mappings cached: the create reads nothing from the API DB
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                holder = _lock(sqlite_deployment)
                try:
                    response = client.post("/v1/instances", json={"name": "vm"}, headers=ADMIN)
                finally:
                    holder.rollback()
                    holder.close()
                metrics = client.get("/metrics").text
        finally:
            server.stop()
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
        body = response.json()["error"]
        assert body["code"] == "TransactionConflict"
        assert "nothing was written" in body["message"]
        assert (
            'cellgate_db_conflict_retries_total{code="SQLITE_BUSY",database="api"} 1.0' in metrics
        )
        assert 'cellgate_db_conflict_exhausted_total{database="api"} 1.0' in metrics
        assert admin.verify_cells(app, all_cells=True)  # the cells still answer
        for name in ("a", "b"):
            with app.target_cell(ctx, name) as cctx, app.db.session(cctx) as session:
                assert queries.count_instances(session) == 0
        with app.api.session() as session:
            assert session.scalar(select(func.count()).select_from(InstanceMappingRow)) == 0


# --- the classifier and the loop, on real driver errors ------------------------------


def test_conflict_code_reads_driver_codes_not_messages(tmp_path: Path) -> None:
    import psycopg.errors
    import pymysql.err

    assert conflict_code(pymysql.err.OperationalError(1213, "anything")) == "1213"
    assert conflict_code(pymysql.err.OperationalError(1205, "anything")) == "1205"
    assert conflict_code(pymysql.err.OperationalError(2013, "Deadlock found")) is None
    assert conflict_code(psycopg.errors.DeadlockDetected("x")) == "40P01"
    assert conflict_code(psycopg.errors.SerializationFailure("x")) == "40001"
    assert conflict_code(psycopg.errors.UniqueViolation("deadlock detected")) is None
    assert conflict_code(ValueError("Deadlock found when trying to get lock")) is None
    # Found through the chain (translate_errors wraps a 1205 into BackendTimeout) ...
    try:
        try:
            raise pymysql.err.OperationalError(1205, "Lock wait timeout exceeded")
        except pymysql.err.OperationalError as exc:
            raise BackendError(component="c", reason="r") from exc
    except BackendError as wrapped:
        assert conflict_code(wrapped) == "1205"
    # ... but never through a conflict whose attempts are spent.
    try:
        try:
            raise pymysql.err.OperationalError(1213, "x")
        except pymysql.err.OperationalError as exc:
            raise TransactionConflict(component="c", attempts=8, code="1213") from exc
    except TransactionConflict as spent:
        assert conflict_code(spent) is None
    # A real SQLITE_BUSY from sqlite3 itself.
    path = tmp_path / "busy.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, timeout=0.01, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError) as busy:
        other.execute("BEGIN IMMEDIATE")
    assert conflict_code(busy.value) == "SQLITE_BUSY"
    holder.close()
    other.close()


def test_full_jitter_is_bounded_and_grows() -> None:
    import random

    policy = RetryPolicy(attempts=8, base=0.02, cap=1.0)
    rng = random.Random(7)
    for retry in range(1, 12):
        ceiling = min(1.0, 0.02 * 2 ** (retry - 1))
        draws = [policy.delay(retry, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling / 2  # spread over the whole range, not fixed


def test_non_conflict_errors_are_not_retried() -> None:
    stats = RetryStats()
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_transaction(attempt, component="c", database="api", policy=RetryPolicy(), stats=stats)
    assert calls == [1] and stats.total_retries == 0
