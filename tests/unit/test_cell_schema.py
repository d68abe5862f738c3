"""``PER_INSTANCE`` names every table whose rows belong to an instance.

Moves copy and archives move exactly the tables listed there, so a new
per-instance table that is left out would be lost by a move or orphaned by
an archive. A table belongs to an instance when it has a foreign key to
``instances``; this test finds every such table in the cell schema.
"""

from __future__ import annotations

from cellgate.celldb.schema import PER_INSTANCE, CellBase, InstanceRow


def test_every_table_with_a_key_to_instances_is_declared() -> None:
    referencing = {
        table.name
        for table in CellBase.metadata.sorted_tables
        if any(fk.column.table.name == "instances" for fk in table.foreign_keys)
    }
    declared = {model.__tablename__ for model, _ in PER_INSTANCE}
    assert referencing | {"instances"} == declared


def test_the_parent_comes_first_and_every_column_exists() -> None:
    assert PER_INSTANCE[0] == (InstanceRow, "uuid")
    for model, column in PER_INSTANCE:
        assert column in model.__table__.c
