"""Instance operations as the API performs them: lookup, target, then DB or RPC.

The whole request path of the spec lives here:

- ``show``: instance mapping (API database) -> cell (mapping cache) ->
  ``target_cell`` -> that cell's database;
- ``create``: pick a cell, write the instance to the cell database *and* its
  mapping to the API database so that neither is left without the other,
  then cast ``build`` to that cell's workers, confirmed by the broker (if
  that fails or is not confirmed, both rows are removed again before the
  503); a build that still never happens is ended by the reconciler
  (``cellgate.service.reconcile``);
- ``delete`` / actions: RPC call to the cell's workers; refused with
  ``InstanceMoving`` (409) while a move job copies the instance's rows
  (``cellgate.admin.move``), and re-routed once when the cell named by a
  stale cached location no longer holds the instance (it moved);
- ``list``: scatter-gather over every enabled cell, merged and paged by
  ``(sort key, uuid)``; a cell that fails or misses the deadline is listed in
  ``down_cells`` and its instances appear as minimal records from the API
  database (Nova's microversion 2.69). Only a cellgate error or a timeout
  makes a cell "down": any other exception from the per-cell work is a bug
  here, raised so that the request is a 500 logged with its request id.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cellgate import deadline, keyset
from cellgate.admin.versions import VersionCaps
from cellgate.apidb import instances as mapping_db
from cellgate.apidb import moves
from cellgate.apidb.mappings import CellMapping, UnreadableCell, normalize_uuid
from cellgate.app import App
from cellgate.celldb import queries
from cellgate.config import ServiceSettings
from cellgate.context import RequestContext
from cellgate.errors import (
    BackendError,
    BackendTimeout,
    CellgateError,
    CellTimeout,
    CellUnreadable,
    DeleteUnconfirmed,
    InstanceMoving,
    InstanceNotFound,
    NoValidCell,
    RemoteError,
    RPCTimeout,
)
from cellgate.keyset import SortKey
from cellgate.results import Failed, Ok, raise_bugs
from cellgate.rpc.target import Target
from cellgate.service.compute import TOPIC
from cellgate.service.hints import rest_message
from cellgate.service.metrics import Metrics
from cellgate.urls import redact

log = logging.getLogger(__name__)

MAX_LIMIT = 1000


@dataclass(frozen=True)
class Page:
    instances: list[dict[str, Any]]
    down_cells: list[dict[str, Any]]
    next_marker: str | None


class InstanceService:
    def __init__(
        self,
        app: App,
        settings: ServiceSettings,
        metrics: Metrics,
        versions: VersionCaps | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        #: The RPC version each cell's calls go at (its oldest live worker's).
        self.versions = versions if versions is not None else VersionCaps(app)
        self._turn = itertools.count()

    def _target(self, cctx: RequestContext) -> Target:
        assert cctx.cell is not None
        return Target(TOPIC, version=self.versions.version_for(cctx.cell))

    # -- lookup ---------------------------------------------------------------
    def _locate(self, ctx: RequestContext, instance: str) -> tuple[RequestContext, str]:
        """The context targeted at the instance's cell, and the canonical uuid.

        Served from ``app.locator`` (a bounded LRU) after the first lookup.
        """
        canonical = normalize_uuid(instance)
        if canonical is None:
            raise InstanceNotFound(uuid=instance)
        location = self.app.locator.locate(canonical)
        if location is None or not (ctx.is_admin or location.project_id == ctx.project_id):
            raise InstanceNotFound(uuid=instance)
        with self.app.target_cell(ctx, location.cell_uuid) as cctx:
            return cctx, canonical

    def _fetch(
        self, cctx: RequestContext, instance: str, project: str | None, *, guarded: bool = True
    ) -> queries.Instance | None:
        """Read one instance from ``cctx.cell``, bounded by ``[api] cell_timeout``.

        A hung cell database answers within the API's deadline (CellTimeout,
        HTTP 503), not after the driver's much longer query timeout.
        ``guarded=False`` asks even if the cell's breaker is open (see
        ``CellDatabases.session``).
        """
        assert cctx.cell is not None
        cell = cctx.cell

        def read(c: RequestContext) -> queries.Instance | None:
            with self.app.db.session(c, guarded=guarded, read_only=True) as session:
                return queries.get_instance(session, instance, project_id=project)

        timeout = _bounded(cctx, self.settings.cell_timeout)
        result = self.app.scatter_gather(cctx, [cell], read, timeout=timeout)[cell.uuid]
        if isinstance(result, Ok):
            return result.value
        if isinstance(result, Failed):
            raise result.error
        if timeout < self.settings.cell_timeout:  # the request's deadline, not the cell's
            with deadline.scope(cctx.deadline):
                raise deadline.exceeded(f"cell {cell.label} answered")
        reason = f"no answer within {timeout:g}s"
        raise CellTimeout(component=f"cell {cell.label}", reason=reason, public_reason=reason)

    def _project(self, ctx: RequestContext) -> str | None:
        return None if ctx.is_admin else ctx.project_id

    # -- show ------------------------------------------------------------------
    def show(self, ctx: RequestContext, instance: str) -> dict[str, Any]:
        for _ in range(2):  # a second try after forgetting a stale location
            cctx, canonical = self._locate(ctx, instance)
            assert cctx.cell is not None
            with self.metrics.timed(cctx.cell, "show"):
                found = self._fetch(cctx, canonical, self._project(ctx))
            if found is not None:
                return {**found.to_dict(), "cell": cctx.cell.name}
            self.app.locator.forget(canonical)  # moved or deleted: look it up again once
        raise InstanceNotFound(uuid=instance)

    # -- create ----------------------------------------------------------------
    def create(self, ctx: RequestContext, name: str, cell: str | None) -> dict[str, Any]:
        if ctx.project_id is None:
            raise NoValidCell(reason="the request has no project")
        chosen = self._choose_cell(ctx, cell)
        cctx = ctx.for_cell(chosen)
        instance_uuid = str(uuidlib.uuid4())
        project_id = ctx.project_id
        with self.metrics.timed(chosen, "create"):
            # Whole again if the cell refuses its transaction as a conflict: an
            # attempt that raises has left neither the row nor the mapping.
            created = self.app.db.retrying(
                cctx, lambda: self._insert(cctx, instance_uuid, name, project_id)
            )
        try:
            # Confirmed: a 202 means the broker has the build in a queue a
            # worker consumes from, not just that it left this process.
            self.app.rpc.client(cctx, self._target(cctx)).prepare(confirm=True).cast(
                "build", instance=instance_uuid
            )
        except Exception as exc:  # the broker failed (503): both rows are committed
            self._undo_create(cctx, instance_uuid, exc)
            raise
        return {**created.to_dict(), "cell": chosen.name}

    def _insert(
        self, cctx: RequestContext, instance_uuid: str, name: str, project_id: str
    ) -> queries.Instance:
        """One attempt at writing the instance's row and its mapping; both or neither."""
        assert cctx.cell is not None
        cell = cctx.cell
        mapped = False
        try:
            with self.app.db.session(cctx) as cell_session:
                created = queries.add_instance(
                    cell_session,
                    uuid=instance_uuid,
                    name=name,
                    project_id=project_id,
                    user_id=cctx.user_id,
                )
                # The mapping commits first, inside the still-open cell transaction:
                # if it fails, the cell row rolls back with the exception; if the
                # cell commit then fails, _committed_anyway settles the mapping.
                self.app.db.api_write(
                    lambda api_session: mapping_db.add_mapping(
                        api_session,
                        instance_uuid=instance_uuid,
                        cell=cell,
                        project_id=project_id,
                        user_id=cctx.user_id,
                    )
                )
                mapped = True
                cell_session.commit()
        except Exception:
            if not mapped or not self._committed_anyway(cctx, instance_uuid):
                raise
        return created

    def _undo_create(self, cctx: RequestContext, instance_uuid: str, cause: Exception) -> None:
        """The build could not be sent: remove the committed row, then its mapping.

        The client is told the create failed, so the instance must not stay
        behind ``building`` with no build coming. The cell's row goes first:
        if the mapping's removal then fails, what is left is a mapping without
        an instance (show answers 404; lists show it only as a minimal record
        while its cell is down), never a listed instance that no mapping points
        at, which nobody could show or delete.

        If the row's removal fails, the mapping is kept (the row may still be
        there), and the row is marked ``error`` on a new connection, unless the
        cell timed out (asking again would only double the wait): a row the
        cell says is gone loses its mapping too; otherwise a warning names the
        instance's uuid, as when a COMMIT's outcome is unknown.
        """
        assert cctx.cell is not None
        with deadline.lifted():  # bounded by its own timeouts, not the request's
            self._undo_create_lifted(cctx.without_deadline(), instance_uuid, cause)

    def _undo_create_lifted(
        self, cctx: RequestContext, instance_uuid: str, cause: Exception
    ) -> None:
        assert cctx.cell is not None
        label = cctx.cell.label
        self.app.locator.forget(instance_uuid)
        try:
            self.app.db.write(
                cctx,
                lambda session: queries.hard_delete_instance(session, instance_uuid),
                guarded=False,
            )
        except CellgateError as exc:
            if isinstance(exc, BackendTimeout):
                log.warning(
                    "instance %s: its build could not be sent to cell %s (%s) and the cell "
                    "did not answer its removal (%s); it may be left building, with its mapping",
                    instance_uuid,
                    label,
                    cause,
                    exc,
                )
                return
            self._mark_error(cctx, instance_uuid, cause, exc)
            return
        self._unmap(instance_uuid, f"its build could not be sent to cell {label} ({cause})")

    def _mark_error(
        self, cctx: RequestContext, instance_uuid: str, cause: Exception, failure: Exception
    ) -> None:
        """Second try after a failed removal: the row goes to ``error`` (or is gone)."""
        assert cctx.cell is not None
        label = cctx.cell.label
        try:
            marked = self.app.db.write(
                cctx,
                lambda session: queries.set_state(session, instance_uuid, vm_state="error"),
                guarded=False,
            )
        except CellgateError as exc:
            log.warning(
                "instance %s: its build could not be sent to cell %s (%s), and neither "
                "removing (%s) nor marking it error (%s) worked; it may be left building, "
                "with its mapping",
                instance_uuid,
                label,
                cause,
                failure,
                exc,
            )
            return
        if marked is None:  # the removal did land; only its answer was lost
            self._unmap(instance_uuid, f"its build could not be sent to cell {label} ({cause})")
            return
        log.warning(
            "instance %s: its build could not be sent to cell %s (%s) and its row could not "
            "be removed (%s); marked error",
            instance_uuid,
            label,
            cause,
            failure,
        )

    def _unmap(self, instance_uuid: str, why: str) -> None:
        """Remove the mapping of an instance whose cell row is not there.

        A failure is logged with the uuid, not raised: the caller re-raises the
        error that made the create fail, which is the one the client should see.
        What is left, a mapping without an instance, answers 404 to show.
        """
        try:
            self.app.db.api_write(
                lambda api_session: mapping_db.remove_mapping(api_session, instance_uuid)
            )
        except CellgateError as exc:
            log.warning(
                "instance %s: %s; its mapping could not be removed (%s) and is left "
                "without an instance",
                instance_uuid,
                why,
                exc,
            )

    def _committed_anyway(self, cctx: RequestContext, instance_uuid: str) -> bool:
        """After the cell's COMMIT failed, its mapping committed: did the COMMIT land?

        A connection that dies after the server got the COMMIT but before its
        answer came back leaves the outcome unknown, and undoing the mapping
        then would leave a committed row that no mapping points at: listed,
        but impossible to show or delete. So the cell is asked again, on a new
        connection, within ``[api] cell_timeout``. If the row is there, the
        create has succeeded (True). Otherwise the mapping is removed (False).
        If the cell cannot answer, the mapping is removed too, as most failed
        COMMITs never landed; that case is logged with the instance's uuid.
        """
        assert cctx.cell is not None
        try:
            with deadline.lifted():  # bounded by cell_timeout, not the request's deadline
                found = self._fetch(cctx.without_deadline(), instance_uuid, None, guarded=False)
        except CellgateError as exc:
            log.warning(
                "instance %s: cell %s failed at COMMIT and cannot say whether the row "
                "was written (%s); removing its mapping",
                instance_uuid,
                cctx.cell.label,
                exc,
            )
            found = None
        if found is not None:
            log.warning(
                "instance %s: cell %s failed at COMMIT, but the row was written; created",
                instance_uuid,
                cctx.cell.label,
            )
            return True
        with deadline.lifted():
            self._unmap(instance_uuid, f"cell {cctx.cell.label} failed at COMMIT")
        return False

    def _choose_cell(self, ctx: RequestContext, ident: str | None) -> CellMapping:
        if ident is not None:
            cell = self.app.cells.get(ctx, ident)
            if cell.is_cell0 or cell.disabled:
                raise NoValidCell(reason=f"cell {cell.label!r} is disabled or is cell0")
            return cell
        cells = self.app.cells.list(ctx, include_cell0=False)
        if not cells:
            raise NoValidCell(reason="no enabled cell is mapped")
        if self.settings.scheduler_policy == "round_robin":
            return cells[next(self._turn) % len(cells)]

        def count(cctx: RequestContext) -> int:
            with self.app.db.session(cctx, read_only=True) as session:
                return queries.count_instances(session)

        results = self.app.scatter_gather(
            ctx, cells, count, timeout=_bounded(ctx, self.settings.cell_timeout)
        )
        raise_bugs(results.values())
        counts = {c.uuid: r.value for c in cells if isinstance(r := results[c.uuid], Ok)}
        if not counts:
            raise NoValidCell(reason="no enabled cell answered")
        by_uuid = {c.uuid: c for c in cells}
        return by_uuid[min(counts, key=lambda u: (counts[u], by_uuid[u].name or u))]

    # -- delete and actions ---------------------------------------------------------
    def _locate_to_change(self, ctx: RequestContext, instance: str) -> tuple[RequestContext, str]:
        """As :meth:`_locate`, refusing an instance whose rows a move is copying.

        A change made now could land on the source after its rows were
        copied; the move's verification would catch it and fail the move, so
        the client is told to wait instead (409), never given a wrong answer.
        ``show`` is not refused: the source answers until the mapping flips.
        """
        cctx, canonical = self._locate(ctx, instance)
        with self.app.db.api_session() as session:
            job = moves.unfinished_job(session, canonical)
        if job is not None and job.blocking:
            raise InstanceMoving(uuid=canonical, job=job.job_id, state=job.state)
        return cctx, canonical

    def delete(self, ctx: RequestContext, instance: str) -> None:
        """Delete the instance; the mapping goes only once its cell confirmed it.

        Idempotent: while the mapping is live, every delete asks the cell, and
        a cell that no longer has the instance live (an earlier delete whose
        answer was lost did it) confirms as well, so the request that removes
        the mapping answers 204; afterwards the instance is unknown (404), as
        for ``show``. A call that fails or gets no reply may still have been
        carried out: that is :class:`DeleteUnconfirmed` (503, the mapping
        left live, retrying safe), never a guess either way.
        """
        for attempt in range(2):  # a second try after a stale location (the instance moved)
            cctx, canonical = self._locate_to_change(ctx, instance)
            assert cctx.cell is not None
            try:
                with self.metrics.timed(cctx.cell, "delete"):
                    deleted = self._compute(cctx).call("delete", instance=canonical)
            except (BackendError, RPCTimeout) as exc:
                log.warning(
                    "request %s: instance %s: the delete is unconfirmed: %s",
                    ctx.request_id,
                    canonical,
                    redact(str(exc)),
                )
                raise DeleteUnconfirmed(
                    uuid=canonical, cell=cctx.cell.label, cause=redact(str(exc))
                ) from exc
            if deleted or attempt:
                break
            self.app.locator.forget(canonical)
        self.app.db.api_write(lambda session: mapping_db.queue_for_delete(session, canonical))
        self.app.locator.forget(canonical)

    def action(self, ctx: RequestContext, instance: str, action: str) -> dict[str, Any]:
        for attempt in range(2):  # a second try after a stale location (the instance moved)
            cctx, canonical = self._locate_to_change(ctx, instance)
            assert cctx.cell is not None
            try:
                with self.metrics.timed(cctx.cell, action):
                    result: dict[str, Any] = self._compute(cctx).call(
                        "act", instance=canonical, action=action
                    )
            except RemoteError as exc:
                if exc.exc_type != "UnknownInstance" or attempt:
                    raise
                self.app.locator.forget(canonical)
                continue
            return {**result, "cell": cctx.cell.name}
        raise InstanceNotFound(uuid=instance)  # pragma: no cover - the loop returns or raises

    def _compute(self, cctx: RequestContext) -> Any:
        timeout = _bounded(cctx, min(self.app.settings.rpc.response_timeout, 30.0))
        if timeout <= 0:
            with deadline.scope(cctx.deadline):
                raise deadline.exceeded("the call to the cell's workers")
        return self.app.rpc.client(cctx, self._target(cctx)).prepare(timeout=timeout)

    # -- list -------------------------------------------------------------------
    def page(
        self, ctx: RequestContext, *, limit: int, marker: str | None, sort: Sequence[SortKey]
    ) -> Page:
        """One page sorted by ``sort`` (then uuid) across cells; see the module docstring."""
        keys = queries.with_tiebreak(sort)
        project = self._project(ctx)
        after = self._marker_values(ctx, marker, keys) if marker else None
        cells = self.app.cells.list(ctx, include_cell0=False, include_disabled=True)

        def page_of(
            cctx: RequestContext, size: int, values: Sequence[Any] | None
        ) -> list[queries.Instance]:
            with self.app.db.session(cctx) as session:
                return queries.list_instances(
                    session, project_id=project, keys=keys, limit=size, after=values
                )

        listing = self.app.list_across_cells(
            ctx,
            page_of,
            values=lambda i: i.sort_values(keys),
            sort=keys,
            limit=limit,
            after=after,
            cells=cells,
            prune_to_project=project,
            timeout=_bounded(ctx, self.settings.cell_timeout),
        )
        raise_bugs(listing.down.values())  # a 500 for this request, not a down cell
        down: list[CellMapping | UnreadableCell] = [c for c in cells if c.uuid in listing.down]
        # A mapping that does not decrypt is a down cell too: its instances are
        # listed from their mappings, as for any cell that cannot be asked.
        unreadable = [c for c in self.app.cells.unreadable(ctx) if not c.is_cell0]
        reasons = {c.uuid: _reason(listing.down[c.uuid], ctx) for c in down}
        reasons.update(
            {
                c.uuid: CellUnreadable(cell=c.label, reason=c.reason).public_message
                for c in unreadable
            }
        )
        down += unreadable
        for cell in cells:
            if cell.uuid in listing.asked:
                self.metrics.cell_up(cell, cell.uuid not in listing.down)
        rows = [
            (keyset.sort_key(keys, item.values), {**item.row.to_dict(), "cell": item.cell.name})
            for item in listing.items
        ]
        rows.extend(self._minimal_records(down, project, keys, after))
        rows.sort(key=lambda r: r[0])
        # One row per uuid: while a move flips an instance, its copy and its
        # source are both visible for the moment between their two commits.
        page: list[dict[str, Any]] = []
        seen: set[str] = set()
        for _, record in rows:
            if len(page) == limit:
                break
            if record["uuid"] not in seen:
                seen.add(record["uuid"])
                page.append(record)
        next_marker = page[-1]["uuid"] if len(page) == limit else None
        down_cells = [{"uuid": c.uuid, "name": c.name, "reason": reasons[c.uuid]} for c in down]
        return Page(page, down_cells, next_marker)

    def _minimal_records(
        self,
        down: Sequence[CellMapping | UnreadableCell],
        project: str | None,
        keys: Sequence[SortKey],
        after: Sequence[Any] | None,
    ) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        if not down:
            return []
        with self.app.db.api_session() as session:
            mappings = mapping_db.mappings_in_cells(
                session, [c.uuid for c in down], project_id=project
            )
        names = {c.uuid: c.name for c in down}
        boundary = keyset.sort_key(keys, after) if after is not None else None
        out = []
        for m in mappings:
            key = keyset.sort_key(keys, _minimal_values(m, keys))
            if boundary is None or key > boundary:
                out.append((key, {**m.minimal(), "cell": names.get(m.cell_uuid or "")}))
        return out

    def _marker_values(
        self, ctx: RequestContext, marker: str, keys: Sequence[SortKey]
    ) -> tuple[Any, ...]:
        """The marker's sort values; from its mapping if its cell is down.

        A page may end on a minimal record of a down cell, and that marker must
        still work: it is keyed exactly as the minimal record was.
        """
        canonical = normalize_uuid(marker) or marker
        try:
            cctx, canonical = self._locate(ctx, marker)  # CellUnreadable: a down cell too
            found = self._fetch(cctx, canonical, self._project(ctx))
        except BackendError:
            with self.app.db.api_session() as api_session:
                mapping = mapping_db.get_mapping(api_session, canonical)
            if mapping is None or not (ctx.is_admin or mapping.project_id == ctx.project_id):
                raise InstanceNotFound(uuid=marker) from None
            return _minimal_values(mapping, keys)
        if found is None:
            raise InstanceNotFound(uuid=marker)
        return found.sort_values(keys)


def _bounded(ctx: RequestContext, timeout: float) -> float:
    """``timeout``, or what is left of the request's deadline if that is shorter."""
    if ctx.deadline is None:
        return timeout
    return max(0.0, min(timeout, ctx.deadline - time.monotonic()))


def _minimal_values(
    mapping: mapping_db.InstanceMapping, keys: Sequence[SortKey]
) -> tuple[Any, ...]:
    """A down cell's record knows only its uuid and the mapping's creation time."""
    known = {"uuid": mapping.instance_uuid, "created_at": mapping.created_at}
    return tuple(known.get(k.name) for k in keys)


def _reason(result: object, ctx: RequestContext) -> str:
    error = getattr(result, "error", None)
    if isinstance(error, BackendError):  # a page goes to clients: no address
        log.warning("request %s: cell down in a listing: %s", ctx.request_id, redact(str(error)))
        return error.public_message
    if isinstance(error, CellgateError):  # its REST words: no CLI hint
        return rest_message(error)
    if error is not None:
        return str(error)
    return "no answer within the deadline"
