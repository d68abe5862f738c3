"""Online data migrations of a cell database: the functions ``db migrate-data`` runs.

A schema revision adds a column; code of the new release writes it; rows
written by older code still lack it, and readers fall back until they are
filled. Each function here fills at most ``limit`` such rows in the caller's
transaction and returns ``(found, done)``: rows it found needing the
migration (at most ``limit``) and rows it migrated. It selects what still
needs migrating every time, so a run stopped anywhere resumes where it stopped,
and running one twice changes nothing the second time. The registry and the
batching are in :mod:`cellgate.admin.datamigrations`.

Pure functions on a ``Session``: no engine, no loop.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cellgate.celldb.schema import ServiceRow
from cellgate.celldb.versions import rpc_version_for


def service_rpc_versions(session: Session, limit: int) -> tuple[int, int]:
    """Fill ``services.rpc_version`` (cell_0004) from ``services.version`` in older rows.

    Rows written by workers of releases before cell_0004 have it NULL; the
    version caps derive it from ``version`` meanwhile (the table in
    :mod:`cellgate.celldb.versions`), which the next release may drop.
    """
    rows = session.scalars(
        select(ServiceRow)
        .where(ServiceRow.rpc_version.is_(None))
        .order_by(ServiceRow.id)
        .limit(limit)
    ).all()
    for row in rows:
        row.rpc_version = rpc_version_for(row.version)
    session.flush()
    return len(rows), len(rows)
