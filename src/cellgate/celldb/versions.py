"""The worker's versions: the service version it records, the RPC API it serves.

A worker writes both into its heartbeat row (``services.version``,
``services.rpc_version``); the API caps each call to a cell at the oldest RPC
version that cell's live workers serve (``cellgate.admin.versions``), so an
upgraded API keeps talking to workers not yet upgraded, and ``upgrade
check`` refuses workers older than the previous release.

History of the compute RPC API (``cellgate.service.compute``):

- ``1.0``: ``build``, ``act``, ``delete``, ``ping``;
- ``1.1``: ``ping`` also reports the worker's service version.

Pure constants and functions: no engine, no I/O.
"""

from __future__ import annotations

from typing import Final

#: The service version this release's worker records in its heartbeat.
SERVICE_VERSION: Final = 1
#: The oldest service version this release still talks to (the previous
#: release's workers, which did not record one: 0).
MIN_SERVICE_VERSION: Final = 0
#: The compute RPC API version each service version serves.
RPC_VERSIONS: Final = {0: "1.0", 1: "1.1"}
#: The RPC version this release's API asks for when nothing caps it.
RPC_VERSION: Final = RPC_VERSIONS[SERVICE_VERSION]
#: The oldest RPC version: what a cell is capped at when nothing is known of it.
MIN_RPC_VERSION: Final = RPC_VERSIONS[MIN_SERVICE_VERSION]


def rpc_version_for(service_version: int) -> str:
    """The RPC version a worker of ``service_version`` serves (a newer one: at least ours)."""
    if service_version in RPC_VERSIONS:
        return RPC_VERSIONS[service_version]
    return RPC_VERSION if service_version > SERVICE_VERSION else MIN_RPC_VERSION


def parse(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    return int(major), int(minor)


def oldest(versions: list[str]) -> str | None:
    """The lowest of ``MAJOR.MINOR`` versions, compared as numbers (``1.10`` > ``1.9``)."""
    return min(versions, key=parse) if versions else None


def capped(wanted: str, cap: str | None) -> str:
    """``wanted``, or ``cap`` if that is older (the same major: a minor bump is compatible)."""
    if cap is None:
        return wanted
    return cap if parse(cap) < parse(wanted) else wanted
