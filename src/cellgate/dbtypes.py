"""Column types and conventions shared by the API and cell schemas.

Both migration lines must produce identical DDL on SQLite, MariaDB and
PostgreSQL, so constraint names come from one naming convention rather than
from each backend's own default, and "long text" is spelled once.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from sqlalchemy import DateTime, MetaData, Text
from sqlalchemy.dialects import mysql

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

#: TEXT everywhere, MEDIUMTEXT on MySQL/MariaDB (TEXT there stops at 64 KiB).
LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")

#: Timestamps are naive UTC, as in Nova; the column type is the same everywhere.
Timestamp = DateTime(timezone=False)


def new_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> dt.datetime:
    """Naive UTC now, the form stored in every timestamp column."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
