"""cellgate: route each database query and RPC call to the right cell.

This module is the public API; everything importable from here is supported,
everything else may change. ``tests/unit/test_public_api.py`` keeps
``__all__`` complete and sorted.

``cellgate.admin`` is the operator API (one function per CLI verb, an ``App``
first); the rest are the library's classes, errors and functions.

Names are imported on first use (PEP 562 ``__getattr__``), not when the
package is: ``cellgate --version`` and ``cellgate config sample`` import this
package and must not pay for SQLAlchemy's ORM, Alembic and the RPC stack. The
``TYPE_CHECKING`` block gives type checkers the same names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cellgate import admin as admin
    from cellgate.apidb.mappings import CELL0_UUID as CELL0_UUID
    from cellgate.apidb.mappings import CellMapping as CellMapping
    from cellgate.app import App as App
    from cellgate.config import Settings as Settings
    from cellgate.config import load_settings as load_settings
    from cellgate.context import RequestContext as RequestContext
    from cellgate.errors import BackendError as BackendError
    from cellgate.errors import BackendTimeout as BackendTimeout
    from cellgate.errors import BackendUnavailable as BackendUnavailable
    from cellgate.errors import CellgateError as CellgateError
    from cellgate.errors import CellInUse as CellInUse
    from cellgate.errors import CellNotFound as CellNotFound
    from cellgate.errors import CellTimeout as CellTimeout
    from cellgate.errors import CellUnavailable as CellUnavailable
    from cellgate.errors import ConfigError as ConfigError
    from cellgate.errors import DuplicateCell as DuplicateCell
    from cellgate.errors import EndpointInUse as EndpointInUse
    from cellgate.errors import HostNotMapped as HostNotMapped
    from cellgate.errors import InvalidURL as InvalidURL
    from cellgate.errors import MappingError as MappingError
    from cellgate.errors import MigrationError as MigrationError
    from cellgate.errors import NoTransport as NoTransport
    from cellgate.errors import RemoteError as RemoteError
    from cellgate.errors import RoutingError as RoutingError
    from cellgate.errors import RPCError as RPCError
    from cellgate.errors import RPCTimeout as RPCTimeout
    from cellgate.errors import SchemaMismatch as SchemaMismatch
    from cellgate.errors import UnsupportedVersion as UnsupportedVersion
    from cellgate.errors import UntargetedContext as UntargetedContext
    from cellgate.keyset import SortKey as SortKey
    from cellgate.migrations.runner import MigrationLine as MigrationLine
    from cellgate.results import CellResult as CellResult
    from cellgate.results import Failed as Failed
    from cellgate.results import Ok as Ok
    from cellgate.results import TimedOut as TimedOut
    from cellgate.routing.listing import Listing as Listing
    from cellgate.rpc.client import RPCClient as RPCClient
    from cellgate.rpc.server import RPCServer as RPCServer
    from cellgate.rpc.target import Target as Target
    from cellgate.urls import DatabaseURL as DatabaseURL
    from cellgate.urls import TransportURL as TransportURL

#: Public name -> the module it lives in (``admin`` is a module of its own).
_EXPORTS: dict[str, str] = {
    "admin": "cellgate.admin",
    "CELL0_UUID": "cellgate.apidb.mappings",
    "CellMapping": "cellgate.apidb.mappings",
    "App": "cellgate.app",
    "Settings": "cellgate.config",
    "load_settings": "cellgate.config",
    "RequestContext": "cellgate.context",
    "BackendError": "cellgate.errors",
    "BackendTimeout": "cellgate.errors",
    "BackendUnavailable": "cellgate.errors",
    "CellgateError": "cellgate.errors",
    "CellInUse": "cellgate.errors",
    "CellNotFound": "cellgate.errors",
    "CellTimeout": "cellgate.errors",
    "CellUnavailable": "cellgate.errors",
    "ConfigError": "cellgate.errors",
    "DuplicateCell": "cellgate.errors",
    "EndpointInUse": "cellgate.errors",
    "HostNotMapped": "cellgate.errors",
    "InvalidURL": "cellgate.errors",
    "MappingError": "cellgate.errors",
    "MigrationError": "cellgate.errors",
    "NoTransport": "cellgate.errors",
    "RemoteError": "cellgate.errors",
    "RoutingError": "cellgate.errors",
    "RPCError": "cellgate.errors",
    "RPCTimeout": "cellgate.errors",
    "SchemaMismatch": "cellgate.errors",
    "UnsupportedVersion": "cellgate.errors",
    "UntargetedContext": "cellgate.errors",
    "MigrationLine": "cellgate.migrations.runner",
    "CellResult": "cellgate.results",
    "Failed": "cellgate.results",
    "Ok": "cellgate.results",
    "TimedOut": "cellgate.results",
    "SortKey": "cellgate.keyset",
    "Listing": "cellgate.routing.listing",
    "RPCClient": "cellgate.rpc.client",
    "RPCServer": "cellgate.rpc.server",
    "Target": "cellgate.rpc.target",
    "DatabaseURL": "cellgate.urls",
    "TransportURL": "cellgate.urls",
}

__all__ = [
    "App",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "CELL0_UUID",
    "CellInUse",
    "CellMapping",
    "CellNotFound",
    "CellResult",
    "CellTimeout",
    "CellUnavailable",
    "CellgateError",
    "ConfigError",
    "DatabaseURL",
    "DuplicateCell",
    "EndpointInUse",
    "Failed",
    "HostNotMapped",
    "InvalidURL",
    "Listing",
    "MappingError",
    "MigrationError",
    "MigrationLine",
    "NoTransport",
    "Ok",
    "RPCClient",
    "RPCError",
    "RPCServer",
    "RPCTimeout",
    "RemoteError",
    "RequestContext",
    "RoutingError",
    "SchemaMismatch",
    "Settings",
    "SortKey",
    "Target",
    "TimedOut",
    "TransportURL",
    "UnsupportedVersion",
    "UntargetedContext",
    "admin",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cellgate' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    value = loaded if module == f"cellgate.{name}" else getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
