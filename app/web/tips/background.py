"""Running a web upload's import in the background, so that the request answers at once and the
page shows the import's progress (docs/architecture.md, "Tip imports run in a thread").

The import runs in a thread of the process that took the upload, with its own app context and
so its own database session, once the request has committed the import's record. Like a
request, the thread commits once: the import and its record's outcome together. Progress goes
to the record on a connection of its own, so other requests (any worker) can show it. On
SQLite only while the rows are checked: the database has one writer, and from then on it is the
import's transaction; this process keeps the later stages in memory for its own pages. Beside
it a heartbeat says every half minute that the import is alive, which is all a server that
cannot see this process goes by.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import NamedTuple

from flask import Flask
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.extensions import db
from app.models import User
from app.models.tip import TipImport
from app.services import DomainError
from app.services.audit import Actor
from app.services.tips import bulk, importer, imports

log = logging.getLogger(__name__)
PROGRESS_EVERY = 0.5  # seconds between progress writes within one stage
PROGRESS_WAIT_MS = 200  # SQLite: the longest a progress write waits for the write lock


def start_after_commit(session: Session, app: Flask, import_id: int, data: bytes, user_id: int,
                       address: str | None) -> None:
    """Start the import once `session` commits the record (never, if it rolls back). Its thread
    is known here at once, as about to start (`running_here`): from the moment the record is
    committed, another request (the other click of a double click) must not take the import
    for one whose process stopped."""
    thread = threading.Thread(target=_run, args=(app, import_id, data, user_id, address),
                              name=f"tip-import-{import_id}", daemon=True)
    with _threads_lock:
        threads = app.extensions.setdefault("tip_import_threads", {})
        for ended in [key for key, other in threads.items() if other.ident is not None and not other.is_alive()]:
            del threads[ended]
        threads[import_id] = thread

    def start(_session: Session) -> None:
        thread.start()

    def forget(_session: Session) -> None:  # the record was not committed: no import to start
        with _threads_lock:
            if thread.ident is None and app.extensions["tip_import_threads"].get(import_id) is thread:
                del app.extensions["tip_import_threads"][import_id]

    event.listen(session, "after_commit", start, once=True)
    event.listen(session, "after_rollback", forget, once=True)


_threads_lock = threading.Lock()


def running_here(app: Flask, import_id: int) -> bool:
    """Whether this process's thread for the import is at work (or about to start)."""
    with _threads_lock:
        thread = app.extensions.get("tip_import_threads", {}).get(import_id)
    return thread is not None and (thread.ident is None or thread.is_alive())


class Progress(NamedTuple):
    stage: str
    done: int
    total: int


def progress_here(app: Flask, import_id: int) -> Progress | None:
    """The stage this process's thread for the import last reported. On SQLite the import's
    transaction holds the only write lock while it writes, so its record keeps the validation's
    last figure; a page served by this process shows the stages after it from here."""
    with _threads_lock:
        return app.extensions.get("tip_import_progress", {}).get(import_id)


def record_interrupted(app: Flask, import_id: int) -> bool:
    """Record that an import's process stopped, on a connection of its own; whether this call
    did. While another import holds SQLite's write lock this gives up; a later view of the
    page tries again."""
    engine = app.extensions["handoff_db"]["engine"]
    try:
        with engine.begin() as connection:
            return imports.record_interrupted(connection, import_id)
    except OperationalError:
        log.warning("tip import %s: could not record yet that its process stopped", import_id)
        return False


def _write_beside(engine, import_id: int, write, *args) -> None:
    """One write to the import's record on a connection of its own, given up rather than
    waited for while another import holds SQLite's write lock: the figure is not worth it."""
    with engine.connect() as connection, bulk.sqlite_setting(connection, "busy_timeout", PROGRESS_WAIT_MS):
        try:
            write(connection, import_id, *args)
            connection.commit()
        except OperationalError:
            connection.rollback()
            log.info("tip import %s: %s not recorded, the database is busy", import_id, write.__name__)


class _Progress:
    """The importer's progress callback: writes the stage and its counts to the record, at most
    every PROGRESS_EVERY seconds within a stage."""

    def __init__(self, app: Flask, import_id: int):
        self.engine = app.extensions["handoff_db"]["engine"]
        self.import_id = import_id
        self.single_writer = self.engine.dialect.name == "sqlite"
        self.stage = None
        self.written_at = 0.0
        self.here = app.extensions.setdefault("tip_import_progress", {})

    def __call__(self, stage: str, done: int, total: int) -> None:
        with _threads_lock:
            self.here[self.import_id] = Progress(stage, done, total)
        if self.single_writer and stage != "validate":
            return  # the import's transaction holds the only write lock: `progress_here` tells
        now = time.monotonic()
        if stage == self.stage and done < total and now - self.written_at < PROGRESS_EVERY:
            return
        self.stage, self.written_at = stage, now
        _write_beside(self.engine, self.import_id, imports.record_progress, stage, done, total)


class _Heartbeat:
    """While the import runs, a thread of its own tells the record it is alive every
    HEARTBEAT_EVERY, for servers that cannot see this process (imports.runner_stopped)."""

    def __init__(self, app: Flask, import_id: int):
        self.engine = app.extensions["handoff_db"]["engine"]
        self.import_id = import_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"tip-import-{import_id}-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)

    def _beat(self) -> None:
        every = imports.HEARTBEAT_EVERY.total_seconds()
        while True:
            try:
                _write_beside(self.engine, self.import_id, imports.record_heartbeat)
            except Exception:  # the database gone: the import itself will say so
                log.exception("tip import %s: heartbeat failed", self.import_id)
            if self.stopped.wait(every):
                return


def _run(app: Flask, import_id: int, data: bytes, user_id: int, address: str | None) -> None:
    try:
        _import_and_record(app, import_id, data, user_id, address)
    finally:
        with _threads_lock:
            app.extensions.get("tip_import_progress", {}).pop(import_id, None)


def _import_and_record(app: Flask, import_id: int, data: bytes, user_id: int, address: str | None) -> None:
    with app.app_context(), _Heartbeat(app, import_id):
        session = db.session
        record = session.get(TipImport, import_id)
        actor = Actor(user=session.get(User, user_id), address=address)
        try:
            result = importer.import_tip(session, actor, record.operation_id, data, record.file_name,
                                         skip_invalid=record.skip_invalid, require_extension=True,
                                         progress=_Progress(app, import_id))
            imports.record_done(record, result)
            session.commit()
            return
        except importer.TipRejected as refused:
            outcome = functools.partial(imports.record_rejected, refused=refused)
        except DomainError as refused:
            outcome = functools.partial(imports.record_failed, refused=refused)
        except Exception:  # the commit's too: the record must not stay "running"
            log.exception("tip import %s broke off", import_id)
            outcome = functools.partial(imports.record_failed, refused=None)
        session.rollback()
        try:
            outcome(session, actor, session.get(TipImport, import_id))
            session.commit()
        except Exception:
            log.exception("tip import %s: could not record its outcome", import_id)
            session.rollback()
            # If this fails as well (the database gone), the record stays "running" until its
            # page sees this thread has ended and marks it interrupted (imports.runner_stopped).
            imports.record_failed(session, actor, session.get(TipImport, import_id), None)
            session.commit()
