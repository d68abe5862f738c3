"""Two cells on one backend, instances seeded in them, and ways to look at both.

Shared by the move, drain and crash tests. Instances are written the way the
service writes them (``queries.add_instance`` plus a mapping), each with two
``instance_actions`` rows, so a move has children to copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from cellgate import App, RequestContext
from cellgate.apidb import instances as mapping_db
from cellgate.apidb import moves
from cellgate.apidb.mappings import CellMapping
from cellgate.apidb.moves import MoveJob
from cellgate.apidb.schema import MoveJobRow
from cellgate.celldb import queries, rows
from cellgate.celldb.schema import InstanceActionRow, InstanceRow
from tests.functional.conftest import Deployment

CTX = RequestContext(request_id="req-move-test")


@dataclass
class TwoCells:
    d: Deployment
    names: tuple[str, str] = ("cell1", "cell2")
    seeded: list[str] = field(default_factory=list)
    #: Makes a transport URL per cell (default: an in-process memory:// broker).
    transport: Callable[[str], str] = field(default=lambda name: f"memory://{name}")

    def setup(self) -> TwoCells:
        self.d.run("api-db", "sync")
        for name in self.names:
            url = self.d.new_cell_url().render(hide_password=False)
            self.d.run(
                "cell",
                "create",
                "--name",
                name,
                "--transport-url",
                self.transport(name),
                "--database-connection",
                url,
            )
        self.d.run("db", "sync", "--all-cells")
        return self

    @contextmanager
    def app(self) -> Iterator[App]:
        with App(self.d.settings()) as app:
            yield app

    def cell(self, app: App, name: str) -> CellMapping:
        return app.cells.get(CTX, name)

    def seed(self, count: int, cell: str = "cell1", project: str = "demo") -> list[str]:
        made = []
        with self.app() as app:
            mapping = self.cell(app, cell)
            for i in range(count):
                uuid = f"00000000-0000-4000-8000-{len(self.seeded) + i:012d}"
                with app.db.session(CTX.for_cell(mapping)) as s:
                    queries.add_instance(
                        s, uuid=uuid, name=f"vm{i}", project_id=project, user_id="u"
                    )
                    queries.set_state(s, uuid, vm_state="active", host=f"{cell}-host")
                    for action in ("create", "start"):
                        s.add(InstanceActionRow(instance_uuid=uuid, action=action, deleted=0))
                    with app.db.api_session() as api:
                        mapping_db.add_mapping(
                            api, instance_uuid=uuid, cell=mapping, project_id=project, user_id="u"
                        )
                made.append(uuid)
        self.seeded.extend(made)
        return made

    def rows_of(self, app: App, cell: str, uuid: str) -> rows.InstanceRows:
        with app.db.session(CTX.for_cell(self.cell(app, cell))) as s:
            return rows.read_rows(s, uuid)

    def visibility(self, app: App, cell: str, uuid: str) -> bool | None:
        with app.db.session(CTX.for_cell(self.cell(app, cell))) as s:
            return rows.visibility(s, uuid)

    def mapped_to(self, app: App, uuid: str) -> str | None:
        with app.db.api_session() as s:
            found = mapping_db.get_mapping(s, uuid)
        if found is None or found.cell_uuid is None:
            return None
        return next(n for n in self.names if self.cell(app, n).uuid == found.cell_uuid)

    def count(self, app: App, cell: str) -> dict[str, int]:
        with app.db.session(CTX.for_cell(self.cell(app, cell))) as s:
            return {
                "instances": len(s.scalars(select(InstanceRow.id)).all()),
                "instance_actions": len(s.scalars(select(InstanceActionRow.id)).all()),
            }

    def job_of(self, app: App, uuid: str) -> MoveJob | None:
        with app.db.api_session() as s:
            found = moves.unfinished_job(s, uuid)
            if found is not None:
                return found
            job_id = s.scalars(
                select(MoveJobRow.job_id)
                .where(MoveJobRow.instance_uuid == uuid)
                .order_by(MoveJobRow.id.desc())
            ).first()
            return moves.get_job(s, job_id) if job_id else None

    def assert_one_visible(self, app: App, uuid: str) -> str:
        """The invariant: the mapping names one cell, and that cell's row is visible.

        Any other cell's row is hidden or gone, except for the instant of a
        flip (both visible, identical), which the service's listing folds
        into one; returns the mapping's cell.
        """
        where = self.mapped_to(app, uuid)
        assert where is not None, f"{uuid} is mapped to no cell"
        assert self.visibility(app, where, uuid) is True, f"{uuid}: {where}'s row is not visible"
        return where

    def assert_intact(self, app: App, uuid: str, original: rows.InstanceRows) -> str:
        """The instance exists once, in its mapping's cell, with exactly its original rows."""
        where = self.assert_one_visible(app, uuid)
        assert rows.digest(self.rows_of(app, where, uuid)) == rows.digest(original)
        for other in self.names:
            if other != where:
                assert not any(self.rows_of(app, other, uuid).values()), (uuid, other)
        return where


def snapshot(cells: TwoCells, uuid: str, cell: str = "cell1") -> dict[str, Any]:
    with cells.app() as app:
        return cells.rows_of(app, cell, uuid)
