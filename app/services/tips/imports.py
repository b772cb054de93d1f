"""Imports started from the web page, run in the background: the record of each (who started
it, its progress, its outcome) and who may read it. The import itself is
`importer.import_tip`; the caller runs it (see app/web/tips/background.py) and records the
outcome here. Nothing here commits.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, defer

from app.db import utcnow
from app.models import Operation
from app.models.tip import TipImport, TipImportStatus
from app.services import Conflict, DomainError, NotFound, audit
from app.services.access import visible_imports
from app.services.audit import Actor
from app.services.tips import files
from app.services.tips.importer import ImportResult, TipRejected, importing_agency, record_refusal

STILL_RUNNING = "Your last import is still running. Start the next one when it has ended."
ERRORS_KEPT = 500  # problems kept for the page; the reject file has them all
# The thread running an import says it is alive this often (`heartbeat_at`). An import run
# by a process on another server or container, whose liveness this one cannot see, has stopped
# once it has been silent for SILENCE_GIVE_UP. On SQLite the import's own transaction holds
# the only write lock while it writes, and no heartbeat is written then: a server that takes
# such an import for stopped cannot record it either until the import has committed.
HEARTBEAT_EVERY = timedelta(seconds=30)
SILENCE_GIVE_UP = timedelta(minutes=10)
INTERRUPTED = ("The import stopped when the server process running it stopped, and wrote nothing. "
               "Upload the file again.")


def start(session: Session, actor: Actor, operation_id: int, file_name: str, data: bytes,
          skip_invalid: bool) -> TipImport:
    """The record of an import about to run: refused here, before anything runs, if the user
    may not import into the operation or the file is not a tip by its name or content."""
    operation = session.get(Operation, operation_id)
    if operation is None:
        raise NotFound("No such operation.")
    importing_agency(session, actor, operation)
    try:
        files.check_name(file_name)
        files.check_content(data)
    except DomainError as refused:
        raise FileRefused(refused.message, operation.id, files.stored_name(file_name)) from None
    record = TipImport(operation_id=operation.id, user_id=actor.user_id,
                       file_name=files.stored_name(file_name), skip_invalid=skip_invalid,
                       status=TipImportStatus.RUNNING, stage="queued", started_at=utcnow(),
                       runner=this_process())
    session.add(record)
    try:
        session.flush()
    except IntegrityError as exc:
        if not _one_running_each(exc):
            raise
        raise Conflict(STILL_RUNNING, field="file") from None  # another request started one just now
    # The upload itself is on the trail: the import's own entry follows from its thread, unless
    # the process stops first.
    audit.record(session, actor, "tip.upload", "tip_import", record.id, detail={
        "operation": operation.code, "file": record.file_name, "bytes": len(data), "skip_invalid": skip_invalid})
    return record


class FileRefused(DomainError):
    """An upload refused for its file (its name or content), before any import ran."""

    def __init__(self, message: str, operation_id: int, file_name: str):
        super().__init__(message, field="file")
        self.operation_id, self.file_name = operation_id, file_name


def record_file_refusal(session: Session, actor: Actor, refused: FileRefused) -> None:
    """Audit an upload refused for its file (an image, say), once the request has rolled back."""
    record_refusal(session, actor, session.get(Operation, refused.operation_id), refused.file_name, refused)


def _one_running_each(exc: IntegrityError) -> bool:
    """Whether the refused row broke `uq_tip_imports_running_user_id` (SQLite names the column)."""
    diagnostics = getattr(exc.orig, "diag", None)
    if diagnostics is not None:
        return diagnostics.constraint_name == "uq_tip_imports_running_user_id"
    return "tip_imports.user_id" in str(exc.orig)


def get_import(session: Session, user, import_id: int) -> TipImport:
    """An import record, for the user who started it only, while their agency leads its
    operation (anyone else: NotFound)."""
    record = session.scalars(visible_imports(user).where(TipImport.id == import_id)).one_or_none()
    if record is None:
        raise NotFound("No such import.")
    return record


def recent_imports(session: Session, user, limit: int = 20) -> list[tuple[TipImport, bool]]:
    """The user's latest web imports they may still read (their pages and reject files), newest
    first, refused and failed ones too, which left no tip behind: each with whether it has a
    reject file (which is not read here)."""
    query = (visible_imports(user).add_columns(TipImport.reject_csv.is_not(None))
             .options(defer(TipImport.reject_csv), defer(TipImport.errors))
             .order_by(TipImport.started_at.desc(), TipImport.id.desc()).limit(limit))
    return [(record, has_reject) for record, has_reject in session.execute(query)]


def own_running_import(session: Session, user) -> TipImport | None:
    """The user's import recorded as running, in whichever operation (one runs at a time each):
    to settle before their next upload, shown to them only through `get_import`."""
    return session.scalars(select(TipImport).where(TipImport.user_id == user.id,
                                                   TipImport.status == TipImportStatus.RUNNING)).one_or_none()


def this_process() -> str:
    """Host, process-id namespace, process id and the process's start: a record's `runner`,
    set by the process that runs the import (the one that takes the upload)."""
    return f"{socket.gethostname()}|{_pid_namespace()}|{os.getpid()}|{_process_start(os.getpid())}"


def _pid_namespace() -> str:
    """Containers sharing a host name (host networking) each number their processes apart."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """When process `pid` started (the boot, and clock ticks since it), so that an id the
    system gives again after a restart is not taken for the old process; "" without /proc, or
    without such a process, or where it is hidden."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat, open("/proc/sys/kernel/random/boot_id") as boot:
            # Field 22 (starttime), counted after the command name, which may hold spaces.
            ticks = stat.read().rsplit(b")", 1)[1].split()[19].decode()
            return f"{boot.read().strip()}.{ticks}"
    except (OSError, IndexError):
        return ""


