"""Run either migration line against an engine, without an ini file.

The connection travels to ``env.py`` through ``Config.attributes``, so no URL
(and no password) is ever written into an Alembic config string. Each line has
its own script directory and its own version table, so both can share one
SQLite file in an all-in-one setup without confusing each other.

Every upgrade and downgrade runs under the line's migration lock on that
database (:mod:`cellgate.migrations.lock`) and reads the current revision
only once it holds the lock, so concurrent runs take turns and the later ones
find the work done.

An upgrade applies one revision at a time and commits each, so it can stop
cleanly between two: set the ``stop`` event (the CLI does on SIGINT/SIGTERM)
and it raises :class:`~cellgate.errors.MigrationInterrupted` at the next
revision boundary, naming the revision reached. A run killed *inside* a
revision resumes too: on MariaDB/MySQL, whose DDL is not transactional, every
revision's operations are guarded (:mod:`cellgate.migrations.guarded`), so
the next run completes the half-applied revision.
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import sqlalchemy.exc
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, MetaData
from sqlalchemy.engine import Engine

from cellgate.apidb.schema import ApiBase
from cellgate.celldb.schema import CellBase
from cellgate.errors import Hint, MigrationError, MigrationInterrupted
from cellgate.migrations.lock import DEFAULT_LOCK_TIMEOUT, migration_lock
from cellgate.sql.engines import describe_db_error, is_backend_failure
from cellgate.sql.retry import RetryPolicy, conflict_code

T = TypeVar("T")

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent


class MigrationLine(enum.Enum):
    """Which schema a migration belongs to."""

    API = "api"
    CELL = "cell"

    @property
    def script_location(self) -> str:
        return str(_HERE / self.value)

    @property
    def version_table(self) -> str:
        return f"alembic_version_{self.value}"

    @property
    def metadata(self) -> MetaData:
        return ApiBase.metadata if self is MigrationLine.API else CellBase.metadata


def alembic_config(line: MigrationLine, connection: Connection | None = None) -> Config:
    """An in-memory Alembic config for ``line``, optionally bound to a connection."""
    config = Config()
    config.set_main_option("script_location", line.script_location)
    config.attributes["line"] = line
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head(line: MigrationLine) -> str:
    """The newest revision of ``line`` shipped with this code."""
    revision = ScriptDirectory.from_config(alembic_config(line)).get_current_head()
    assert revision is not None, f"migration line {line.value} has no revisions"
    return revision


def revisions(line: MigrationLine) -> list[str]:
    """Every revision of ``line``, oldest first."""
    script = ScriptDirectory.from_config(alembic_config(line))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def current(engine: Engine, line: MigrationLine) -> str | None:
    """The revision ``line`` is at in this database; ``None`` if never migrated."""
    with engine.connect() as conn:
        return current_on(conn, line)


def current_on(conn: Connection, line: MigrationLine) -> str | None:
    ctx = MigrationContext.configure(conn, opts={"version_table": line.version_table})
    return ctx.get_current_revision()


@dataclass(frozen=True)
class Applied:
    """What one locked run did: the revision found under the lock, and the one reached."""

    before: str | None
    reached: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.reached


def upgrade(
    engine: Engine,
    line: MigrationLine,
    revision: str = "head",
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    component: str | None = None,
    stop: threading.Event | None = None,
) -> str | None:
    """Upgrade to ``revision``; return the revision reached.

    Each revision commits on its own, so a failure leaves the database at the
    last revision that completed (reported in the :class:`MigrationError`).
    Waits up to ``lock_timeout`` seconds for another run's lock
    (:class:`~cellgate.errors.MigrationLocked`); ``stop`` ends the run at the
    next revision boundary (see the module docstring).
    """
    return apply(
        engine,
        line,
        "upgrade",
        revision,
        lock_timeout=lock_timeout,
        component=component,
        stop=stop,
    ).reached


def downgrade(
    engine: Engine,
    line: MigrationLine,
    revision: str,
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    component: str | None = None,
) -> str | None:
    """Downgrade to ``revision`` (``"base"`` for an empty schema)."""
    return apply(
        engine, line, "downgrade", revision, lock_timeout=lock_timeout, component=component
    ).reached


def apply(
    engine: Engine,
    line: MigrationLine,
    verb: Literal["upgrade", "downgrade"],
    revision: str,
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    component: str | None = None,
    stop: threading.Event | None = None,
) -> Applied:
    """Run ``verb`` to ``revision`` under the migration lock; say what changed.

    ``component`` labels the database in errors (a masked URL by default).
    An upgrade goes one revision at a time and checks ``stop`` after each.
    """
    _validate_revision(line, revision)
    label = component or f"database {engine.url.render_as_string(hide_password=True)}"
    with (
        engine.connect() as conn,
        migration_lock(conn, line.value, timeout=lock_timeout, component=label) as held,
    ):
        # Read only now: a run we waited for may have done the work already.
        before = _again(conn, label, lambda: current_on(conn, line))
        conn.rollback()
        if before == _resolve(line, revision):
            log.info("%s: already at %s, nothing to do", label, before or "base")
            return Applied(before, before)
        if verb == "upgrade":
            for step in _steps_up(line, before, revision):
                _again(conn, label, held.renew)  # a lease (Galera) must outlast the revision
                _again(conn, label, functools.partial(_run, conn, line, verb, step, label))
                if stop is not None and stop.is_set() and step != _resolve(line, revision):
                    raise MigrationInterrupted(
                        component=label, line=line.value, reached=step, target=head(line)
                    )
        else:
            _run(conn, line, verb, revision, label)
        reached = current_on(conn, line)
        conn.rollback()
    return Applied(before, reached)


def check(engine: Engine, line: MigrationLine) -> None:
    """Raise ``AutogenerateDiffsDetected`` if the models and migrations differ."""
    with engine.connect() as conn:
        command.check(alembic_config(line, conn))


def drift(engine: Engine, line: MigrationLine) -> list[str]:
    """How the live schema differs from the models (empty: none); reads only.

    :func:`check` for code that may run on several threads at once: Alembic's
    ``command`` API goes through the module-global ``alembic.context`` proxy
    (and prints), this compares directly on one connection.
    """
    tables = set(line.metadata.tables)

    def include_name(name: str | None, type_: str, _parent: object) -> bool:
        return type_ != "table" or name in tables

    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "version_table": line.version_table,
                "include_name": include_name,
                "compare_type": True,
                "target_metadata": line.metadata,
            },
        )
        return [repr(diff) for diff in compare_metadata(ctx, line.metadata)]


def _run(conn: Connection, line: MigrationLine, verb: str, revision: str, label: str) -> None:
    config = alembic_config(line, conn)
    try:
        getattr(command, verb)(config, revision)
    except CommandError as exc:
        raise MigrationError(f"{label}: {line.value} line: {exc}") from None
    except (sqlalchemy.exc.SQLAlchemyError, MigrationError) as exc:  # driver, ops or guards
        if isinstance(exc, sqlalchemy.exc.SQLAlchemyError) and is_backend_failure(exc):
            raise  # the server went away: the caller translates this
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and conflict_code(exc) is not None:
            raise  # refused as a conflict (Galera): _again applies the revision again
        conn.rollback()
        reached = current_on(conn, line)
        conn.rollback()
        failed = _failed_revision(line, verb, reached)
        raise MigrationError(
            f"{label}: revision {failed} of the {line.value} line failed ({verb}): "
            f"{describe_db_error(exc)}; "
            f"the database is left at revision {reached or 'none (empty)'}",
            hint=_repair_hint(conn),
            hint_args={"revision": failed},
        ) from exc
    conn.commit()


def _again(conn: Connection, label: str, step: Callable[[], T]) -> T:
    """Call ``step`` again when the server refuses it as a conflict (``cellgate.sql.retry``).

    On Galera a statement of a sync can be aborted by a write replicated from
    another node (1213), even under the migration lock: the lock row keeps
    other *syncs* out, not every other writer. Every step here may run twice:
    reads, renewing the lease, and revisions, whose operations are guarded
    (``cellgate.migrations.guarded``). Bounded like any write's retries.
    """
    policy = RetryPolicy()
    for attempt in range(1, policy.attempts + 1):
        try:
            return step()
        except sqlalchemy.exc.DBAPIError as exc:
            code = conflict_code(exc)
            if code is None or attempt == policy.attempts:
                raise
            conn.rollback()
            log.warning("%s: refused as a conflict (%s); running the step again", label, code)
            time.sleep(policy.delay(attempt))
    raise AssertionError("unreachable: a policy has at least one attempt")


def _steps_up(line: MigrationLine, before: str | None, revision: str) -> list[str]:
    """The revisions an upgrade from ``before`` to ``revision`` applies, in order."""
    known = revisions(line)
    target = _resolve(line, revision)
    start = known.index(before) + 1 if before in known else 0
    end = known.index(target) + 1 if target in known else len(known)
    return known[start:end]


def _resolve(line: MigrationLine, revision: str) -> str | None:
    """The revision ``revision`` names: ``head`` is this code's head, ``base`` is none."""
    if revision in {"head", "heads"}:
        return head(line)
    return None if revision == "base" else revision


def _failed_revision(line: MigrationLine, verb: str, reached: str | None) -> str:
    """The revision that was being applied when a run stopped at ``reached``."""
    if verb == "downgrade":
        return reached or "base"
    known = revisions(line)
    step = known.index(reached) + 1 if reached in known else 0
    return known[step] if step < len(known) else "head"


def _repair_hint(conn: Connection) -> Hint:
    if conn.dialect.name in ("mysql", "mariadb"):
        # DDL commits as it runs here: nothing of the failed revision was rolled back.
        return Hint.REPAIR_MYSQL_REVISION
    return Hint.FIX_AND_RERUN


def _validate_revision(line: MigrationLine, revision: str) -> None:
    if revision in {"head", "base", "heads"}:
        return
    known = revisions(line)
    if revision not in known:
        raise MigrationError(
            f"unknown {line.value} revision {revision!r}",
            hint=Hint.KNOWN_REVISIONS,
            hint_args={"revisions": ", ".join(known)},
        )
