"""The tip pages through the browser, CSRF on: the upload (what it refuses and how it reports bad
rows), the holder lists and page, the lead agency's decisions, and who sees what."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.db import utcnow
from app.extensions import db
from app.models import Agency, AgencyKind, AuditEntry, Holder, Referral, Tip, TipAccount, User
from app.models.tip import TipImport, TipImportStatus
from app.services import referrals
from app.services.audit import Actor
from app.services.tips import importer, imports, reader
from app.web.tips import background
from tests.conftest import Browser, _empty_all_tables, _make_app, csrf_token_from
from tests.unit.test_tips_import import account, tip
from tests.web.statements import statements

LEAD = "liaison.c@example.org"  # Charlie Customs leads LANTERN in the test world


def _login(app, email: str) -> Browser:
    browser = Browser(app.test_client())
    assert browser.login(email).status_code == 302
    return browser


def _upload(browser: Browser, operation_id: int, data: bytes, name: str = "tip.csv", skip: bool = False,
            content_type: str = "text/csv"):
    token = csrf_token_from(browser.get("/tips/import").get_data(as_text=True))
    form = {"csrf_token": token, "operation": str(operation_id), "file": (io.BytesIO(data), name, content_type)}
    if skip:
        form["skip_invalid"] = "y"
    return browser.client.post("/tips/import", data=form, content_type="multipart/form-data")


def _finished(app, browser: Browser, response):
    """The status page of the import an upload started, once the import has ended."""
    assert response.status_code == 303, response.get_data(as_text=True)
    location = response.headers["Location"]
    import_id = int(location.rstrip("/").rsplit("/", 1)[1])
    thread = app.extensions["tip_import_threads"][import_id]
    thread.join(timeout=120)
    assert not thread.is_alive(), "the import never ended"
    return browser.get(location)


def _import(app, browser: Browser, operation_id: int, data: bytes, **kwargs):
    return _finished(app, browser, _upload(browser, operation_id, data, **kwargs))


def _actor(email: str) -> Actor:
    """The user of that address acting (within an app context)."""
    return Actor(db.session.scalar(select(User).where(User.email == email)), "127.0.0.1")


def _count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model)) or 0


def _holder_subject(app, account_key: str) -> int:
    with app.app_context():
        return db.session.scalar(select(Holder.subject_id).join(TipAccount, TipAccount.holder_id == Holder.id)
                                 .where(TipAccount.account_key == account_key))


GOOD = tip(account(1, email="w1@example.org"), account(2, email="w1@example.org", phone="+61 412 000 002"),
           account(3, country_hint="AU", ip_country="NZ", email="w3@example.org"))


def test_a_liaison_officer_of_the_lead_agency_imports_a_tip(app, web_world):
    browser = _login(app, LEAD)
    page = browser.get("/tips/import").get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in page and "LANTERN" in page
    assert 'href="/tips/"' in browser.get("/referrals").get_data(as_text=True)  # the nav link
    response = _import(app, browser, web_world.operation.id, GOOD)
    text = response.get_data(as_text=True)
    assert response.status_code == 200, text
    assert 'http-equiv="refresh"' not in text  # finished: the page stops refreshing
    assert "Imported into LANTERN" in text and "New account holders</dt><dd>2" in text
    assert _count(app, TipAccount) == 3 and _count(app, Tip) == 1
    holders = browser.get("/tips/holders").get_data(as_text=True)
    assert "H-000001" in holders and "H-000002" in holders
    overview = browser.get("/tips/").get_data(as_text=True)
    assert "tip.csv" in overview and "LANTERN" in overview
    # The same file again: nothing twice.
    again = _import(app, browser, web_world.operation.id, GOOD)
    assert again.status_code == 200 and "Accounts already known</dt><dd>3" in again.get_data(as_text=True)
    assert _count(app, TipAccount) == 3 and _count(app, Holder) == 2


def test_the_upload_needs_the_csrf_token(app, web_world):
    browser = _login(app, LEAD)
    response = browser.client.post("/tips/import", data={
        "operation": str(web_world.operation.id), "file": (io.BytesIO(GOOD), "tip.csv")},
        content_type="multipart/form-data")
    assert response.status_code == 400 and _count(app, Tip) == 0


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"


@pytest.mark.parametrize("data, name, content_type, message", [
    (PNG, "picture.png", "image/png", "CSV or JSON Lines file"),  # refused by its name
    (PNG, "tip.csv", "text/csv", "PNG image"),  # refused by its content
    (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom", "clip.csv", "text/csv", "video"),
    (GOOD.replace(b"w1@example.org", b"w\xe9@example.org"), "tip.csv", "text/csv", "not UTF-8 text"),
])
def test_images_video_binary_and_non_utf8_files_are_refused(app, web_world, data, name, content_type, message):
    browser = _login(app, LEAD)
    response = _upload(browser, web_world.operation.id, data, name=name, content_type=content_type)
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    assert _count(app, Tip) == 0 and _count(app, TipAccount) == 0 and _count(app, TipImport) == 0
    with app.app_context():  # the attempt is on the audit trail all the same
        refused = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "tip.import")).one()
        detail = json.loads(refused.detail)
        assert refused.outcome == "failure" and detail["file"] == name and message in detail["reason"]
        assert detail["operation"] == "LANTERN"


def _audit_entries(app, action: str) -> list[AuditEntry]:
    with app.app_context():
        entries = db.session.scalars(select(AuditEntry).where(AuditEntry.action == action)).all()
        db.session.expunge_all()
        return entries


def test_an_upload_is_audited_before_its_import_runs(app, web_world, monkeypatch):
    """An upload whose process stops before the import runs leaves its trace: the upload's
    entry, then the interruption's, recorded once by the page that finds it."""
    monkeypatch.setattr(background, "start_after_commit", lambda *args, **kwargs: None)  # the process stops
    browser = _login(app, LEAD)
    response = _upload(browser, web_world.operation.id, GOOD, name="ti\x00p\x07.csv")
    assert response.status_code == 303
    [upload] = _audit_entries(app, "tip.upload")
    assert json.loads(upload.detail) == {"operation": "LANTERN", "file": "ti_p_.csv", "bytes": len(GOOD),
                                         "skip_invalid": False}
    assert _audit_entries(app, "tip.import") == []
    with app.app_context():
        record = db.session.get(TipImport, int(upload.object_id))
        record.runner = "another-server.example|1|4242|boot.1"
        record.started_at = utcnow() - timedelta(minutes=11)
        db.session.commit()
    for _ in range(2):
        assert "process running it stopped" in browser.get(response.headers["Location"]).get_data(as_text=True)
    [interrupted] = _audit_entries(app, "tip.import")
    assert interrupted.outcome == "failure" and "interrupted" in json.loads(interrupted.detail)["reason"]


def test_the_import_runs_in_the_background_and_its_page_shows_progress(app, web_world, monkeypatch):
    reached, release = threading.Event(), threading.Event()

    def hold_after_accounts() -> None:  # the testing hook's place, held until the test has looked
        reached.set()
        release.wait(timeout=120)

    monkeypatch.setattr(importer, "_pause_for_tests", hold_after_accounts)
    browser = _login(app, LEAD)
    response = _upload(browser, web_world.operation.id, GOOD)
    assert response.status_code == 303
    location = response.headers["Location"]
    assert reached.wait(timeout=120)
    try:
        page = browser.get(location)
        text = page.get_data(as_text=True)
        assert page.status_code == 200
        assert '<meta http-equiv="refresh" content="2">' in text and "<script" not in text
        # Paused as it writes: the stage it is at shows, although on SQLite its record cannot
        # be written until the import commits.
        assert "Importing" in text and re.search(r"Writing accounts, holders and identifiers:\s+[\d,]+ of [\d,]+ "
                                                 r"accounts\.</p>", text), text
        assert _count(app, Tip) == 0  # nothing is visible before the import commits
    finally:
        release.set()
    done = _finished(app, browser, response).get_data(as_text=True)
    assert "Imported into LANTERN" in done and 'http-equiv="refresh"' not in done
    assert _count(app, Tip) == 1
    # Only the person who started it follows it.
    assert _login(app, "manager.c@example.org").get(location).status_code == 404


def _record_running_import(app, web_world, runner: str, started_at=None, heartbeat_at=None) -> int:
    with app.app_context():
        lead = db.session.scalar(select(User).where(User.email == LEAD))
        record = TipImport(operation_id=web_world.operation.id, user_id=lead.id, file_name="tip.csv",
                           status=TipImportStatus.RUNNING, stage="validate", runner=runner,
                           started_at=started_at or utcnow(), heartbeat_at=heartbeat_at)
        db.session.add(record)
        db.session.commit()
        return record.id


def _end(app, import_id: int) -> None:
    with app.app_context():
        db.session.get(TipImport, import_id).status = TipImportStatus.FAILED
        db.session.commit()


