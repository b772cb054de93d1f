"""Imports started from the web page, run in the background: the record of each (who started
it, its progress, its outcome) and who may read it. The import itself is
`importer.import_tip`; the caller runs it (see app/web/tips/background.py) and records the
outcome here. Nothing here commits.
"""

from __future__ import annotations

import os

from sqlalchemy import update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import Operation
from app.models.tip import TipImport, TipImportStatus
from app.services import DomainError, NotFound
from app.services.audit import Actor
from app.services.tips import files
from app.services.tips.importer import ImportResult, TipRejected, importing_agency

ERRORS_KEPT = 500  # problems kept for the page; the reject file has them all


def start(session: Session, actor: Actor, operation_id: int, file_name: str, data: bytes,
          skip_invalid: bool) -> TipImport:
    """The record of an import about to run: refused here, before anything runs, if the user
    may not import into the operation or the file is not a tip by its name or content."""
    operation = session.get(Operation, operation_id)
    if operation is None:
        raise NotFound("No such operation.")
    importing_agency(session, actor, operation)
    files.check_name(file_name)
    files.check_content(data)
    record = TipImport(operation_id=operation.id, user_id=actor.user_id,
                       file_name=os.path.basename(file_name or "tip")[:255], skip_invalid=skip_invalid,
                       status=TipImportStatus.RUNNING, stage="queued", started_at=utcnow())
    session.add(record)
    session.flush()
    return record


def get_import(session: Session, user, import_id: int) -> TipImport:
    """An import record, for the user who started it only (anyone else: NotFound)."""
    record = session.get(TipImport, import_id)
    if record is None or user is None or record.user_id != user.id:
        raise NotFound("No such import.")
    return record


def record_progress(connection: Connection, import_id: int, stage: str, done: int, total: int) -> None:
    """Progress, written on a connection of its own so that it shows while the import's own
    transaction is still open."""
    table = TipImport.__table__
    connection.execute(update(table).where(table.c.id == import_id).values(stage=stage, done=done, total=total))


def record_done(record: TipImport, result: ImportResult) -> None:
    tip = result.tip
    record.status = TipImportStatus.DONE
    record.stage, record.done, record.total = "done", 1, 1
    record.tip_id = tip.id
    record.summary = {
        "rows": result.rows, "rejected": result.rejected, "new_accounts": result.new_accounts,
        "known_accounts": result.known_accounts, "new_holders": result.new_holders,
        "joined_holders": result.joined_holders, "merged_holders": tip.merged_holders,
        "common_identifiers": result.common_identifiers, "drafts_created": len(result.routing.created),
        "drafts_changed": len(result.routing.changed),
        "hits": len(result.hits.created) if result.hits else 0,
    }
    _keep_problems(record, result.errors, result.reject_csv)
    record.finished_at = utcnow()


def record_rejected(record: TipImport, refused: TipRejected) -> None:
    record.status = TipImportStatus.REJECTED
    record.message = refused.message[:1000]
    _keep_problems(record, refused.errors, refused.reject_csv)
    record.finished_at = utcnow()


def record_failed(record: TipImport, refused: DomainError | None) -> None:
    """Refused by the importer (`refused`), or broken off by an unexpected error (None)."""
    record.status = TipImportStatus.FAILED
    record.message = (refused.message if refused else
                      "The import broke off and wrote nothing. Try again; if it happens again, tell an "
                      "administrator.")[:1000]
    record.finished_at = utcnow()


def _keep_problems(record: TipImport, errors: list, reject_csv: str | None) -> None:
    record.error_count = len(errors)
    record.errors = [[e.line, e.field, e.reason] for e in errors[:ERRORS_KEPT]] or None
    record.reject_csv = reject_csv
