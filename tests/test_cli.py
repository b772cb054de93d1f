"""The flask commands a newcomer and an operator use."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
from pathlib import Path

import phonenumbers
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.cli import _stopping_at_the_next_step
from app.demo.operation_h import tip_csv
from app.extensions import db
from app.models import Agency, AgencyKind, AuditEntry, Hit, Outcome, Referral, Status, Tip, TipAccount, User
from app.services import audit
from app.services.tips import validation
from tests.conftest import committed_world
from tests.unit.test_tips_import import cli_env, import_command, start_paused_import

ROOT = Path(__file__).resolve().parents[1]

# Ranges reserved for films and drama: Australia's 02 5550 0xxx, Ofcom's 020 7946 0xxx,
# North America's 555-01xx.
DRAMA = ("+6125550", "+442079460", "+1613555010", "+1613555011")


def test_demo_loads_every_status_and_prints_the_logins(app):
    result = app.test_cli_runner().invoke(args=["demo"])
    assert result.exit_code == 0, result.output
    assert "admin@handoff.example" in result.output and "viewer.nz@handoff.example" in result.output
    with app.app_context():
        session = db.session
        statuses = {s for (s,) in session.execute(select(Referral.status).distinct())}
        assert statuses == set(Status)
        assert 25 <= session.scalar(select(func.count()).select_from(Referral)) <= 40
        countries = session.scalars(select(Agency.country_code).where(Agency.country_code.is_not(None))).all()
        assert len(set(countries)) >= 6
        assert session.scalar(select(func.count()).where(Agency.kind == AgencyKind.INTERNATIONAL)) >= 1
        assert {u.role.value for u in session.scalars(select(User))} == {"admin", "manager", "liaison", "viewer"}
        # handoff dates are realistic: sent before acknowledged before accepted
        for r in session.scalars(select(Referral).where(Referral.accepted_at.is_not(None))):
            assert r.created_at <= r.sent_at < r.acknowledged_at < r.accepted_at
        # Written in the order they started: references count up with time, and no hit is
        # older than its referrals (a transfer's successor, written with its original, aside).
        created = session.scalars(select(Referral.created_at).where(Referral.transferred_from_id.is_(None))
                                  .order_by(Referral.id)).all()
        assert created == sorted(created)
        hits = session.scalars(select(Hit)).all()
        assert hits
        for hit in hits:
            for referral_id in (hit.referral_low_id, hit.referral_high_id):
                referral = session.get(Referral, referral_id)
                assert referral.transferred_from_id or referral.created_at <= hit.created_at
        # Outcomes report what came of the referrals: arrests and charges among them.
        arrests, charges = session.execute(select(func.sum(Outcome.arrests), func.sum(Outcome.charges))).one()
        assert arrests and charges
        # No desk phone is anyone's: a number no plan assigns, or one reserved for drama.
        for phone in session.scalars(select(Agency.desk_phone)):
            number = phonenumbers.parse(phone)
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            assert not phonenumbers.is_valid_number(number) or e164.startswith(DRAMA), phone
    again = app.test_cli_runner().invoke(args=["demo", "--if-empty"])
    assert again.exit_code == 0 and "present already" in again.output


def test_demo_logins_work(app, browser):
    app.test_cli_runner().invoke(args=["demo"])
    from app.demo import DEMO_PASSWORD

    response = browser.login("liaison.nz@handoff.example", DEMO_PASSWORD)
    assert response.status_code == 302
    assert "HND-" in browser.get("/referrals").get_data(as_text=True)


def test_users_create(app, web_world):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["users", "create", "--email", "New.Person@Example.org", "--name", "New Person",
                                 "--role", "liaison", "--agency", "Alpha Police", "--password", "a-long-password-1"])
    assert result.exit_code == 0, result.output
    bad = runner.invoke(args=["users", "create", "--email", "x@example.org", "--name", "X", "--role", "viewer",
                              "--agency", "Alpha Police", "--password", "short"])
    assert bad.exit_code != 0 and "12 characters" in bad.output
    missing = runner.invoke(args=["users", "create", "--email", "y@example.org", "--name", "Y", "--role", "viewer",
                                  "--agency", "No Such Agency", "--password", "a-long-password-1"])
    assert missing.exit_code != 0 and "No agency" in missing.output
    with app.app_context():
        assert db.session.scalar(select(User).where(User.email == "new.person@example.org")) is not None


def test_audit_verify_notices_tampering(app, web_world):
    runner = app.test_cli_runner()
    ok = runner.invoke(args=["audit", "verify"])
    assert ok.exit_code == 0 and "intact" in ok.output
    with app.app_context():
        entry = db.session.scalars(select(AuditEntry).order_by(AuditEntry.seq).offset(3).limit(1)).one()
        seq = entry.seq
        db.session.execute(
            AuditEntry.__table__.update().where(AuditEntry.id == entry.id).values(detail='{"role": "admin"}'))
        db.session.commit()
    broken = runner.invoke(args=["audit", "verify"])
    assert broken.exit_code == 1 and f"entry {seq}" in broken.output


def test_deconfliction_recheck_common_applies_a_changed_threshold(app, web_world):
    from app.models import CommonIdentifier
    from app.services import subjects
    from tests.factories import make_referral

    app.config["COMMON_IDENTIFIER_THRESHOLD"] = 2
    with app.app_context():
        for sender, receiver in (("a", "b"), ("c", "i"), ("b", "a")):
            referral = make_referral(db.session, web_world, "draft", sender=sender, receiver=receiver)
            subjects.add_subject(db.session, web_world.actor(f"{sender}_liaison"), referral.id, "Account holder",
                                 "192.0.2.220")
        db.session.commit()
        assert db.session.scalar(select(func.count()).select_from(Hit)) == 1  # the third came when it was common
        assert db.session.scalars(select(CommonIdentifier.value)).all() == ["192.0.2.220"]
    app.config["COMMON_IDENTIFIER_THRESHOLD"] = 3
    result = app.test_cli_runner().invoke(args=["deconfliction", "recheck-common"])
    assert result.exit_code == 0, result.output
    assert "0 identifiers marked common (0 newly); 1 no longer common, raising 2 new hits." in result.output
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Hit)) == 3
        assert db.session.scalars(select(CommonIdentifier)).all() == []
        assert db.session.scalar(select(func.count()).select_from(AuditEntry)
                                 .where(AuditEntry.action == "deconfliction.recheck_common")) == 1


# --- import-tip ---------------------------------------------------------------------------------

def import_tip(app, path, *options):
    return app.test_cli_runner().invoke(args=["import-tip", str(path), "--operation", "LANTERN", *options])


def import_audit(app) -> list[tuple[str, str]]:
    """(outcome, reason) of each tip.import entry on the audit trail."""
    with app.app_context():
        entries = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "tip.import")
                                     .order_by(AuditEntry.seq))
        return [(entry.outcome, json.loads(entry.detail).get("reason")) for entry in entries]


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def test_import_tip_skipping_a_quote_left_open_imports_every_row_after_it(app, web_world, tmp_path):
    """The quote opened on line 2 runs past the csv module's field limit (1,800 lines of these):
    line 2 alone is the bad row, and every line after it a row of its own."""
    lines = ["platform,account_id,username,email", 'instagram,UQ0,"oops,uq0@example.org']
    lines += [f"instagram,UQ{n},user_uq_{n}_padding_padding_padding,uq{n}@example.org" for n in range(1, 2501)]
    path = tmp_path / "tip.csv"
    path.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "rejects.csv"
    result = import_tip(app, path, "--skip-invalid", "--reject-file", str(rejects))
    assert result.exit_code == 0, result.output
    assert "line 2: -: not readable as CSV: a quote opened on this line is not closed on it" in result.output
    assert "2,501 rows, 1 rejected; 2,500 new accounts" in result.output
    assert [row["line"] for row in csv.DictReader(rejects.open(encoding="utf-8-sig"))] == ["2"]
    assert count(app, TipAccount) == 2500


def test_import_tip_leaves_no_reject_file_for_a_header_refused_whole(app, web_world, tmp_path):
    path = tmp_path / "tip.csv"
    path.write_text("instagram,1\n")
    rejects = tmp_path / "rejects.csv"
    rejects.write_text("platform,account_id,line,field,reason\r\n")  # an earlier import's
    result = import_tip(app, path, "--skip-invalid", "--reject-file", str(rejects))
    assert result.exit_code != 0
    assert "Nothing was imported: missing column in the header (platform,account_id)." in result.output
    assert not rejects.exists() and "Reject file written" not in result.output


def test_import_tip_of_empty_rows_names_the_first_line_for_the_header(app, web_world, tmp_path):
    path = tmp_path / "tip.csv"
    path.write_text(",,,\n,,,\n")
    result = import_tip(app, path)
    assert result.exit_code != 0
    assert "line 1: -: no header: the file holds only empty rows" in result.output
    assert "line 3" not in result.output
    assert import_audit(app) == [("failure", "Nothing was imported: no header: the file holds only empty rows, and a "
                                             "tip's first row names its columns (platform and account_id at least).")]


def test_import_tip_stopped_as_it_commits_stands_and_says_so(app, web_world, tmp_path, monkeypatch):
    """Ctrl-C twice while the import commits: the commit runs to its end, and the command says
    the import stands rather than that nothing was written."""
    path = tmp_path / "tip.csv"
    path.write_text("platform,account_id,email\n" + "".join(f"discord,acc{n},s{n}@example.org\n" for n in range(5)))
    commit = Session.commit

    def interrupted_commit(session):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return commit(session)

    monkeypatch.setattr(Session, "commit", interrupted_commit)
    # As from a terminal, whatever started the tests: a background job's SIGINT is ignored, and
    # the command leaves an ignored SIGINT ignored.
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = import_tip(app, path)
    finally:
        signal.signal(signal.SIGINT, ignored)
    monkeypatch.undo()
    assert result.exit_code == 0, result.output
    assert "SIGINT came as the import was committed: it stands." in result.output
    assert count(app, TipAccount) == 5 and import_audit(app) == [("success", None)]


@pytest.mark.parametrize("stop, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["Ctrl-C", "SIGTERM"])
def test_import_tip_stopped_writes_nothing_and_is_on_the_audit_trail(any_app, session, world, tmp_path, stop, status):
    """The command in a subprocess pauses (test hook) right after writing the accounts inside
    its transaction, and is stopped there as a person or a service manager stops it: it stops at
    its next step."""
    session.commit()
    path = tmp_path / "tip.csv"
    path.write_text("platform,account_id,email\n" + "".join(f"discord,acc{n},s{n}@example.org\n" for n in range(40)))
    # Ctrl-C raises KeyboardInterrupt only where SIGINT is not ignored (a background job's is).
    # The command stops at its next step, when the pause is over.
    process = start_paused_import(any_app, path, seconds=2,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        process.send_signal(stop)
        _out, errors = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == status, errors
    assert f"The import was stopped ({stop.name}): nothing of it was written." in errors
    session.rollback()
    assert [session.scalar(select(func.count()).select_from(model)) for model in (Tip, TipAccount)] == [0, 0]
    entries = session.scalars(select(AuditEntry).where(AuditEntry.action == "tip.import")).all()
    assert [(entry.outcome, json.loads(entry.detail)["reason"]) for entry in entries] == [("failure", "broke off")]
    assert audit.verify(session).ok


@pytest.mark.parametrize("stage", ["Validating rows", "Writing"])
def test_import_tip_stopped_with_its_workers_while_it_reads_or_writes(any_app, session, world, tmp_path, stage):
    """A service manager stops the command and its validation workers alike (SIGTERM to the
    process group), while rows are read in worker processes or written: whenever it lands,
    the import stops at its next step, writes nothing and is on the audit trail (raised inside
    a statement, it left SQLite locked and no record of it; with its workers gone, it waited
    for them for ever)."""
    session.commit()
    path = tmp_path / "tip.csv"
    path.write_bytes(tip_csv(0.1, 3))  # 15,300 rows: read by two workers
    process = subprocess.Popen(import_command(path), cwd=ROOT, env={**cli_env(any_app), "PYTHONUNBUFFERED": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in process.stdout:
            if line.startswith(stage):
                break
        os.killpg(process.pid, signal.SIGTERM)
        _out, errors = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 143, errors
    session.rollback()
    assert [session.scalar(select(func.count()).select_from(model)) for model in (Tip, TipAccount)] == [0, 0]
    entries = session.scalars(select(AuditEntry).where(AuditEntry.action == "tip.import")).all()
    assert [(entry.outcome, json.loads(entry.detail)["reason"]) for entry in entries] == [("failure", "broke off")]


def test_import_tip_validation_workers_end_quietly_under_its_sigterm_handling(monkeypatch, capfd):
    """Workers end on SIGTERM: the command's handling of one (noting it, to stop the import at
    its next step) must not reach them, or they would outlive the pool."""
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    data = ("platform,account_id\n" + "".join(f"instagram,{n}\n" for n in range(3000))).encode()
    with _stopping_at_the_next_step():
        result = validation.validate(data, "csv", b"k", workers=2, chunk_bytes=2000)
    assert len(result.accounts) == 3000
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("kind", ["device", "pipe"])
def test_import_tip_refuses_a_reject_file_that_is_no_regular_file(app, web_world, tmp_path, kind):
    """A device reads as empty: taken for an empty file, it was removed (as root, `--reject-file
    /dev/null` removed /dev/null itself) and a reject file written in its place. A pipe was
    read for its first line, waiting for ever for a writer."""
    path = tmp_path / "tip.csv"
    path.write_text("platform,account_id\ninstagram,1\n")
    rejects = tmp_path / "rejects.csv"
    if kind == "device":
        rejects.symlink_to(os.devnull)
    else:
        os.mkfifo(rejects)
    result = import_tip(app, path, "--reject-file", str(rejects))
    assert result.exit_code != 0
    assert "is not a regular file" in result.output and "leave --reject-file out" in result.output
    assert rejects.is_symlink() if kind == "device" else rejects.is_fifo()
    assert count(app, TipAccount) == 0


def test_import_tip_refused_while_rows_are_read_ends_the_progress_bar(app, web_world, tmp_path, monkeypatch):
    """On a terminal: a file refused halfway through reading (an image spelt with escapes, found
    as its line is read) left the bar open, its refusal written on the bar's line and the
    terminal's cursor hidden after the command."""
    import click._termui_impl

    monkeypatch.setattr(click._termui_impl, "isatty", lambda _file: True)
    path = tmp_path / "tip.jsonl"
    path.write_text('{"platform": "instagram", "account_id": "1", "username": "\\u0064ata:image/png;base64,AAAA"}\n')
    result = app.test_cli_runner().invoke(args=["import-tip", str(path), "--operation", "LANTERN"], color=True)
    assert result.exit_code != 0
    assert "\x1b[?25l" in result.output  # the bar was drawn
    assert "\x1b[?25h" in result.output[result.output.rindex("\x1b[?25l"):]  # the cursor is shown again
    assert "\nError: The file holds an encoded image" in result.output