def _ended_process() -> str:
    """The runner of a process of this machine that has since exited."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runner = f"{socket.gethostname()}|{imports._pid_namespace()}|{child.pid}|{imports._process_start(child.pid)}"
    finally:
        child.kill()
        child.wait()
    return runner


@pytest.mark.parametrize("runner", [
    pytest.param(imports.this_process, id="this process, its thread gone"),
    pytest.param(_ended_process, id="another process, exited"),
])
def test_an_import_whose_process_stopped_shows_as_interrupted_not_running_for_ever(app, web_world, runner):
    import_id = _record_running_import(app, web_world, runner())
    page = _login(app, LEAD).get(f"/tips/imports/{import_id}")
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "stopped when the server process running it stopped" in text and 'http-equiv="refresh"' not in text
    assert "Import another file" in text
    with app.app_context():
        record = db.session.get(TipImport, import_id)
        assert record.status is TipImportStatus.FAILED and record.finished_at is not None


@pytest.mark.parametrize("runner", [
    pytest.param("another-server.example|4026531836|4242|boot.1", id="another server"),
    pytest.param(f"{socket.gethostname()}|1|4242|boot.1", id="another container of the same host name"),
    pytest.param(None, id="recorded before imports named their runner"),
])
def test_an_import_run_where_this_process_cannot_see_runs_while_its_heartbeat_is_heard(app, web_world, runner):
    browser = _login(app, LEAD)
    now = utcnow()
    for started, heartbeat, stopped in (
        (now, None, False),  # just started
        (now - timedelta(hours=2), now - timedelta(minutes=1), False),  # a long import, alive
        (now - timedelta(hours=2), now - timedelta(minutes=11), True),  # silent for ten minutes
        (now - timedelta(minutes=11), None, True),  # never heard from
    ):
        import_id = _record_running_import(app, web_world, runner, started_at=started, heartbeat_at=heartbeat)
        text = browser.get(f"/tips/imports/{import_id}").get_data(as_text=True)
        assert ("process running it stopped" in text) is stopped, (started, heartbeat)
        assert ('http-equiv="refresh"' in text) is not stopped
        _end(app, import_id)  # one running import per person


def test_a_running_web_import_says_it_is_alive(app, web_world, monkeypatch):
    """The thread that runs an import writes its heartbeat beside it, as another server reads it."""
    beats = []
    real = imports.record_heartbeat
    monkeypatch.setattr(imports, "record_heartbeat", lambda connection, import_id: (beats.append(import_id),
                                                                                    real(connection, import_id)))
    browser = _login(app, LEAD)
    page = _import(app, browser, web_world.operation.id, GOOD)
    assert "Imported into LANTERN" in page.get_data(as_text=True)
    with app.app_context():
        record = db.session.scalars(select(TipImport)).one()
        assert beats and set(beats) == {record.id}
        assert record.started_at <= record.heartbeat_at <= record.finished_at


def test_an_outcome_recorded_meanwhile_is_never_overwritten_as_interrupted(app, web_world):
    import_id = _record_running_import(app, web_world, imports.this_process())
    with app.app_context():
        record = db.session.get(TipImport, import_id)
        assert imports.runner_stopped(record, running_here=False)  # as read: running, no thread
        record.status, record.summary = TipImportStatus.DONE, {"rows": 1}  # ...then its thread commits
        db.session.commit()
    background.record_interrupted(app, import_id)
    with app.app_context():
        assert db.session.get(TipImport, import_id).status is TipImportStatus.DONE


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="process start times are read from /proc")
def test_a_process_id_given_again_after_a_restart_is_not_the_old_runner(app, web_world):
    # The parent process is alive, but started at another moment than the one recorded.
    here = f"{socket.gethostname()}|{imports._pid_namespace()}|{os.getppid()}"
    reused = f"{here}|{imports._process_start(os.getppid())}0"
    alive = f"{here}|{imports._process_start(os.getppid())}"
    with app.app_context():
        for runner, stopped in ((reused, True), (alive, False)):
            record = db.session.get(TipImport, _record_running_import(app, web_world, runner))
            assert imports.runner_stopped(record, running_here=False) is stopped
            _end(app, record.id)  # one running import per person


def test_an_import_refused_in_the_background_says_why_and_writes_nothing(app, web_world):
    browser = _login(app, LEAD)
    page = _import(app, browser, web_world.operation.id, b"platform,account_id\n")
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "no rows" in text and 'http-equiv="refresh"' not in text
    assert _count(app, Tip) == 0


def test_an_image_spelled_with_json_escapes_is_refused_in_the_background(app, web_world):
    browser = _login(app, LEAD)
    data = (b'{"platform": "discord", "account_id": "a1"}\r'
            b'{"platform": "discord", "account_id": "a2", "username": "\\u0064ata:image\\/png;base64,iVBO"}\r')
    page = _import(app, browser, web_world.operation.id, data, name="tip.jsonl", content_type="application/x-ndjson")
    assert "encoded image, video or audio file (a data: URL on line 2)" in page.get_data(as_text=True)
    assert _count(app, Tip) == 0 and _count(app, TipAccount) == 0


def test_bad_rows_are_listed_with_line_field_and_reason_and_nothing_is_written(app, web_world):
    browser = _login(app, LEAD)
    data = tip(account(1), account(2, email="not-an-email"), account(3, uploads_a="-4"))
    response = _import(app, browser, web_world.operation.id, data)
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Nothing was imported" in text
    assert re.search(r"<td>3</td><td>email</td><td>not a valid e-mail address", text)
    assert re.search(r"<td>4</td><td>uploads_a</td><td>cannot be negative</td>", text)
    assert _count(app, TipAccount) == 0
    with app.app_context():  # the refusal is on the audit trail, though nothing was written
        refused = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "tip.import")).one()
        assert refused.outcome == "failure"
        assert {k: v for k, v in json.loads(refused.detail).items() if k != "reason"} == {
            "operation": "LANTERN", "file": "tip.csv", "rows": 3, "problems": 2}
    # Skipping them: the good row is imported and the reject file is offered with the summary.
    response = _import(app, browser, web_world.operation.id, data, skip=True)
    text = response.get_data(as_text=True)
    assert response.status_code == 200 and _count(app, TipAccount) == 1
    link = re.search(r'href="(/tips/imports/(\d+)/rejects.csv)">Download the reject file', text)
    assert link, text
    download = browser.get(link.group(1))
    assert download.status_code == 200 and download.mimetype == "text/csv"
    assert download.headers["Content-Disposition"] == f'attachment; filename="handoff-import-{link.group(2)}-rejects.csv"'
    assert download.get_data().startswith(b"\xef\xbb\xbf")  # a spreadsheet reads it as UTF-8
    rows = list(csv.DictReader(io.StringIO(download.get_data().decode("utf-8-sig"))))
    assert list(rows[0])[-3:] == ["line", "field", "reason"] and list(rows[0])[:len(reader.FIELDS)] == list(reader.FIELDS)
    assert [(r["line"], r["field"], r["email"]) for r in rows] == [("3", "email", "not-an-email"),
                                                                   ("4", "uploads_a", "")]
    with app.app_context():  # handing the file out is an export: audited
        entry = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "tip.reject_download")).one()
        assert (entry.object_id, json.loads(entry.detail)["problems"]) == (link.group(2), 2)
    # No one else downloads it; an import without bad rows has no reject file.
    assert _login(app, "manager.c@example.org").get(link.group(1)).status_code == 404
    clean = _import(app, browser, web_world.operation.id, tip(account(5)))
    assert browser.get(f"{clean.request.path}/rejects.csv").status_code == 404


def test_columns_that_are_no_tip_field_are_named_after_the_import(app, web_world):
    data = b"Platform, Account_ID ,E-mail,notes\ninstagram,1001,a@example.org,x\n"
    page = _import(app, _login(app, LEAD), web_world.operation.id, data).get_data(as_text=True)
    assert "Imported into LANTERN" in page
    assert "Columns not read, as they are no tip field:\n        E-mail, notes." in page
    assert "A tip's columns are <code>platform</code>" in page  # what to call them, on the page itself
    with app.app_context():
        assert db.session.scalar(select(TipAccount.email).where(TipAccount.account_key == "1001")) is None


def test_a_file_over_the_size_limit_gets_a_friendly_413(app, web_world):
    app.config["MAX_CONTENT_LENGTH"] = 4096
    browser = _login(app, LEAD)
    response = _upload(browser, web_world.operation.id, tip(*(account(n) for n in range(200))))
    assert response.status_code == 413
    page = response.get_data(as_text=True)
    assert "too large to accept" in page and "at most 4 KB" in page  # the limit configured, not a fixed one
    assert _count(app, Tip) == 0


def test_a_form_text_over_its_limit_gets_a_413_naming_that_limit(app, web_world):
    """A text part of a multipart form (not the file) over MAX_FORM_MEMORY_SIZE: the page names
    that limit, not the upload's."""
    app.config["MAX_FORM_MEMORY_SIZE"] = 2048
    browser = _login(app, LEAD)
    token = csrf_token_from(browser.get("/tips/import").get_data(as_text=True))
    response = browser.client.post("/tips/import", content_type="multipart/form-data", data={
        "csrf_token": token, "operation": str(web_world.operation.id), "note": "x" * 5000,
        "file": (io.BytesIO(GOOD), "tip.csv", "text/csv")})
    assert response.status_code == 413
    page = response.get_data(as_text=True)
    assert "the text of one form field at most 2 KB, and a form at most 1,000 fields" in page
    assert "a tip file included" not in page
    assert _count(app, Tip) == 0


def test_a_form_of_too_many_fields_gets_a_413_naming_that_limit(app, web_world):
    app.config["MAX_FORM_PARTS"] = 50
    browser = _login(app, LEAD)
    token = csrf_token_from(browser.get("/tips/import").get_data(as_text=True))
    response = browser.client.post("/tips/import", content_type="multipart/form-data", data={
        "csrf_token": token, "operation": str(web_world.operation.id), **{f"extra{n}": "x" for n in range(60)},
        "file": (io.BytesIO(GOOD), "tip.csv", "text/csv")})
    assert response.status_code == 413
    page = response.get_data(as_text=True)
    assert "a form at most 50 fields" in page and "form field at most" not in page


def test_the_lead_agencys_work_lists_are_offered_to_its_people_only(app, web_world):
    lead = _login(app, LEAD).get("/tips/").get_data(as_text=True)
    assert all(f'href="/tips/{path}"' in lead for path in ("review", "unrouted", "import"))
    partner = _login(app, "liaison.a@example.org").get("/tips/").get_data(as_text=True)
    assert 'href="/tips/holders"' in partner
    assert not any(f'href="/tips/{path}"' in partner for path in ("review", "unrouted", "import"))


