"""The fixture itself: what nova-manage built is a Nova deployment, and copies are separate."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.nova.conftest import CopyFactory
from tests.nova.deployment import API_HEAD, CELL0_UUID, Deployment

pytestmark = [pytest.mark.nova, pytest.mark.timeout(1200)]


def test_nova_manage_built_the_api_database(nova_base: Deployment) -> None:
    with nova_base.api.connect() as conn:
        assert (
            conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == API_HEAD
        )
        cells = conn.execute(
            text("SELECT uuid, name, transport_url, database_connection FROM cell_mappings")
        ).all()
    by_name = {name: (u, mq, db) for u, name, mq, db in cells}
    assert set(by_name) == {"cell0", "cell1", "cell2"}
    assert by_name["cell0"][0] == CELL0_UUID and by_name["cell0"][1] == "none:///"
    assert "," in by_name["cell1"][1]  # the multi-host transport URL
    assert "{hostname1}" in by_name["cell2"][1] and "{scheme}" in by_name["cell2"][2]


def test_every_cell_database_is_at_novas_cell_head(nova_base: Deployment) -> None:
    heads = set()
    for name in ("cell0", "cell1", "cell2"):
        with nova_base.cells[name].connect() as conn:
            heads.add(conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one())
    assert len(heads) == 1


def test_a_copy_is_the_tests_own(nova_base: Deployment, nova_copy: CopyFactory) -> None:
    before = nova_base.checksum()
    mine = nova_copy(cells=("cell1",))
    copied = mine.checksum()
    # The same rows, but for the copy's cell1 mapping, which names the copy of cell1.
    assert {k: v for k, v in copied.items() if k != "api.cell_mappings"} == {
        k: v for k, v in before.items() if k != "api.cell_mappings"
    }
    mine.api.execute("DELETE FROM host_mappings")
    mine.cells["cell1"].execute("DELETE FROM services")
    assert nova_base.checksum() == before
    assert mine.checksum() != before
    with mine.api.connect() as conn:
        url = conn.execute(
            text("SELECT database_connection FROM cell_mappings WHERE name = 'cell1'")
        ).scalar_one()
    assert mine.cells["cell1"].name in url and nova_base.cells["cell1"].name not in url