def runner_stopped(record: TipImport, *, running_here: bool) -> bool:
    """Whether a running import's process is gone (a restart, a crash): its transaction went
    with it, so nothing was written. `running_here` says whether this process runs it now;
    the caller asks that before reading the record, so that a thread ending in between has
    committed its outcome by then."""
    if record.status is not TipImportStatus.RUNNING:
        return False
    fields = (record.runner or "").split("|")
    if len(fields) != 4 or fields[:2] != [socket.gethostname(), _pid_namespace()]:
        # Another server or container, whose processes this one cannot see: only silence tells.
        return utcnow() - (record.heartbeat_at or record.started_at) > SILENCE_GIVE_UP
    pid, started = int(fields[2]), fields[3]
    now_started = _process_start(pid)
    if pid == os.getpid() and started == now_started:
        return not running_here
    if started and now_started:
        return now_started != started
    try:  # gone, or hidden from this process's /proc, or no /proc: is there a process of that id?
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def record_interrupted(connection: Connection, import_id: int) -> bool:
    """Mark an import whose process stopped as failed, unless its outcome has been recorded
    meanwhile: one conditional statement, on a connection of its own. Returns whether it did."""
    table = TipImport.__table__
    marked = connection.execute(update(table).where(table.c.id == import_id,
                                                    table.c.status == TipImportStatus.RUNNING)
                                .values(status=TipImportStatus.FAILED, message=INTERRUPTED, finished_at=utcnow()))
    return marked.rowcount == 1


def record_interruption(session: Session, actor: Actor, record: TipImport) -> None:
    """Audit an import found interrupted (its process stopped, nothing written), by whoever
    found it: the import's own entry never came."""
    audit.record(session, actor, "tip.import", "operation", record.operation_id, outcome="failure", detail={
        "operation": record.operation.code, "file": record.file_name, "import": record.id,
        "reason": "interrupted: the process running it stopped"})


def record_heartbeat(connection: Connection, import_id: int) -> None:
    """That a running import is alive, on a connection of its own."""
    table = TipImport.__table__
    connection.execute(update(table).where(table.c.id == import_id, table.c.status == TipImportStatus.RUNNING)
                       .values(heartbeat_at=utcnow()))


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
        "known_accounts": result.known_accounts, "differing_known": result.differing_known,
        "new_holders": result.new_holders,
        "joined_holders": result.joined_holders, "merged_holders": tip.merged_holders,
        "common_identifiers": result.common_identifiers, "drafts_created": len(result.routing.created),
        "drafts_changed": len(result.routing.changed),
        "hits": len(result.hits.created) if result.hits else 0,
        "ignored_columns": result.ignored_columns,
    }
    _keep_problems(record, result.errors, result.reject_csv)
    record.finished_at = utcnow()


def record_rejected(session: Session, actor: Actor, record: TipImport, refused: TipRejected) -> None:
    """Bad rows, nothing written: the problems are kept for the page, and the refusal audited."""
    record.status = TipImportStatus.REJECTED
    record.message = refused.message[:1000]
    _keep_problems(record, refused.errors, refused.reject_csv)
    record.finished_at = utcnow()
    record_refusal(session, actor, record.operation, record.file_name, refused)


def record_failed(session: Session, actor: Actor, record: TipImport, refused: DomainError | None) -> None:
    """Refused by the importer (`refused`), or broken off by an unexpected error (None); audited."""
    record.status = TipImportStatus.FAILED
    record.message = (refused.message if refused else
                      "The import broke off and wrote nothing. Try again; if it happens again, tell an "
                      "administrator.")[:1000]
    record.finished_at = utcnow()
    record_refusal(session, actor, record.operation, record.file_name, refused)


def record_reject_download(session: Session, actor: Actor, record: TipImport) -> str:
    """The reject file of an import (NotFound if it has none), its handing out audited."""
    if not record.reject_csv:
        raise NotFound("This import has no reject file.")
    audit.record(session, actor, "tip.reject_download", "tip_import", record.id, detail={
        "operation": record.operation.code, "file": record.file_name, "problems": record.error_count})
    return record.reject_csv


def _keep_problems(record: TipImport, errors: list, reject_csv: str | None) -> None:
    record.error_count = len(errors)
    record.errors = [[e.line, e.field, e.reason] for e in errors[:ERRORS_KEPT]] or None
    record.reject_csv = reject_csv
