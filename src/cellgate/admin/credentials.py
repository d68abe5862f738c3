"""Re-store every cell's URLs: ``cell rotate-key``, ``cell encrypt``, ``cell decrypt``.

A run first reads every live row and checks that each row it must rewrite
decrypts with the configured keys; if one does not, it stops before writing
anything. Then it rewrites one row per transaction, so a large table is never
locked as a whole, and a run that is interrupted (or races another run) can
simply be started again: each row is re-checked under its lock and rows that
are already done are skipped.

Then it walks the audit trail the same way, a batch of entries per
transaction (entries are encrypted too: :mod:`cellgate.apidb.audit`); an
entry no configured key opens is counted and left alone, never a reason to
stop.

The keys are ``app``'s (``[api_database] encryption_keys``): the API database
handle puts them in every session it opens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from cellgate.apidb.mappings import (
    CellMapping,
    encryption_of,
    get_cell,
    keyring,
    live_rows,
)
from cellgate.apidb.updates import (
    AuditReseal,
    ResealMode,
    reseal_audit,
    reseal_cell,
    reseal_needed,
)
from cellgate.app import App
from cellgate.errors import EncryptionKeyError, Hint
from cellgate.keyring import generate_key as _new_key

#: Called with one line per cell rewritten, e.g. to print progress.
OnCell = Callable[[str], None]


@dataclass
class ResealReport:
    """What a run did (or, with ``dry_run``, would do), by cell."""

    mode: ResealMode
    key_id: str | None
    dry_run: bool
    changed: list[dict[str, str]] = field(default_factory=list)
    unchanged: int = 0
    audit_changed: int = 0
    audit_unchanged: int = 0
    #: Audit entries that needed rewriting but no configured key opens.
    audit_unreadable: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.mode,
            "key_id": self.key_id,
            "dry_run": self.dry_run,
            "changed": len(self.changed),
            "unchanged": self.unchanged,
            "cells": self.changed,
            "audit_entries": {
                "changed": self.audit_changed,
                "unchanged": self.audit_unchanged,
                "unreadable": self.audit_unreadable,
            },
        }


def generate_key() -> str:
    """A new random key for ``[api_database] encryption_keys`` (a secret: store it as one)."""
    return _new_key()


def rotate_key(
    app: App, *, dry_run: bool = False, actor: str | None = None, on_cell: OnCell | None = None
) -> ResealReport:
    """Re-encrypt every encrypted cell URL with the first configured key.

    Plaintext rows are left alone (:func:`encrypt_cells` converts them). Once
    a run reports no changes, the other keys can be removed from the config.
    """
    return reseal_cells(app, "rotate-key", dry_run=dry_run, actor=actor, on_cell=on_cell)


def encrypt_cells(
    app: App,
    ident: str | None = None,
    *,
    dry_run: bool = False,
    actor: str | None = None,
    on_cell: OnCell | None = None,
) -> ResealReport:
    """Encrypt one cell's (``ident``) or every cell's plaintext URLs with the first key."""
    return reseal_cells(app, "encrypt", ident=ident, dry_run=dry_run, actor=actor, on_cell=on_cell)


def decrypt_cells(
    app: App,
    ident: str | None = None,
    *,
    dry_run: bool = False,
    actor: str | None = None,
    on_cell: OnCell | None = None,
) -> ResealReport:
    """Store one cell's (``ident``) or every cell's URLs as plaintext again."""
    return reseal_cells(app, "decrypt", ident=ident, dry_run=dry_run, actor=actor, on_cell=on_cell)


def reseal_cells(
    app: App,
    mode: ResealMode,
    *,
    ident: str | None = None,
    dry_run: bool = False,
    actor: str | None = None,
    on_cell: OnCell | None = None,
) -> ResealReport:
    """Apply ``mode`` (see :data:`~cellgate.apidb.updates.ResealMode`) to one or all cells."""
    api = app.api
    api.require_current()
    ring = api.keyring
    if mode != "decrypt" and not ring:
        raise EncryptionKeyError(
            f"'cell {mode}' needs an encryption key, and none is configured",
            hint=Hint.GENERATE_KEY,
        )
    report = ResealReport(
        mode=mode, key_id=ring.primary_id if mode != "decrypt" else None, dry_run=dry_run
    )
    todo: list[tuple[str, str, str]] = []
    with api.session() as session:
        rows = live_rows(session, ident)
        for row in rows:
            if not reseal_needed(row, keyring(session), mode):
                report.unchanged += 1
                continue
            cell: CellMapping = get_cell(session, row.uuid)  # raises if it does not decrypt
            todo.append((cell.uuid, cell.label, encryption_of(row)))
    for uuid, label, before in todo:
        if dry_run:
            report.changed.append({"uuid": uuid, "name": label, "before": before})
            continue

        def transaction(
            session: Session, uuid: str = uuid, before: str = before
        ) -> tuple[bool, str]:
            done = reseal_cell(session, uuid, mode=mode, actor=actor)
            return done, get_cell(session, uuid).encryption if done else before

        done, after = api.write(transaction)
        if done:
            report.changed.append({"uuid": uuid, "name": label, "before": before, "after": after})
            if on_cell is not None:
                on_cell(f"{mode}: {label} {before} -> {after}")
        else:
            report.unchanged += 1
    _reseal_audit(app, mode, report, cell_uuid=_uuid_of(app, ident) if ident else None)
    if on_cell is not None and report.audit_changed and not dry_run:
        on_cell(f"{mode}: {report.audit_changed} audit entries")
    return report


#: Audit entries rewritten per transaction.
AUDIT_BATCH = 200


def _uuid_of(app: App, ident: str) -> str:
    with app.api.session() as session:
        return get_cell(session, ident).uuid


def _reseal_audit(
    app: App, mode: ResealMode, report: ResealReport, *, cell_uuid: str | None
) -> None:
    after = 0
    while True:

        def batch(session: Session, after: int = after) -> AuditReseal:
            return reseal_audit(
                session,
                mode=mode,
                after_id=after,
                limit=AUDIT_BATCH,
                cell_uuid=cell_uuid,
                write=not report.dry_run,
            )

        if report.dry_run:
            with app.api.session() as session:
                done = batch(session)
        else:
            done = app.api.write(batch)
        report.audit_changed += done.changed
        report.audit_unchanged += done.unchanged
        report.audit_unreadable += done.unreadable
        if done.last_id is None:
            return
        after = done.last_id