def test_import_tip_refusals_point_to_the_options_that_help(app, web_world, tmp_path):
    """A file refused for its header has no rows to reject: the refusal pointed to --reject-file
    all the same, which then wrote nothing. Bad rows beside good ones point to --skip-invalid,
    which the command's refusal spoke of only as "import with invalid rows skipped"."""
    path = tmp_path / "tip.csv"
    path.write_text("platform;account_id\ninstagram;1\n")
    result = import_tip(app, path)
    assert result.exit_code != 0 and "separated by semicolons" in result.output
    assert "--reject-file" not in result.output and "--skip-invalid" not in result.output
    path.write_text("platform,account_id\ninstagram,1\ninstagram,\n")
    result = import_tip(app, path)
    assert result.exit_code != 0
    assert "(--skip-invalid imports the good rows; --reject-file PATH writes the bad ones)" in result.output
    path.write_text("platform,account_id\ninstagram,\n")
    result = import_tip(app, path, "--skip-invalid")
    assert result.exit_code != 0 and "all 1 rows are invalid" in result.output
    assert "(--reject-file PATH writes the bad ones)" in result.output and "--skip-invalid imports" not in result.output


def test_demo_and_import_tip_on_a_database_not_migrated_say_to_migrate(tmp_path):
    """A new database (HANDOFF_DATABASE_URL naming a new file, say) has no tables: the demo and
    an import failed with a traceback about a missing table."""
    from app import create_app

    fresh = create_app({"DATABASE_URL": "sqlite:///" + str(tmp_path / "new.db")}, config_name="testing")
    path = tmp_path / "tip.csv"
    path.write_text("platform,account_id\ninstagram,1\n")
    try:
        for args in (["demo"], ["demo", "--scenario", "operation-h", "--scale", "0.001"],
                     ["import-tip", str(path), "--operation", "LANTERN"]):
            result = fresh.test_cli_runner().invoke(args=args)
            assert result.exit_code != 0
            assert isinstance(result.exception, SystemExit), result.exception
            assert "not at the latest schema" in result.output and "flask --app wsgi migrate" in result.output
    finally:
        fresh.extensions["handoff_db"]["engine"].dispose()


