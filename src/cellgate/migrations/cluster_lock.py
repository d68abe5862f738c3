"""The migration lock on a Galera cluster: a lease row, because ``GET_LOCK`` is per node.

On MariaDB Galera, ``GET_LOCK`` is granted by the node the session is on and
never replicated, so two ``sync`` runs through two nodes both get "the" lock
and race (issue 15: "Table 'cell_mapping' already exists" half-way). What
every node agrees on is a replicated write: Galera certifies conflicting
write sets in one total order and refuses every one but the first (error
1213 at COMMIT). So on a cluster (``wsrep_on = ON``) the lock is a row in a
small table of its own, ``cellgate_migration_lock`` (one row per line),
taken by a committed write:

- *taking* it inserts the row, or takes over a row whose holder is gone,
  with a compare-and-set on the previous owner, and commits; if the COMMIT
  succeeds, certification has refused any concurrent taker, so the lock is
  ours. A refused COMMIT (1213) or a duplicate key means someone else got it:
  the caller polls again;
- *holding* it is a lease: the row carries an expiry (:data:`LEASE_SECONDS`
  ahead, in the server's clock), renewed before every revision
  (:meth:`Lease.renew`);
- *releasing* it deletes the row (owner checked).

A holder that crashed does not block for ever: its row expires after the
lease; and a holder that was on *this* node is known gone at once if its
connection id is no longer in this node's process list (as a killed process's
is), the same promptness ``GET_LOCK`` gives on a single server. The table is
created with ``CREATE TABLE IF NOT EXISTS`` before the first attempt (Galera
replicates DDL in total order, so concurrent creates through two nodes are
harmless); it is not part of either migration line, whose comparisons ignore
tables they do not declare.

A single MariaDB or MySQL server keeps ``GET_LOCK`` (``cellgate.migrations.lock``):
no extra table, and its release on disconnect is immediate.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Final

import sqlalchemy.exc
from sqlalchemy import Connection, text

from cellgate.sql.retry import conflict_code

log = logging.getLogger(__name__)

TABLE: Final = "cellgate_migration_lock"
#: Seconds a lease lasts unless renewed; a crashed holder on another node blocks this long.
LEASE_SECONDS: Final = 120

_CREATE = text(
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    " line VARCHAR(64) NOT NULL PRIMARY KEY,"
    " owner VARCHAR(128) NOT NULL,"
    " node VARCHAR(255) NOT NULL,"
    " connection_id BIGINT NOT NULL,"
    " expires_at DATETIME(6) NOT NULL"
    ") ENGINE=InnoDB"
)
_EXPIRY = f"UTC_TIMESTAMP(6) + INTERVAL {LEASE_SECONDS} SECOND"


def is_cluster(conn: Connection) -> bool:
    """True on a Galera node (``wsrep_on = ON``); leaves no transaction open."""
    row = conn.execute(text("SHOW VARIABLES LIKE 'wsrep_on'")).first()
    conn.commit()
    return row is not None and str(row[1]).upper() == "ON"


@dataclass
class Lease:
    """Our row in :data:`TABLE`: who we are, so that only we renew or release it."""

    conn: Connection
    line: str
    owner: str
    node: str
    connection_id: int

    @classmethod
    def prepare(cls, conn: Connection, line: str) -> Lease:
        conn.execute(_CREATE)
        node, connection_id = conn.execute(
            text("SELECT CONCAT(@@hostname, ':', @@port), CONNECTION_ID()")
        ).one()
        conn.commit()
        owner = f"{node}/{connection_id}/{secrets.token_hex(4)}"
        return cls(conn, line, owner, str(node), int(connection_id))

    def try_take(self) -> bool:
        """One attempt; True if the lease is ours (committed and certified)."""
        conn = self.conn
        try:
            row = conn.execute(
                text(
                    f"SELECT owner, node, connection_id, expires_at < UTC_TIMESTAMP(6)"
                    f" FROM {TABLE} WHERE line = :line"
                ),
                {"line": self.line},
            ).first()
            if row is None:
                conn.execute(
                    text(
                        f"INSERT INTO {TABLE} (line, owner, node, connection_id, expires_at)"
                        f" VALUES (:line, :owner, :node, :cid, {_EXPIRY})"
                    ),
                    self._params(),
                )
            elif row[3] or self._holder_gone(str(row[1]), int(row[2])):
                log.warning(
                    "migration lock of the %s line: taking over from %s (%s)",
                    self.line,
                    row[0],
                    "lease expired" if row[3] else "its connection is gone",
                )
                taken = conn.execute(
                    text(
                        f"UPDATE {TABLE} SET owner = :owner, node = :node,"
                        f" connection_id = :cid, expires_at = {_EXPIRY}"
                        " WHERE line = :line AND owner = :previous"
                    ),
                    {**self._params(), "previous": row[0]},
                )
                if taken.rowcount != 1:
                    conn.rollback()
                    return False
            else:
                conn.rollback()
                return False
            conn.commit()
        except sqlalchemy.exc.IntegrityError:  # inserted by another session first
            conn.rollback()
            return False
        except sqlalchemy.exc.DBAPIError as exc:
            if conflict_code(exc) is None:
                raise
            conn.rollback()  # refused by certification: another node took it first
            return False
        return True

    def renew(self) -> None:
        """Push the expiry :data:`LEASE_SECONDS` ahead again (before each revision)."""
        self.conn.execute(
            text(
                f"UPDATE {TABLE} SET expires_at = {_EXPIRY} WHERE line = :line AND owner = :owner"
            ),
            {"line": self.line, "owner": self.owner},
        )
        self.conn.commit()

    def release(self) -> None:
        if self.conn.in_transaction():  # a failed migration's transaction
            self.conn.rollback()
        self.conn.execute(
            text(f"DELETE FROM {TABLE} WHERE line = :line AND owner = :owner"),
            {"line": self.line, "owner": self.owner},
        )
        self.conn.commit()

    def _params(self) -> dict[str, object]:
        return {
            "line": self.line,
            "owner": self.owner,
            "node": self.node,
            "cid": self.connection_id,
        }

    def _holder_gone(self, node: str, connection_id: int) -> bool:
        """A holder on this node whose connection this node no longer has."""
        if node != self.node:
            return False  # another node's connections are not visible here
        alive = self.conn.execute(
            text("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = :cid"),
            {"cid": connection_id},
        ).scalar()
        return not alive
