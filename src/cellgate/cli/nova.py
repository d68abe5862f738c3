"""``cellgate nova``: read an OpenStack Nova deployment, never write it.

Nova operators run cells v2 today; these commands point cellgate read-only at
a Nova ``nova_api`` database: ``inspect`` describes it, ``verify`` checks the
whole deployment in one pass, ``import`` copies its mappings into cellgate's
API database. Each subcommand lives in its own module and is loaded when it
runs (:class:`~cellgate.cli.lazy.LazyGroup`); the work is in
:mod:`cellgate.admin` (this group only wraps it).
"""

from __future__ import annotations

import click

from cellgate.cli.lazy import LazyGroup

SUBCOMMANDS = {
    "inspect": "cellgate.cli.nova_inspect:inspect",
    "verify": "cellgate.cli.nova_verify:verify",
    "import": "cellgate.cli.nova_import:import_",
}


@click.group(cls=LazyGroup, lazy_commands=SUBCOMMANDS)
def nova() -> None:
    """Inspect, verify and import an OpenStack Nova deployment (read-only on Nova)."""