def test_viewers_and_other_agencies_cannot_import(app, web_world):
    assert _login(app, "viewer.c@example.org").get("/tips/import").status_code == 403
    other = _login(app, "liaison.a@example.org")
    page = other.get("/tips/import").get_data(as_text=True)
    assert "leads no operation" in page
    response = _upload(other, web_world.operation.id, GOOD)  # not a choice on its form
    assert response.status_code == 422 and _count(app, Tip) == 0


def test_holder_pages_are_seen_by_the_lead_and_the_receiver_only(app, web_world):
    assert _import(app, _login(app, LEAD), web_world.operation.id, GOOD).status_code == 200
    subject_id = _holder_subject(app, "acc1")  # AU: a draft to Bravo Police
    lead = _login(app, "viewer.c@example.org")
    page = lead.get(f"/tips/holders/{subject_id}").get_data(as_text=True)
    assert "w1@example.org" in page and "+61412000002" in page and "What joined the accounts" in page
    # Kinds and platforms as the other pages name them, not as stored.
    assert "<td>E-mail</td>" in page and "<td>Discord</td>" in page and "<td>email</td>" not in page
    assert "Set the jurisdiction" not in page  # a viewer reads, does not decide
    receiver = _login(app, "manager.b@example.org")
    assert receiver.get(f"/tips/holders/{subject_id}").status_code == 404  # a draft is not Bravo's yet
    assert "H-00000" not in receiver.get("/tips/holders").get_data(as_text=True)
    with app.app_context():
        referral_id = db.session.scalar(select(Holder.referral_id).where(Holder.subject_id == subject_id))
        sender = db.session.scalar(select(User).where(User.email == LEAD))
        referrals.transition(db.session, Actor(sender, "127.0.0.1"), referral_id, "send", None)
        db.session.commit()
    assert receiver.get(f"/tips/holders/{subject_id}").status_code == 200
    outsider = _login(app, "manager.a@example.org")
    assert outsider.get(f"/tips/holders/{subject_id}").status_code == 404
    assert "H-000001" not in outsider.get("/tips/holders").get_data(as_text=True)
    assert "tip.csv" not in outsider.get("/tips/").get_data(as_text=True)
    assert "H-00000" not in outsider.get("/tips/review").get_data(as_text=True)
    token = csrf_token_from(outsider.get("/account").get_data(as_text=True))
    post = outsider.client.post(f"/tips/holders/{subject_id}/jurisdiction", data={"csrf_token": token, "country": "NZ"})
    assert post.status_code == 404
    token = csrf_token_from(receiver.get("/account").get_data(as_text=True))
    post = receiver.client.post(f"/tips/holders/{subject_id}/risk", data={"csrf_token": token,
                                                                          "risk_plans_to_meet": "y"})
    assert post.status_code == 403  # the receiver sees the holder; only the lead agency decides
    with app.app_context():
        views = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "tip.holder_view")).all()
        assert len(views) == 2


def _referral_cells(page: str) -> dict[str, str]:
    """The holder list's Referral column (its last), by holder label."""
    cells = {}
    for row in re.findall(r"<tr>(.*?)</tr>", page, re.S):
        label = re.search(r">(H-\d{6})</a>", row)
        if label:
            cells[label.group(1)] = " ".join(re.findall(r"<td>(.*?)</td>", row, re.S)[-1].split())
    return cells


def test_the_holder_list_names_each_holders_referral_where_the_viewer_may_see_it(app, web_world):
    """The lead agency sees the referral's reference, linking to it; the bureau that received the
    case from Bravo sees the holder but not the referral it is on, so only what kind it is; and
    the references are read for the whole page at once."""
    lead = _login(app, LEAD)
    _import(app, lead, web_world.operation.id, tip(*(account(n, email=f"h{n}@example.org") for n in range(1, 5))))
    with app.app_context():
        on = dict(db.session.execute(select(Holder.number, Holder.referral_id)).all())
        package = db.session.get(Referral, on[1])
        package_id, reference = package.id, package.reference
        assert set(on.values()) == {package_id} and package.receiver_agency_id == web_world.agencies["b"].id
    cells = _referral_cells(lead.get("/tips/holders").get_data(as_text=True))
    assert cells == {f"H-00000{n}": f'<a href="/referrals/{package_id}">{reference}</a> (package)'
                     for n in range(1, 5)}
    with app.app_context():
        sender, bravo = _actor(LEAD), _actor("liaison.b@example.org")
        referrals.transition(db.session, sender, package_id, "send", None)
        referrals.transition(db.session, bravo, package_id, "acknowledge", None)
        referrals.grant_transfer_consent(db.session, sender, package_id, None)
        referrals.transition(db.session, bravo, package_id, "transfer", None,
                             transfer_to_agency_id=web_world.agencies["i"].id)
        db.session.commit()
    bureau_page = _login(app, "liaison.i@example.org").get("/tips/holders").get_data(as_text=True)
    assert _referral_cells(bureau_page) == {f"H-00000{n}": "package" for n in range(1, 5)}
    assert reference not in bureau_page
    app.config["PAGE_SIZE"] = 1
    with statements(app) as one_holder:
        lead.get("/tips/holders")
    app.config["PAGE_SIZE"] = 25
    with statements(app) as four_holders:
        lead.get("/tips/holders")
    assert len(four_holders) == len(one_holder)


def test_an_agency_that_passed_a_holders_referral_on_no_longer_sees_the_holder(app, web_world):
    """Bravo receives the package and transfers it on to the Intl Bureau (it sends the transfer's
    successor): the bureau reads the holder's page now, Bravo no longer does."""
    _import(app, _login(app, LEAD), web_world.operation.id, GOOD)
    subject_id = _holder_subject(app, "acc1")
    bravo_browser = _login(app, "liaison.b@example.org")
    with app.app_context():
        lead = _actor(LEAD)
        bravo = _actor("liaison.b@example.org")
        referral_id = db.session.scalar(select(Holder.referral_id).where(Holder.subject_id == subject_id))
        referrals.transition(db.session, lead, referral_id, "send", None)
        referrals.transition(db.session, bravo, referral_id, "acknowledge", None)
        db.session.commit()
    assert bravo_browser.get(f"/tips/holders/{subject_id}").status_code == 200
    with app.app_context():
        referrals.grant_transfer_consent(db.session, lead, referral_id, None)
        referrals.transition(db.session, bravo, referral_id, "transfer", None,
                             transfer_to_agency_id=web_world.agencies["i"].id)
        db.session.commit()
    assert _login(app, "liaison.i@example.org").get(f"/tips/holders/{subject_id}").status_code == 200
    assert bravo_browser.get(f"/tips/holders/{subject_id}").status_code == 404
    assert "H-000001" not in bravo_browser.get("/tips/holders").get_data(as_text=True)
    # Its page of the referral names the subject, without a link to a holder page it may not open.
    assert f'href="/tips/holders/{subject_id}"' not in bravo_browser.get(f"/referrals/{referral_id}").get_data(
        as_text=True)


@pytest.mark.parametrize("let_go", ["decline", "transfer", "withdraw"])
def test_an_agency_that_let_a_holders_referral_go_sees_nothing_a_later_import_adds(app, web_world, let_go):
    """Bravo's page of the referral keeps the identifiers it knew when it let the referral go;
    the agency that holds the case now sees what the next import adds."""
    lead_browser = _login(app, LEAD)
    _import(app, lead_browser, web_world.operation.id, tip(account(1, email="w1@example.org")))
    subject_id = _holder_subject(app, "acc1")
    with app.app_context():
        lead = _actor(LEAD)
        bravo = _actor("liaison.b@example.org")
        referral_id = db.session.scalar(select(Holder.referral_id).where(Holder.subject_id == subject_id))
        referrals.transition(db.session, lead, referral_id, "send", None)
        if let_go == "withdraw":
            referrals.transition(db.session, lead, referral_id, "withdraw", None, "Sent by mistake.")
        else:
            referrals.transition(db.session, bravo, referral_id, "acknowledge", None)
        if let_go == "decline":
            referrals.transition(db.session, bravo, referral_id, "decline", None, "Not ours.")
        if let_go == "transfer":
            referrals.grant_transfer_consent(db.session, lead, referral_id, None)
            successor = referrals.transition(db.session, bravo, referral_id, "transfer", None,
                                             transfer_to_agency_id=web_world.agencies["i"].id).id
        db.session.commit()
    _import(app, lead_browser, web_world.operation.id,
            tip(account(2, email="w1@example.org", phone="+61 412 000 777", username="newhandle")))
    bravo_browser = _login(app, "liaison.b@example.org")
    pages = [f"/referrals/{referral_id}"] + ([f"/referrals/{successor}"] if let_go == "transfer" else [])
    for page in pages:
        text = bravo_browser.get(page).get_data(as_text=True)
        assert "w1@example.org" in text, page  # known when Bravo let it go
        assert "+61412000777" not in text and "newhandle" not in text, page
    if let_go == "transfer":  # the bureau holds the case now
        text = _login(app, "liaison.i@example.org").get(f"/referrals/{successor}").get_data(as_text=True)
        assert "w1@example.org" in text and "+61412000777" in text and "newhandle" in text


