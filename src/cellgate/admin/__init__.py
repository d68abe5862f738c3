"""``cellgate.admin``: the operator tasks, one plain function per CLI verb.

Like Alembic's ``command`` module, every function takes the composition root
first (here an :class:`~cellgate.App`) and returns a result object with
``to_dict()``; none prints, none knows click. The ``cellgate`` CLI is a thin
shell over this package (parse, call, render, exit code), and a program or a
test can do what an operator does without running the CLI::

    from cellgate import App, admin, load_settings

    with App(load_settings(path)) as app:
        admin.sync_api(app)
        admin.map_cell0(app)
        admin.create_cell(app, name="cell1", transport_url=..., database_connection=...)
        admin.sync_cells(app, all_cells=True)

Every task reaches a database through ``app``: the API database through
``app.api``, cell databases through ``app.db.engine_for`` (the App's engine
registry), so timeouts, error translation and masking are the same as on the
request path. Failures are :class:`~cellgate.errors.CellgateError` subclasses;
runs over many cells report a result per cell instead of stopping.

=====================  ===================================
CLI verb               function
=====================  ===================================
cell create            :func:`create_cell`
cell list              :func:`read_cells` (:func:`list_cells`: strict)
cell show              :func:`show_cell`
cell update            :func:`update_cell`, :func:`preview_update` (``--dry-run``)
cell delete            :func:`delete_cell`
cell history           :func:`cell_history`
cell map-cell0         :func:`map_cell0`
cell verify            :func:`verify_cells`
cell rotate-key        :func:`rotate_key`
cell encrypt/decrypt   :func:`encrypt_cells`, :func:`decrypt_cells`
cell generate-key      :func:`generate_key`
api-db sync/version    :func:`sync_api`, :func:`api_version`
db sync/version        :func:`sync_cells`, :func:`cell_versions`
host discover          :func:`discover_hosts`
host list/delete       :func:`list_hosts`, :func:`delete_host`
instance move          :func:`move_instance`, :func:`resume_move`, :func:`rollback_move`
cell drain             :func:`drain_cell`
quickstart             :func:`quickstart`
db archive-deleted     :func:`archive_deleted`
db purge               :func:`purge_deleted`
db migrate-data        :func:`migrate_data`
upgrade check          :func:`upgrade_check`
nova inspect           :func:`inspect_nova` (reads Nova only)
nova import            :func:`import_nova`
nova verify            :func:`verify_nova`
=====================  ===================================
"""

from __future__ import annotations

from cellgate.admin import archive as archive
from cellgate.admin import datamigrations as datamigrations
from cellgate.admin.archive import archive_deleted as archive_deleted
from cellgate.admin.archive import purge_deleted as purge_deleted
from cellgate.admin.cells import Cell0Mapping as Cell0Mapping
from cellgate.admin.cells import CellListing as CellListing
from cellgate.admin.cells import DeletedCell as DeletedCell
from cellgate.admin.cells import cell_history as cell_history
from cellgate.admin.cells import create_cell as create_cell
from cellgate.admin.cells import delete_cell as delete_cell
from cellgate.admin.cells import list_cells as list_cells
from cellgate.admin.cells import map_cell0 as map_cell0
from cellgate.admin.cells import preview_update as preview_update
from cellgate.admin.cells import read_cells as read_cells
from cellgate.admin.cells import show_cell as show_cell
from cellgate.admin.cells import update_cell as update_cell
from cellgate.admin.credentials import ResealReport as ResealReport
from cellgate.admin.credentials import decrypt_cells as decrypt_cells
from cellgate.admin.credentials import encrypt_cells as encrypt_cells
from cellgate.admin.credentials import generate_key as generate_key
from cellgate.admin.credentials import reseal_cells as reseal_cells
from cellgate.admin.credentials import rotate_key as rotate_key
from cellgate.admin.datamigrations import MigrateDataReport as MigrateDataReport
from cellgate.admin.datamigrations import migrate_data as migrate_data
from cellgate.admin.drain import DrainReport as DrainReport
from cellgate.admin.drain import drain_cell as drain_cell
from cellgate.admin.hosts import DeletedHost as DeletedHost
from cellgate.admin.hosts import HostDiscovery as HostDiscovery
from cellgate.admin.hosts import delete_host as delete_host
from cellgate.admin.hosts import discover_hosts as discover_hosts
from cellgate.admin.hosts import list_hosts as list_hosts
from cellgate.admin.migrate import CellDatabase as CellDatabase
from cellgate.admin.migrate import DatabaseOutcome as DatabaseOutcome
from cellgate.admin.migrate import VersionInfo as VersionInfo
from cellgate.admin.migrate import api_version as api_version
from cellgate.admin.migrate import cell_versions as cell_versions
from cellgate.admin.migrate import sync_api as sync_api
from cellgate.admin.migrate import sync_cells as sync_cells
from cellgate.admin.move import move_instance as move_instance
from cellgate.admin.move import resume_move as resume_move
from cellgate.admin.move import rollback_move as rollback_move
from cellgate.admin.move import show_move as show_move
from cellgate.admin.nova_import import NovaImportReport as NovaImportReport
from cellgate.admin.nova_import import import_nova as import_nova
from cellgate.admin.nova_inspect import NovaInspection as NovaInspection
from cellgate.admin.nova_inspect import inspect_nova as inspect_nova
from cellgate.admin.nova_verify import NovaVerifyReport as NovaVerifyReport
from cellgate.admin.nova_verify import verify_nova as verify_nova
from cellgate.admin.quickstart import quickstart as quickstart
from cellgate.admin.upgrade import UpgradeReport as UpgradeReport
from cellgate.admin.upgrade import upgrade_check as upgrade_check
from cellgate.admin.verify import CellReport as CellReport
from cellgate.admin.verify import Check as Check
from cellgate.admin.verify import verify_cells as verify_cells

__all__ = [
    "Cell0Mapping",
    "CellDatabase",
    "CellListing",
    "CellReport",
    "Check",
    "DatabaseOutcome",
    "DeletedCell",
    "DeletedHost",
    "DrainReport",
    "HostDiscovery",
    "MigrateDataReport",
    "NovaImportReport",
    "NovaInspection",
    "NovaVerifyReport",
    "ResealReport",
    "UpgradeReport",
    "VersionInfo",
    "api_version",
    "archive",
    "archive_deleted",
    "cell_history",
    "cell_versions",
    "create_cell",
    "datamigrations",
    "decrypt_cells",
    "delete_cell",
    "delete_host",
    "discover_hosts",
    "drain_cell",
    "encrypt_cells",
    "generate_key",
    "import_nova",
    "inspect_nova",
    "list_cells",
    "list_hosts",
    "map_cell0",
    "migrate_data",
    "move_instance",
    "preview_update",
    "purge_deleted",
    "quickstart",
    "read_cells",
    "reseal_cells",
    "resume_move",
    "rollback_move",
    "rotate_key",
    "show_cell",
    "show_move",
    "sync_api",
    "sync_cells",
    "update_cell",
    "upgrade_check",
    "verify_cells",
    "verify_nova",
]
