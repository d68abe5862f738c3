"""The body of both lines' ``env.py``: online mode only, on a given connection.

cellgate never runs migrations from a URL in an ini file (that would put a
password into a config string); the runner hands ``env.py`` a live
connection through ``Config.attributes``.
"""

from __future__ import annotations

from typing import Any

from cellgate.errors import Hint, MigrationError


def run_migrations(context: Any) -> None:
    config = context.config
    connection = config.attributes.get("connection")
    line = config.attributes.get("line")
    if connection is None or line is None:
        raise MigrationError(
            "cellgate migrations run only through cellgate",
            hint=Hint.USE_SYNC_COMMANDS,
        )
    tables = set(line.metadata.tables)

    def include_name(name: str | None, type_: str, _parent: object) -> bool:
        # Ignore the other line's tables when both share one database.
        return type_ != "table" or name in tables

    context.configure(
        connection=connection,
        target_metadata=line.metadata,
        version_table=line.version_table,
        include_name=include_name,
        transaction_per_migration=True,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