@pytest.mark.parametrize("scenario", ["basic", "operation-h"])
def test_demo_on_a_database_with_data_says_what_to_do(app, web_world, scenario):
    result = app.test_cli_runner().invoke(args=["demo", "--scenario", scenario])
    assert result.exit_code == 1
    assert "The database is not empty" in result.output
    assert "HANDOFF_DATABASE_URL" in result.output and "--if-empty" in result.output
    assert count(app, Agency) == len(web_world.agencies)


def test_import_tip_into_an_unknown_operation_names_the_operations(app, tmp_path):
    path = tmp_path / "tip.csv"
    path.write_text("platform,account_id\ninstagram,1\n")
    result = app.test_cli_runner().invoke(args=["import-tip", str(path), "--operation", "LANTRN"])
    assert result.exit_code != 0
    assert "No operation with the code 'LANTRN'; none is open yet: an administrator or a manager opens one " \
           "on the Operations page." in result.output
    committed_world(app)
    result = app.test_cli_runner().invoke(args=["import-tip", str(path), "--operation", "LANTRN"])
    assert result.exit_code != 0
    assert "No operation with the code 'LANTRN'; the operations are: LANTERN." in result.output


def test_import_tip_as_finds_the_user_as_sign_in_does(app, web_world, tmp_path):
    """A full-width letter in the address is the plain one at sign-in (NFKC): --as said there
    was no such user."""
    path = tmp_path / "tip.csv"
    path.write_text("platform,account_id\ninstagram,1\n")
    result = import_tip(app, path, "--as", " \uff4ciaison.C@example.org ")
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert db.session.scalar(select(Tip.imported_by_id)) == web_world.users["c_liaison"].id


def test_demo_options_of_the_scenario_alone_are_refused_for_the_basic_demo(app):
    runner = app.test_cli_runner()
    one = runner.invoke(args=["demo", "--seed", "3"])
    assert one.exit_code == 2 and "--seed only applies to --scenario operation-h." in one.output
    both = runner.invoke(args=["demo", "--scale", "0.5", "--seed", "3"])
    assert both.exit_code == 2 and "--scale and --seed only apply to --scenario operation-h." in both.output
    assert count(app, Agency) == 0


def test_demo_if_empty_on_a_database_of_other_data_says_so_and_offers_no_sign_ins(app, web_world):
    """`make run` loads the demo with --if-empty: on a database of other data it said the demo's
    data was there, under a header naming the demo password over an empty list."""
    result = app.test_cli_runner().invoke(args=["demo", "--if-empty"])
    assert result.exit_code == 0, result.output
    assert "The database holds data already, not the demo's: the demo was not loaded." in result.output
    assert "Demo data present already" not in result.output and "Demo sign-ins" not in result.output
