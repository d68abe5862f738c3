"""cellgate renders the templates nova-manage stored exactly as Nova's own code does.

cell2's URLs in the fixture are templates (the transport one with Nova's
indexed multi-host fields); Nova's ``CellMapping.format_db_url`` /
``format_mq_url`` render them, in the Nova virtualenv, against the same
defaults, and :func:`cellgate.urls.expand` must give the same strings.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from sqlalchemy import text

from cellgate.nova.urls import translate_database_url
from cellgate.urls import DatabaseURL, TransportURL, expand
from tests.nova.deployment import Deployment
from tests.nova.novaenv import nova_manage

pytestmark = [pytest.mark.nova, pytest.mark.timeout(1200)]

# Run by the Nova virtualenv's python: Nova's own rendering, on the given defaults.
_NOVA_RENDER = """
import json, sys
import nova.conf
import oslo_messaging
from nova.objects.cell_mapping import CellMapping as cm
args = json.load(sys.stdin)
CONF = nova.conf.CONF
oslo_messaging.get_rpc_transport(CONF, url="fake:/")  # registers [DEFAULT] transport_url
CONF([], project="nova")
CONF.set_override("connection", args["db"], group="database")
CONF.set_override("transport_url", args["mq"])
print(json.dumps([cm.format_db_url(args["db_t"]), cm.format_mq_url(args["mq_t"])]))
"""


def test_cell2_templates_render_as_novas_own_code_renders_them(nova_base: Deployment) -> None:
    with nova_base.api.connect() as conn:
        db_t, mq_t = conn.execute(
            text(
                "SELECT database_connection, transport_url FROM cell_mappings WHERE name = 'cell2'"
            )
        ).one()
    python = nova_manage().parent / "python"
    done = subprocess.run(
        [str(python), "-c", _NOVA_RENDER],
        input=json.dumps(
            {
                "db": nova_base.default_database,
                "mq": nova_base.default_transport,
                "db_t": db_t,
                "mq_t": mq_t,
            }
        ),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    nova_db, nova_mq = json.loads(done.stdout.strip().splitlines()[-1])
    ours_db = expand(db_t, nova_base.default_database, option="[database] connection")
    ours_mq = expand(mq_t, nova_base.default_transport, option="[DEFAULT] transport_url")
    assert (ours_db, ours_mq) == (nova_db, nova_mq)
    assert (
        nova_db == nova_base.cells["cell2"].nova_url.replace("?charset=utf8", "") or "?" in nova_db
    )
    # And cellgate can use the results: two broker hosts, the driver it ships.
    assert len(TransportURL.parse(ours_mq).hosts) == 2
    assert DatabaseURL.parse(translate_database_url(ours_db)).database