def test_a_tip_draft_is_edited_for_what_it_says_and_points_to_the_holders_for_the_rest(app, web_world):
    browser = _login(app, LEAD)
    _import(app, browser, web_world.operation.id, tip(account(1, email="w1@example.org", uploads_b="2")))
    with app.app_context():
        draft = db.session.get(Referral, db.session.scalar(select(Holder.referral_id)))
        form = {"receiver_agency_id": str(draft.receiver_agency_id), "jurisdiction": draft.jurisdiction,
                "operation_id": str(draft.operation_id), "priority": draft.priority.value, "grade_a": "0",
                "grade_b": "2", "grade_c": "0", "material_description": "", "tlp": draft.tlp.value,
                "handling_code": draft.handling_code.value, "summary": "Written by the desk.",
                "version": str(draft.version)}
        alpha = str(web_world.agencies["a"].id)
    edit = f"/referrals/{draft.id}/edit"
    subject_id = _holder_subject(app, "acc1")
    edit_page = browser.get(edit).get_data(as_text=True)
    assert "carries 1 account holder of a provider tip" in edit_page
    assert f'<a href="/tips/holders/{subject_id}">H-000001</a>' in edit_page  # where to change it
    assert f'<h3><a href="/tips/holders/{subject_id}">' in browser.get(f"/referrals/{draft.id}").get_data(as_text=True)
    moved = browser.post(edit, {**form, "receiver_agency_id": alpha, "jurisdiction": "NZ"}, token_from=edit)
    text = moved.get_data(as_text=True)
    assert moved.status_code == 422
    assert re.search(r'id="receiver_agency_id-error">This draft carries 1 account holder of a provider tip: where it '
                     r"goes follows them", text)
    assert browser.post(edit, form, token_from=edit).status_code == 303
    with app.app_context():
        saved = db.session.get(Referral, draft.id)
        assert (saved.summary, saved.receiver_agency_id) == ("Written by the desk.", draft.receiver_agency_id)


def test_the_tips_page_leads_back_to_each_of_the_users_uploads(app, web_world):
    """Refused and skipped imports left no tip behind, or a reject file: the person finds their
    pages again from the tips page; a colleague does not."""
    browser = _login(app, LEAD)
    bad = tip(account(1), account(2, email="not-an-email"))
    refused = _import(app, browser, web_world.operation.id, bad).request.path
    skipped = _import(app, browser, web_world.operation.id, bad, skip=True).request.path
    page = browser.get("/tips/").get_data(as_text=True)
    assert "Your uploads" in page
    for path in (refused, skipped):
        assert f'href="{path}">Details</a>' in page
        assert f'href="{path}/rejects.csv">Reject file</a>' in page
    assert ">rejected<" in page and ">done<" in page
    colleague = _login(app, "manager.c@example.org").get("/tips/").get_data(as_text=True)
    assert "Your uploads" not in colleague and refused not in colleague


def test_an_import_page_is_not_read_after_its_importer_moves_to_another_agency(app, web_world):
    """The page holds the problems and the reject file of the lead agency's import."""
    browser = _login(app, LEAD)
    page = _import(app, browser, web_world.operation.id, tip(account(1), account(2, email="not-an-email")),
                   skip=True)
    assert "Download the reject file" in page.get_data(as_text=True)
    with app.app_context():
        moved = db.session.scalar(select(User).where(User.email == LEAD))
        moved.agency_id = web_world.agencies["a"].id
        db.session.commit()
    assert browser.get(page.request.path).status_code == 404
    assert browser.get(f"{page.request.path}/rejects.csv").status_code == 404


def test_the_review_list_and_a_decision_from_it(app, web_world):
    browser = _login(app, LEAD)
    assert _import(app, browser, web_world.operation.id, GOOD).status_code == 200
    subject_id = _holder_subject(app, "acc3")  # AU hint, NZ address: a tie
    page = browser.get("/tips/review").get_data(as_text=True)
    assert f"/tips/holders/{subject_id}" in page and "AU 2, NZ 1" in page  # the weighed evidence
    assert "its accounts point to more than one country" in page
    # A one-click decision says what it does, and to which holder, beyond its country code.
    label = re.search(r'H-\d+', page.split(f'href="/tips/holders/{subject_id}">', 1)[1]).group(0)
    assert f'aria-label="Set the jurisdiction of {label} to Australia">AU</button>' in page
    token = csrf_token_from(page)
    seen = _seen(browser.get(f"/tips/holders/{subject_id}").get_data(as_text=True))
    response = browser.client.post(f"/tips/holders/{subject_id}/jurisdiction",
                                   data={"csrf_token": token, "seen": seen, "country": "NZ", "back": "review"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/tips/review")
    assert f"/tips/holders/{subject_id}" not in browser.get("/tips/review").get_data(as_text=True)
    with app.app_context():
        holder = db.session.scalar(select(Holder).where(Holder.subject_id == subject_id))
        assert holder.jurisdiction == "NZ" and holder.receiver_agency_id == web_world.agencies["a"].id
    decided = browser.get(f"/tips/holders/{subject_id}").get_data(as_text=True)
    assert "Evidence for it</dt><dd>33% (a person decided)" in decided and "Confidence</dt>" not in decided
    bad = browser.client.post(f"/tips/holders/{subject_id}/jurisdiction", data={"csrf_token": token, "country": "XX"})
    assert bad.status_code == 422


def _closed_by_bravo(app, subject_id: int) -> tuple[int, str]:
    """The holder's referral sent by the lead, worked by Bravo (acknowledged, accepted, an
    outcome) and closed: (its id, its reference)."""
    with app.app_context():
        lead, bravo = _actor(LEAD), _actor("liaison.b@example.org")
        referral_id = db.session.scalar(select(Holder.referral_id).where(Holder.subject_id == subject_id))
        referrals.transition(db.session, lead, referral_id, "send", None)
        for action in ("acknowledge", "accept"):
            referrals.transition(db.session, bravo, referral_id, action, None)
        referrals.record_outcome(db.session, bravo, referral_id,
                                 referrals.OutcomeData(occurred_on=utcnow().date(), arrests=1))
        closed = referrals.transition(db.session, bravo, referral_id, "close", None)
        db.session.commit()
        return referral_id, closed.reference


def test_the_review_list_says_a_holder_gained_accounts_after_its_referral_was_closed(app, web_world):
    """Bravo closed the case; a later tip brings the holder another account. The lead's review
    list and holder page say why it waits, and placing it from the list routes it again into a
    new draft; Bravo's page of the holder does not give the lead's reason."""
    browser = _login(app, LEAD)
    _import(app, browser, web_world.operation.id, tip(account(1, email="w1@example.org")))
    subject_id = _holder_subject(app, "acc1")
    referral_id, reference = _closed_by_bravo(app, subject_id)
    why = f"1 new account after its referral {reference} was closed by Bravo Police"
    _import(app, browser, web_world.operation.id, tip(account(2, email="w1@example.org")))
    page = browser.get("/tips/review").get_data(as_text=True)
    assert f"/tips/holders/{subject_id}" in page and f"<td>{why}</td>" in page
    assert f"On the review list</dt><dd>{why}</dd>" in browser.get(f"/tips/holders/{subject_id}").get_data(
        as_text=True)
    assert why not in _login(app, "liaison.b@example.org").get(f"/tips/holders/{subject_id}").get_data(as_text=True)
    seen = _seen(browser.get(f"/tips/holders/{subject_id}").get_data(as_text=True))
    response = browser.client.post(f"/tips/holders/{subject_id}/jurisdiction", data={
        "csrf_token": csrf_token_from(page), "seen": seen, "country": "AU", "back": "review"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/tips/review")
    told = browser.get("/tips/review").get_data(as_text=True)
    with app.app_context():
        holder = db.session.scalar(select(Holder).where(Holder.subject_id == subject_id))
        draft = db.session.get(Referral, holder.referral_id)
        assert (draft.status.value, draft.receiver_agency_id, holder.needs_review) == (
            "draft", web_world.agencies["b"].id, False)
        # From the list, the row is gone: the message says which holder went where.
        assert (f"Jurisdiction of {holder.label} set to Australia. The holder was routed again, to Bravo Police, "
                f"on draft {draft.reference}.") in told
        assert db.session.get(Referral, referral_id).status.value == "closed"


def test_a_holder_is_left_with_its_closed_case_from_the_review_list_or_its_page(app, web_world):
    """The review list offers to leave a closed case's holder where it is (its other rows do
    not); leaving it takes it off the list and keeps the list's filters. The holder page offers
    the same with a note."""
    browser = _login(app, LEAD)
    _import(app, browser, web_world.operation.id, tip(account(1, email="w1@example.org"),
                                                      account(3, ip_country="NZ", email="w3@example.org")))
    subject_id = _holder_subject(app, "acc1")
    referral_id, _reference = _closed_by_bravo(app, subject_id)
    _import(app, browser, web_world.operation.id, tip(account(2, email="w1@example.org")))
    filtered = f"operation={web_world.operation.id}"
    page = browser.get(f"/tips/review?{filtered}").get_data(as_text=True)
    tie = _holder_subject(app, "acc3")  # on the list for its evidence: nothing to leave
    assert f'/tips/holders/{tie}"' in page and f"/tips/holders/{tie}/leave-closed" not in page
    assert f'name="back_operation" value="{web_world.operation.id}"' in page  # the list comes back as it was
    assert f"/tips/holders/{subject_id}/leave-closed" in page
    holder_page = browser.get(f"/tips/holders/{subject_id}").get_data(as_text=True)
    assert "Leave with the closed case" in holder_page
    stale = browser.client.post(f"/tips/holders/{subject_id}/leave-closed", data={
        "csrf_token": csrf_token_from(page), "seen": "2020-01-01T00:00:00+00:00"}, follow_redirects=True)
    assert "This account holder was changed since you loaded the page" in stale.get_data(as_text=True)
    response = browser.client.post(f"/tips/holders/{subject_id}/leave-closed", data={
        "csrf_token": csrf_token_from(page), "seen": _seen(holder_page), "back": "review", "back_operation": web_world.operation.id})
    assert response.status_code == 303 and response.headers["Location"].endswith(f"/tips/review?{filtered}")
    listed = browser.get(response.headers["Location"]).get_data(as_text=True)
    assert "Left with its closed case" in listed and f"/tips/holders/{subject_id}\"" not in listed
    assert "Leave with the closed case" not in browser.get(f"/tips/holders/{tie}").get_data(as_text=True)
    with app.app_context():
        holder = db.session.scalar(select(Holder).where(Holder.subject_id == subject_id))
        assert (holder.referral_id, holder.needs_review) == (referral_id, False)


def _holder_grown_after_its_case_closed(app, web_world):
    """(the lead's browser, the subject, its holder page) of a holder whose case Bravo closed
    and that then gained an account."""
    browser = _login(app, LEAD)
    _import(app, browser, web_world.operation.id, tip(account(1, email="w1@example.org")))
    subject_id = _holder_subject(app, "acc1")
    _closed_by_bravo(app, subject_id)
    _import(app, browser, web_world.operation.id, tip(account(2, email="w1@example.org")))
    return browser, subject_id, browser.get(f"/tips/holders/{subject_id}").get_data(as_text=True)


def test_each_note_on_the_holder_page_has_its_own_label(app, web_world):
    """Setting the jurisdiction and leaving the holder with its closed case both ask why: the
    closed-case form's label leads to its own text box, not to the jurisdiction's."""
    browser, subject_id, page = _holder_grown_after_its_case_closed(app, web_world)
    forms = dict(re.findall(r'<form method="post" action="/tips/holders/\d+/([a-z-]+)"(.*?)</form>', page, re.S))
    for action in ("jurisdiction", "leave-closed"):
        target = re.search(r'<label for="([^"]+)">Why', forms[action]).group(1)
        assert page.count(f'id="{target}"') == 1 and re.search(rf'<textarea[^>]*id="{target}"', forms[action]), action
    response = browser.client.post(f"/tips/holders/{subject_id}/leave-closed", data={
        "csrf_token": csrf_token_from(page), "seen": _seen(page), "note": "Nothing new for the case."})
    assert response.status_code == 303
    [left] = _audit_entries(app, "tip.holder_left_closed")
    assert json.loads(left.detail)["note"] == "Nothing new for the case."


def test_a_note_the_closed_case_form_refuses_is_named_beside_it_and_kept(app, web_world):
    """A note that cannot be kept (a control character pasted in) is not "the form could not be
    read": the page says what is wrong beside the note, with the note as typed."""
    browser, subject_id, page = _holder_grown_after_its_case_closed(app, web_world)
    refused = browser.client.post(f"/tips/holders/{subject_id}/leave-closed", data={
        "csrf_token": csrf_token_from(page), "seen": _seen(page), "note": "Nothing new\x0b for the case."})
    text = refused.get_data(as_text=True)
    assert refused.status_code == 422
    assert "could not be read" not in text
    assert re.search(r'<textarea[^>]*\bid="leave_note"[^>]*>\s*Nothing new\x0b for the case.</textarea>', text), text
    assert 'id="leave_note-error">Remove the control characters' in text
    with app.app_context():
        assert db.session.scalar(select(Holder.needs_review).where(Holder.subject_id == subject_id)) is True


def test_risk_flags_make_a_p1_holder_with_its_own_referral(app, web_world):
    browser = _login(app, LEAD)
    data = tip(account(1, email="r1@example.org", uploads_a="1"), account(2, email="r2@example.org", uploads_b="1"))
    assert _import(app, browser, web_world.operation.id, data).status_code == 200
    subject_id = _holder_subject(app, "acc1")
    page = browser.get(f"/tips/holders/{subject_id}").get_data(as_text=True)
    response = browser.client.post(f"/tips/holders/{subject_id}/risk", data={
        "csrf_token": csrf_token_from(page), "seen": _seen(page), "risk_access_to_children": "y"})
    assert response.status_code == 303
    page = browser.get(f"/tips/holders/{subject_id}").get_data(as_text=True)
    assert "now P1" in page and "Access to children" in page
    with app.app_context():
        holder = db.session.scalar(select(Holder).where(Holder.subject_id == subject_id))
        referral = db.session.get(Referral, holder.referral_id)
        assert referral.priority.value == "P1" and not holder.packaged


def test_unrouted_page_lists_countries_without_a_focal_point(app, web_world):
    browser = _login(app, LEAD)
    data = tip(account(1, country_hint="FR", ip_country="FR"), account(2, country_hint="BR", ip_country="BR"))
    assert _import(app, browser, web_world.operation.id, data).status_code == 200
    page = browser.get("/tips/unrouted").get_data(as_text=True)
    assert "France" in page and "Brazil" in page and "Intl Bureau" in page
    for code in ("FR", " fr"):  # as a link writes it, or as typed
        filtered = browser.get(f"/tips/unrouted?country={code}").get_data(as_text=True)
        assert "H-000001" in filtered and "H-000002" not in filtered and "not understood" not in filtered


def test_the_unrouted_page_says_why_a_country_has_no_receiver(app, web_world):
    """Routing never sends a holder to the lead agency itself: with no other international
    body, the page says so, whether or not the lead is one."""
    with app.app_context():
        intl = db.session.get(Agency, web_world.agencies["i"].id)
        intl.kind, intl.country_code = AgencyKind.GOVERNMENT, "US"
        db.session.commit()
    browser = _login(app, LEAD)
    assert _import(app, browser, web_world.operation.id, tip(account(1, country_hint="FR", ip_country="FR"))
                   ).status_code == 200
    page = browser.get("/tips/unrouted").get_data(as_text=True)
    assert "nobody: no international body in the directory besides the lead agency" in page


def test_flags_after_sending_escalate_the_referral_both_agencies_see_it(app, web_world):
    browser = _login(app, LEAD)
    data = tip(account(1, email="e1@example.org", uploads_a="1"), account(2, email="e2@example.org", uploads_b="1"))
    assert _import(app, browser, web_world.operation.id, data).status_code == 200
    subject_id = _holder_subject(app, "acc1")
    with app.app_context():
        referral_id = db.session.scalar(select(Holder.referral_id).where(Holder.subject_id == subject_id))
        lead = db.session.scalar(select(User).where(User.email == LEAD))
        referrals.transition(db.session, Actor(lead, "127.0.0.1"), referral_id, "send", None)
        db.session.commit()
    page = browser.get(f"/tips/holders/{subject_id}").get_data(as_text=True)
    response = browser.client.post(f"/tips/holders/{subject_id}/risk", data={
        "csrf_token": csrf_token_from(page), "seen": _seen(page), "risk_plans_to_meet": "y"})
    assert response.status_code == 303
    told = browser.get(response.headers["Location"]).get_data(as_text=True)
    assert "was sent already and stays with Bravo Police, at priority P1." in told
    for email in (LEAD, "liaison.b@example.org"):  # the sender and the receiver
        page = _login(app, email).get(f"/referrals/{referral_id}").get_data(as_text=True)
        assert "escalate" in page and "Priority raised from P3 to P1: holder H-000001" in page
        assert "plans to meet" in page
    # The receiver's notifications say so and lead to the referral.
    notices = _login(app, "liaison.b@example.org").get("/notifications").get_data(as_text=True)
    assert "priority raised from P3 to P1" in notices and f'href="/referrals/{referral_id}"' in notices
    with app.app_context():
        referral = db.session.get(Referral, referral_id)
        assert (referral.status.value, referral.priority.value) == ("sent", "P1")


# --- SQLite's one writer, and imports that break off late ----------------------------------------

@pytest.fixture
def quick_lock_app(database_urls):
    """The app on SQLite, its requests waiting 200 ms at most for the write lock, with the world."""
    from tests.factories import build_world

    app = _make_app(database_urls["sqlite"], SQLITE_BUSY_TIMEOUT_MS=200)
    with app.app_context():
        world = build_world(db.session, app.extensions["handoff_passwords"])
        db.session.commit()
    yield app, world
    engine = app.extensions["handoff_db"]["engine"]
    _empty_all_tables(engine)
    engine.dispose()


@contextmanager
def _write_lock_held(app):
    """SQLite's write lock, taken by another connection (as an import's transaction holds it)."""
    path = app.extensions["handoff_db"]["engine"].url.database
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_an_upload_while_an_import_writes_is_told_to_try_again_and_saves_nothing(quick_lock_app):
    app, world = quick_lock_app
    browser = _login(app, LEAD)
    with _write_lock_held(app):
        response = _upload(browser, world.operation.id, GOOD)
    assert response.status_code == 503 and response.headers["Retry-After"] == "60"
    assert "a tip import is writing its rows" in response.get_data(as_text=True)
    assert _count(app, TipImport) == 0
    assert _finished(app, browser, _upload(browser, world.operation.id, GOOD)).status_code == 200  # later it goes


def test_checking_rows_goes_on_when_its_progress_cannot_be_written(quick_lock_app):
    app, world = quick_lock_app
    import_id = _record_running_import(app, world, imports.this_process())
    progress = background._Progress(app, import_id)
    with _write_lock_held(app):
        progress("validate", 10, 100)  # a figure is not worth waiting for, nor failing the import
    progress("validate", 100, 100)
    with app.app_context():
        assert db.session.get(TipImport, import_id).done == 100


def test_a_second_import_waits_for_the_first_to_finish_writing(quick_lock_app, monkeypatch):
    app, world = quick_lock_app
    reached, release = threading.Event(), threading.Event()

    def hold_the_first() -> None:  # the first import holds the write lock here
        if not reached.is_set():
            reached.set()
            release.wait(timeout=60)

    monkeypatch.setattr(importer, "_pause_for_tests", hold_the_first)

    def run(data: bytes, name: str) -> None:
        with app.app_context():
            lead = db.session.scalar(select(User).where(User.email == LEAD))
            importer.import_tip(db.session, Actor(lead, "test"), world.operation.id, data, name)
            db.session.commit()

    first = threading.Thread(target=run, args=(GOOD, "first.csv"))
    first.start()
    assert reached.wait(timeout=60)
    threading.Timer(1.0, release.set).start()  # five times as long as a request waits
    run(tip(account(9, email="second@example.org")), "second.csv")
    first.join(timeout=60)
    with app.app_context():
        assert sorted(db.session.scalars(select(Tip.file_name))) == ["first.csv", "second.csv"]


def test_an_import_that_fails_as_it_commits_is_recorded_as_failed(app, web_world, monkeypatch):
    recorded = imports.record_done

    def record_what_cannot_be_stored(record, result):
        recorded(record, result)
        record.status = None  # the commit's flush refuses it

    monkeypatch.setattr(imports, "record_done", record_what_cannot_be_stored)
    browser = _login(app, LEAD)
    page = _import(app, browser, web_world.operation.id, GOOD)
    assert "The import broke off and wrote nothing" in page.get_data(as_text=True)
    assert _count(app, Tip) == 0
    with app.app_context():
        assert db.session.scalars(select(TipImport.status)).one() is TipImportStatus.FAILED


def test_a_file_name_too_long_to_keep_whole_still_imports(app, web_world):
    browser = _login(app, LEAD)
    page = _import(app, browser, web_world.operation.id, GOOD, name="x" * 300 + ".csv")
    assert "Imported into LANTERN" in page.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalars(select(Tip.file_name)).one() == "x" * 251 + ".csv"


def _holder_page(app, browser: Browser, account_key: str):
    return browser.get(f"/tips/holders/{_holder_subject(app, account_key)}").get_data(as_text=True)


def test_an_absorbed_holder_says_where_its_accounts_went_and_why_no_decision_is_taken(app, web_world):
    browser = _login(app, LEAD)
    _import(app, browser, web_world.operation.id, tip(account(1, email="left@example.org")))
    # Its accounts point to two countries: it was on the review list when it was absorbed.
    _import(app, browser, web_world.operation.id, tip(account(2, email="right@example.org", country_hint="AU",
                                                              ip_country="NZ")))
    absorbed_subject = _holder_subject(app, "acc2")
    _import(app, browser, web_world.operation.id, tip(account(3, email="left@example.org", phone="+61 412 000 009"),
                                                      account(4, email="right@example.org", phone="+61 412 000 009")))
    page = browser.get(f"/tips/holders/{absorbed_subject}").get_data(as_text=True)
    assert "Merged into" in page and "none: its 1 went to H-000001" in page
    assert "A single account." not in page and "Receiving agency" not in page
    # Off every list, and no decision is taken on it: not shown as waiting for review. Its
    # accounts table says where they went instead of standing empty.
    with app.app_context():
        assert db.session.scalar(select(Holder.needs_review).where(Holder.subject_id == absorbed_subject))
    assert "needs review" not in page
    assert '<td colspan="10">None: they went to H-000001.</td>' in page
    token = csrf_token_from(page)
    refused = browser.client.post(f"/tips/holders/{absorbed_subject}/risk",
                                  data={"csrf_token": token, "risk_plans_to_meet": "y"})
    assert refused.status_code == 422
    assert "merged into another; decide on that one" in refused.get_data(as_text=True)
    # A form sent from the page as it was before the merge, incomplete: what was wrong is shown,
    # though the form itself is no longer on the page.
    incomplete = browser.client.post(f"/tips/holders/{absorbed_subject}/jurisdiction",
                                     data={"csrf_token": token, "country": "", "note": "x" * 2001})
    text = incomplete.get_data(as_text=True)
    assert incomplete.status_code == 422 and 'action="/tips/holders/' not in text
    assert re.search(r'class="flash error" role="alert">Jurisdiction[^<]*: ', text), text


def test_the_receiver_of_a_holder_merged_away_is_told_without_seeing_the_other_referral(app, web_world):
    """H2 (sent to Alpha) is merged into H1 (sent to Bravo): Alpha's page for H2 says so, and
    shows nothing of H1."""
    browser = _login(app, LEAD)
    _import(app, browser, web_world.operation.id, tip(
        account(1, email="p@example.org"), account(2, username="kiwi", country_hint="NZ", ip_country="NZ")))
    left, right = _holder_subject(app, "acc1"), _holder_subject(app, "acc2")
    with app.app_context():
        lead = _actor(LEAD)
        for subject in (left, right):
            referral_id = db.session.scalar(select(Holder.referral_id).where(Holder.subject_id == subject))
            referrals.transition(db.session, lead, referral_id, "send", None)
        db.session.commit()
    _import(app, browser, web_world.operation.id, tip(account(3, email="p@example.org", username="kiwi")))
    page = _login(app, "liaison.a@example.org").get(f"/tips/holders/{right}").get_data(as_text=True)
    assert "Merged into another holder of the operation, which is not on a referral of yours" in page
    assert "none: its 1 went to the holder it was merged into" in page
    assert "H-000001" not in page and "p@example.org" not in page


def test_the_dates_a_provider_gave_show_as_given_whatever_the_viewers_zone(app, web_world):
    with app.app_context():
        lead = db.session.scalar(select(User).where(User.email == LEAD))
        lead.timezone = "America/New_York"
        db.session.commit()
    browser = _login(app, LEAD)
    _import(app, browser, web_world.operation.id, tip(account(1, first_seen="2020-01-05", last_seen="2020-03-01")))
    assert "2020-01-05 – 2020-03-01" in _seen_cells(_holder_page(app, browser, "acc1"))


def _seen(page: str) -> str:
    """When the holder last changed, as a page with its decision forms shows it."""
    return re.search(r'name="seen" type="hidden" value="([^"]+)"', page).group(1)


def test_a_decision_from_a_page_older_than_the_holder_is_refused_not_overwriting(app, web_world):
    liaison, manager = _login(app, LEAD), _login(app, "manager.c@example.org")
    _import(app, liaison, web_world.operation.id, tip(account(1, country_hint="AU", ip_country="NZ")))
    subject = _holder_subject(app, "acc1")
    stale = liaison.get(f"/tips/holders/{subject}").get_data(as_text=True)
    seen = _seen(stale)
    fresh = manager.get(f"/tips/holders/{subject}").get_data(as_text=True)
    done = manager.client.post(f"/tips/holders/{subject}/risk", data={
        "csrf_token": csrf_token_from(fresh), "seen": _seen(fresh), "risk_access_to_children": "y"})
    assert done.status_code == 303
    refused = liaison.client.post(f"/tips/holders/{subject}/risk", data={
        "csrf_token": csrf_token_from(stale), "seen": seen, "risk_previous_convictions": "y"})
    assert refused.status_code == 422 and "This account holder was changed" in refused.get_data(as_text=True)
    # The review list's one-click buttons carry the same guard.
    review = liaison.client.post(f"/tips/holders/{subject}/jurisdiction", data={
        "csrf_token": csrf_token_from(stale), "seen": seen, "country": "AU", "back": "review"})
    assert review.status_code == 422
    with app.app_context():
        holder = db.session.scalar(select(Holder).where(Holder.subject_id == subject))
        assert (holder.risk_access_to_children, holder.risk_previous_convictions) == (True, False)
        assert holder.jurisdiction_source.value == "evidence"
    again = refused.get_data(as_text=True)  # the page drawn again shows the holder as it is now
    retried = liaison.client.post(f"/tips/holders/{subject}/risk", data={
        "csrf_token": csrf_token_from(again), "seen": _seen(again), "risk_access_to_children": "y",
        "risk_previous_convictions": "y"})
    assert retried.status_code == 303
    # A decision that does not say when its page showed the holder is refused too.
    page = liaison.get(f"/tips/holders/{subject}").get_data(as_text=True)
    for path, form in (("risk", {"risk_plans_to_meet": "y"}), ("jurisdiction", {"country": "NZ"})):
        blind = liaison.client.post(f"/tips/holders/{subject}/{path}", data={"csrf_token": csrf_token_from(page),
                                                                              **form})
        assert blind.status_code == 422 and "This account holder was changed" in blind.get_data(as_text=True)
    with app.app_context():
        holder = db.session.scalar(select(Holder).where(Holder.subject_id == subject))
        assert (holder.risk_plans_to_meet, holder.jurisdiction_source.value) == (False, "evidence")


def test_the_operation_funnel_counts_a_merged_holder_once(app, web_world):
    """Two holders merged by a later import are one holder with all four accounts."""
    browser = _login(app, LEAD)
    operation_id = web_world.operation.id
    _import(app, browser, operation_id, tip(account(1, email="left@example.org")))
    _import(app, browser, operation_id, tip(account(2, email="right@example.org")))
    _import(app, browser, operation_id, tip(account(3, email="left@example.org", phone="+61 412 000 009"),
                                            account(4, email="right@example.org", phone="+61 412 000 009")))
    response = browser.get(f"/dashboards/operation/funnel.json?operation={operation_id}")
    assert response.status_code == 200
    total = [row for row in response.get_json()["rows"] if row["country_code"] == "ALL"][0]
    assert (total["holders"], total["accounts"]) == (1, 4)


@pytest.mark.parametrize("path", ["/tips/holders", "/tips/review", "/tips/unrouted", "/referrals", "/admin/audit"])
def test_query_arguments_named_like_url_for_parameters_do_not_break_a_lists_pager(app, web_world, path):
    """The pager's links carry the list's filters, and only them: `endpoint` or `_method` in the
    address were handed to url_for (a 500)."""
    app.config["PAGE_SIZE"] = 1
    browser = _login(app, LEAD)
    _import(app, browser, web_world.operation.id, tip(account(1, email="a1@example.org", country_hint="FR"),
                                                       account(2, email="a2@example.org", country_hint="FR",
                                                               ip_country="AU"),
                                                       account(3, email="a3@example.org")))
    manager = _login(app, "manager.c@example.org")
    kept = {"/tips/holders": "priority=P4", "/tips/review": "priority=P4", "/tips/unrouted": "priority=P4",
            "/referrals": "status=draft", "/admin/audit": "action=tip.import"}[path]
    for query in ("endpoint=x", "_method=POST", "_external=1&_scheme=javascript"):
        response = manager.get(f"{path}?{kept}&{query}")
        assert response.status_code == 200, (query, response.status_code)
        links = re.findall(r'href="([^"]*(?:page=2|audit\.csv)[^"]*)"', response.get_data(as_text=True))
        assert links and all(kept in link and "endpoint" not in link and "_method" not in link
                             and "_scheme" not in link for link in links), links


def test_one_import_at_a_time_each_a_second_upload_shows_the_running_one(app, web_world, monkeypatch):
    """A double click, or a second file before the first has ended: no second import runs."""
    release = threading.Event()
    imported = importer.import_tip

    def held(*args, **kwargs):
        release.wait(timeout=60)
        return imported(*args, **kwargs)

    monkeypatch.setattr(importer, "import_tip", held)
    browser = _login(app, LEAD)
    first = _upload(browser, web_world.operation.id, GOOD)
    try:
        second = _upload(browser, web_world.operation.id, tip(account(9)))
        assert second.status_code == 303 and second.headers["Location"] == first.headers["Location"]
        assert "Your last import is still running" in browser.get(second.headers["Location"]).get_data(as_text=True)
        assert _count(app, TipImport) == 1
    finally:
        release.set()
    assert "Imported into LANTERN" in _finished(app, browser, first).get_data(as_text=True)
    # Once it has ended, the next one starts; so it does after an import whose process stopped.
    assert "Imported into LANTERN" in _import(app, browser, web_world.operation.id, tip(account(9))).get_data(
        as_text=True)
    stopped = _record_running_import(app, web_world, _ended_process())
    started = _upload(browser, web_world.operation.id, tip(account(10)))
    assert started.headers["Location"] != f"/tips/imports/{stopped}"
    assert "Imported into LANTERN" in _finished(app, browser, started).get_data(as_text=True)
    with app.app_context():
        assert db.session.get(TipImport, stopped).status is TipImportStatus.FAILED


def test_an_import_committed_but_not_yet_started_counts_as_running(app, web_world, monkeypatch):
    """Between the commit of an upload's record and the start of its thread, a second upload
    (the other click of a double click) finds the import running, not stopped: taken for
    stopped, it would be marked interrupted and a second import started beside it."""
    from sqlalchemy import event

    found_stopped = []
    start_after_commit = background.start_after_commit

    def watched(session, app_, import_id, *args):
        def in_between(_session) -> None:  # after the commit, before the import's thread starts
            with app.app_context():
                record = db.session.get(TipImport, import_id)
                found_stopped.append(imports.runner_stopped(
                    record, running_here=background.running_here(app, import_id)))

        event.listen(session, "after_commit", in_between, once=True)
        start_after_commit(session, app_, import_id, *args)

    monkeypatch.setattr(background, "start_after_commit", watched)
    browser = _login(app, LEAD)
    response = _upload(browser, web_world.operation.id, GOOD)
    assert found_stopped == [False]
    assert "Imported into LANTERN" in _finished(app, browser, response).get_data(as_text=True)


def test_the_second_of_two_uploads_at_once_shows_the_import_the_first_started(app, web_world, monkeypatch):
    """Both requests of a double click pass the check for a running import before either has
    committed; the second, refused by the database, shows the import the first started."""
    running = _record_running_import(app, web_world, "another-server.example|1|4242|boot.1")
    checks = []
    own_running_import = imports.own_running_import

    def not_yet_committed_the_first_time(session, user):
        checks.append(user.id)
        return None if len(checks) == 1 else own_running_import(session, user)

    monkeypatch.setattr(imports, "own_running_import", not_yet_committed_the_first_time)
    browser = _login(app, LEAD)
    response = _upload(browser, web_world.operation.id, tip(account(9)))
    assert response.status_code == 303 and response.headers["Location"] == f"/tips/imports/{running}"
    assert "Your last import is still running" in browser.get(response.headers["Location"]).get_data(as_text=True)
    assert _count(app, TipImport) == 1


def test_two_uploads_at_once_start_one_import(app, web_world):
    """Both requests pass the page's check before either commits: the database lets one start."""
    from app.services import Conflict

    with app.app_context():
        actor = _actor(LEAD)
        imports.start(db.session, actor, web_world.operation.id, "tip.csv", GOOD, False)
        db.session.commit()
        with pytest.raises(Conflict, match="Your last import is still running"):
            imports.start(db.session, actor, web_world.operation.id, "tip.csv", GOOD, False)
        db.session.rollback()
        assert db.session.scalar(select(func.count()).select_from(TipImport)) == 1


def test_the_summary_says_how_many_known_accounts_the_file_gives_otherwise(app, web_world):
    browser = _login(app, LEAD)
    _import(app, browser, web_world.operation.id, tip(account(1, email="k1@example.org"), account(2)))
    page = _import(app, browser, web_world.operation.id, tip(account(1, email="other@example.org"), account(2)))
    text = page.get_data(as_text=True)
    assert "Accounts already known</dt><dd>2; 1 of them given otherwise in this file" in text
    with app.app_context():
        assert db.session.scalar(select(TipAccount.email).where(TipAccount.account_key == "acc1")) == "k1@example.org"


def _moved_to_alpha_with_an_operation(app, web_world) -> int:
    """The lead's liaison officer moves to Alpha Police, which opens an operation: its id."""
    from datetime import date

    from app.models import Operation

    with app.app_context():
        db.session.scalar(select(User).where(User.email == LEAD)).agency_id = web_world.agencies["a"].id
        other = Operation(code="HARBOUR", lead_agency_id=web_world.agencies["a"].id, opened_on=date(2026, 2, 1))
        db.session.add(other)
        db.session.commit()
        return other.id


def test_an_interrupted_import_in_an_operation_no_longer_theirs_does_not_block_the_next(app, web_world):
    stopped = _record_running_import(app, web_world, _ended_process())
    other_id = _moved_to_alpha_with_an_operation(app, web_world)
    browser = _login(app, LEAD)
    assert "Imported into HARBOUR" in _import(app, browser, other_id, GOOD).get_data(as_text=True)
    with app.app_context():
        assert db.session.get(TipImport, stopped).status is TipImportStatus.FAILED


@pytest.mark.parametrize("data, refusal", [(b"", "The file is empty."), (PNG, "PNG image")])
def test_an_upload_refused_for_its_file_keeps_the_interruption_it_found(app, web_world, data, refusal):
    """The next upload finds the last import's process stopped and records it: the upload's own
    refusal (an empty file, an image) does not take the interruption off the audit trail."""
    stopped = _record_running_import(app, web_world, _ended_process())
    browser = _login(app, LEAD)
    assert _upload(browser, web_world.operation.id, data).status_code == 422
    with app.app_context():
        assert db.session.get(TipImport, stopped).status is TipImportStatus.FAILED
    reasons = [json.loads(entry.detail)["reason"] for entry in _audit_entries(app, "tip.import")]
    assert len(reasons) == 2, reasons
    assert any("interrupted" in reason for reason in reasons) and any(refusal in reason for reason in reasons)


def test_an_import_still_running_elsewhere_is_named_not_linked(app, web_world, monkeypatch):
    """The running import is in an operation the person's agency no longer leads: the next
    upload waits for it, and says so without leading to a page they may not read."""
    release = threading.Event()
    imported = importer.import_tip
    monkeypatch.setattr(importer, "import_tip", lambda *a, **k: (release.wait(timeout=60), imported(*a, **k))[1])
    browser = _login(app, LEAD)
    first = _upload(browser, web_world.operation.id, GOOD)
    try:
        other_id = _moved_to_alpha_with_an_operation(app, web_world)
        again = _login(app, LEAD)
        refused = _upload(again, other_id, GOOD)
        assert refused.status_code == 409 and "Your last import is still running" in refused.get_data(as_text=True)
        assert _count(app, TipImport) == 1
    finally:
        release.set()
    _finished(app, browser, first)


def test_an_agency_that_leads_nothing_is_told_whose_lists_these_are(app, web_world):
    browser = _login(app, "liaison.b@example.org")
    for page in ("/tips/review", "/tips/unrouted"):
        text = browser.get(page).get_data(as_text=True)
        assert "Your agency leads no operation: this list is the lead agency's work." in text
        assert "Every holder has a focal point." not in text
    lead = _login(app, LEAD).get("/tips/unrouted").get_data(as_text=True)
    assert "leads no operation" not in lead and "Every holder has a focal point." in lead


def test_the_upload_form_asks_for_the_operation_in_words(app, web_world):
    browser = _login(app, LEAD)
    token = csrf_token_from(browser.get("/tips/import").get_data(as_text=True))
    page = browser.client.post("/tips/import", data={"csrf_token": token, "operation": "",
                                                     "file": (io.BytesIO(GOOD), "tip.csv", "text/csv")},
                               content_type="multipart/form-data")
    assert page.status_code == 422 and "Choose the operation to import into." in page.get_data(as_text=True)


def test_the_holder_page_lists_an_identifier_its_accounts_share_though_it_turned_common(app, web_world):
    lead = _login(app, LEAD)
    with app.app_context():
        threshold = db.session.info["config"]["COMMON_IDENTIFIER_THRESHOLD"]
    shared = "+44 20 7946 0999"
    _import(app, lead, web_world.operation.id, tip(*(account(n, phone=shared) for n in range(1, threshold + 1))))
    _import(app, lead, web_world.operation.id, tip(account(threshold + 1, phone=shared)))
    page = lead.get(f"/tips/holders/{_holder_subject(app, 'acc1')}").get_data(as_text=True)
    assert f"common in the operation now ({threshold + 1} accounts): it joins no further account" in page
    assert "<th>Accounts holding it</th><th>Note</th>" in page  # what its column holds: no date
    assert "Nothing shared within this holder" not in page and "Common identifiers (join nobody)" not in page


def test_a_decision_from_the_review_list_returns_to_the_list_as_filtered(app, web_world):
    """Working a filtered review list (one operation, one country, page 2) one decision at a
    time: each decision must come back to that list, not to the unfiltered first page."""
    app.config["PAGE_SIZE"] = 1
    browser = _login(app, LEAD)
    _import(app, browser, web_world.operation.id, tip(*(account(n, country_hint="AU", ip_country="NZ")
                                                        for n in range(1, 4))))
    listed = f"/tips/review?operation={web_world.operation.id}&country=AU&page=2"
    page = browser.get(listed).get_data(as_text=True)
    form = re.search(r'<form method="post" action="(/tips/holders/\d+/jurisdiction)" class="inline">(.*?)</form>', page, re.S)
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form.group(2)))
    response = browser.client.post(form.group(1), data=fields)
    assert response.status_code == 303 and "H-000002" in page  # the second holder, on page 2
    location = response.headers["Location"]
    assert f"operation={web_world.operation.id}" in location and "country=AU" in location, location
    assert "page=2" in location
    # The decided holder left the list: page 2 is past its end now, and shows the last page.
    after = browser.get(location).get_data(as_text=True)
    assert "Jurisdiction of H-000002 set to Australia." in after and "H-000002</a>" not in after


def test_the_unrouted_summary_keeps_the_operation_filter(app, web_world):
    """The 'By country' links of a list filtered to one operation lead to that operation's
    holders of the country, not to every operation's."""
    browser = _login(app, LEAD)
    _import(app, browser, web_world.operation.id, tip(account(1, country_hint="FR", ip_country="FR")))
    page = browser.get(f"/tips/unrouted?operation={web_world.operation.id}").get_data(as_text=True)
    link = re.search(r'<a href="(/tips/unrouted\?[^"]*country=FR[^"]*)"', page).group(1)
    assert f"operation={web_world.operation.id}" in link, link


def test_a_liaison_officer_made_a_viewer_no_longer_downloads_reject_files(app, web_world):
    """Reject files hold the suspects' identifiers the import did not take: only a liaison
    officer or manager of the lead agency downloads them."""
    browser = _login(app, LEAD)
    page = _import(app, browser, web_world.operation.id,
                   tip(account(1), account(2, email="not-an-email")), skip=True)
    assert "Download the reject file" in page.get_data(as_text=True)
    with app.app_context():
        db.session.scalar(select(User).where(User.email == LEAD)).role = "viewer"
        db.session.commit()
    assert browser.get("/tips/import").status_code == 403  # may no longer import
    assert browser.get(f"{page.request.path}/rejects.csv").status_code in (403, 404)


def test_a_corrected_reject_file_imports_without_a_warning_about_its_own_columns(app, web_world):
    """The documented workflow: download the reject file, correct it, import it. Its summary
    names no unknown columns: the reject file's own three are not the person's mistake."""
    browser = _login(app, LEAD)
    first = _import(app, browser, web_world.operation.id, tip(account(1), account(2, email="not-an-email")),
                    skip=True)
    rejects = browser.get(f"{first.request.path}/rejects.csv").get_data()
    corrected = rejects.replace(b"not-an-email", b"two@example.org")
    page = _import(app, browser, web_world.operation.id, corrected, name="rejects-corrected.csv").get_data(
        as_text=True)
    assert "Imported into LANTERN" in page and "New accounts</dt><dd>1" in page
    assert "Columns not read" not in page, re.search(r"Columns not read[^<]*", page).group(0)


def test_a_draft_with_holders_awaiting_review_is_sent_only_knowingly(app, web_world):
    """Once sent, a holder stays with the receiver whatever its review decides: the draft says
    which of its holders await one, and sends only when the person ticks that they go as they are."""
    from app.models import Holder

    browser = _login(app, LEAD)
    _import(app, browser, web_world.operation.id,
            tip(account(1, email="sure@example.org"), account(2, country_hint="AU", ip_country="NZ")))
    with app.app_context():
        doubtful = db.session.scalar(select(Holder).where(Holder.needs_review.is_(True)))
        referral_id, label, subject_id = doubtful.referral_id, doubtful.label, doubtful.subject_id
    path = f"/referrals/{referral_id}"
    page = browser.get(path).get_data(as_text=True)
    assert "1 account holder awaits a jurisdiction" in page and f">{label}</a>" in page
    assert f'href="/tips/holders/{subject_id}#jurisdiction"' in page
    version = re.search(r'name="version" type="hidden" value="(\d+)"', page).group(1)
    refused = browser.post(f"{path}/send", {"version": version, "note": ""}, token_from=path)
    assert refused.status_code == 303
    assert "Not sent: 1 account holder awaits a jurisdiction review" in browser.get(path).get_data(as_text=True)
    with app.app_context():
        assert db.session.get(Referral, referral_id).status.value == "draft"
    sent = browser.post(f"{path}/send", {"version": version, "note": "", "send_awaiting_review": "1"}, token_from=path)
    assert sent.status_code == 303
    with app.app_context():
        assert db.session.get(Referral, referral_id).status.value == "sent"


def _seen_cells(page: str) -> list[str]:
    """The holder page's 'Seen' cells as read, each word of a date or time in a span that does
    not break inside it (a date never splits at its hyphens)."""
    cells = re.findall(r'<td class="seen">(.*?)</td>', page)
    assert cells and all(re.fullmatch(r'(<span class="nowrap">[^<]+</span>| )+', cell) for cell in cells), cells
    return [re.sub(r"<[^>]+>", "", cell) for cell in cells]


def test_a_provider_timestamp_shows_its_time_in_the_viewers_zone(app, web_world):
    """last_seen given as a date-time (an IP's login time, say) keeps its time on the page, in
    the viewer's zone; a date alone stays the date the provider named."""
    with app.app_context():
        db.session.scalar(select(User).where(User.email == LEAD)).timezone = "America/New_York"
        db.session.commit()
    browser = _login(app, LEAD)
    _import(app, browser, web_world.operation.id,
            tip(account(1, ip_addresses="192.0.2.7", first_seen="2020-03-01T10:15:00Z",
                        last_seen="2020-03-02T03:30:00Z")))
    page = browser.get(f"/tips/holders/{_holder_subject(app, 'acc1')}").get_data(as_text=True)
    # 03:30 UTC on 2 March is 22:30 on 1 March in New York.
    assert "2020-03-01 05:15 EST – 2020-03-01 22:30 EST" in _seen_cells(page), _seen_cells(page)
    assert "Seen: a day as the provider gave it; a time in America/New_York." in page  # not "UTC"
    _import(app, browser, web_world.operation.id, tip(account(2, first_seen="2020-03-01", last_seen="2020-03-02")))
    page = browser.get(f"/tips/holders/{_holder_subject(app, 'acc2')}").get_data(as_text=True)
    assert "2020-03-01 – 2020-03-02" in _seen_cells(page)  # not the day before, as New York would have it


def test_large_counts_on_the_tip_pages_have_thousands_separators(app, web_world):
    """At the real operation's scale a list runs to 90,000 holders over 3,600 pages, and a
    holder's graded material to thousands: every count is written as the tips page writes it."""
    from types import SimpleNamespace

    with app.test_request_context("/tips/holders"):
        pager = app.jinja_env.get_template("tips/_macros.html").module.pager
        text = str(pager(SimpleNamespace(page=2, pages=3600, total=90000), "tips.holders", {}))
    assert "Page 2 of 3,600 (90,000 holders)" in text
    browser = _login(app, LEAD)
    status = _import(app, browser, web_world.operation.id, GOOD).request.path
    subject = _holder_subject(app, "acc1")
    with app.app_context():
        record = db.session.get(TipImport, int(status.rsplit("/", 1)[1]))
        record.summary = {**record.summary, "merged_holders": 1200, "common_identifiers": 3400, "hits": 5600}
        db.session.scalar(select(Holder).where(Holder.subject_id == subject)).grade_c = 12345
        db.session.commit()
    page = browser.get(status).get_data(as_text=True)
    for figure in ("<dd>1,200</dd>", "<dd>3,400</dd>", "<dd>5,600 new</dd>"):
        assert figure in page
    assert "C 12,345</dd>" in browser.get(f"/tips/holders/{subject}").get_data(as_text=True)


def test_the_upload_page_says_what_file_it_takes_and_names_every_column(app, web_world):
    page = _login(app, LEAD).get("/tips/import").get_data(as_text=True)
    assert 'aria-describedby="file-hint"' in page and '<p class="hint" id="file-hint">' in page
    assert "header row" in page and "JSON Lines" in page and "UTF-8" in page
    hint = page.split('id="file-hint">', 1)[1].split("</p>", 1)[0]
    assert re.findall(r"<code>(\w+)</code>", hint) == list(reader.FIELDS)


def test_the_holder_page_tables_fit_the_page_or_scroll_within_it(app, web_world):
    """A narrow screen scrolls a wide table, not the whole page; at 1,280 pixels the accounts
    table fits, an e-mail address wrapping after its '@' (never inside a date)."""
    lead = _login(app, LEAD)
    with app.app_context():
        threshold = db.session.info["config"]["COMMON_IDENTIFIER_THRESHOLD"]
    shared = "+44 20 7946 0998"
    _import(app, lead, web_world.operation.id,
            tip(account(1, phone=shared, email="a.rather.long.name@mail.example.org"),
                *(account(n, phone=shared) for n in range(2, threshold + 2))))
    page = lead.get(f"/tips/holders/{_holder_subject(app, 'acc1')}").get_data(as_text=True)
    assert "Common identifiers (join nobody)" in page
    assert page.count("<table") == page.count('<div class="table-wrap">\n<table') == 2
    assert "<td>a.rather.long.name@<wbr>mail.example.org</td>" in page
    assert "<th>Seen</th>" in page


def test_the_tips_page_leads_to_an_operations_draft_referrals(app, web_world):
    """Each count of the lead's operations opens its list: the drafts too, which wait to be sent."""
    browser = _login(app, LEAD)
    _import(app, browser, web_world.operation.id, GOOD)
    page = browser.get("/tips/").get_data(as_text=True)
    link = re.search(rf'<a href="(/referrals\?operation={web_world.operation.id}&amp;status=draft)">(\d+)</a>', page)
    assert link, page
    drafts = browser.get(link.group(1).replace("&amp;", "&"))
    assert drafts.status_code == 200 and f"{link.group(2)} referral" in drafts.get_data(as_text=True)
