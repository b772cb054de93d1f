"""The tip import end to end, on both engines: validation (all or nothing, skip-invalid and the
reject file), idempotent re-imports, a killed import, clustering through the importer,
jurisdiction review, routing, triage, access, and the Operation H scenario at a small scale."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, or_, select, text

from app.db import utcnow
from app.models import (
    Agency,
    AgencyKind,
    AuditEntry,
    CommonIdentifier,
    Hit,
    HitSide,
    Holder,
    HolderRouting,
    Identifier,
    JurisdictionSource,
    Notification,
    NotificationKind,
    Operation,
    Outcome,
    Priority,
    Referral,
    ReferralEvent,
    Role,
    Status,
    Subject,
    Tip,
    TipAccount,
    User,
    referral_subjects,
)
from app.services import Conflict, DomainError, Forbidden, NotFound, audit, deconfliction, directory, referrals, subjects
from app.services.access import get_visible_holder, own_hit_matches, visible_holders, visible_referrals, visible_tips
from app.services.audit import Actor
from app.services.identifiers import IdentifierKind
from app.services.tips import holders as holder_service
from app.services.tips import files, importer, reader, validation
from app.services.tips.holders import ReviewReason
from app.services.tips.importer import PAUSE_ENV, TipRejected, import_tip
from tests.factories import make_referral

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["through subjects", "through referrals"])
def match_path(request, monkeypatch):
    """Matching reads a small tip's gains through the subjects it wrote to, a large one's
    through its referrals: the hits must be the same either way."""
    if request.param == "through referrals":
        monkeypatch.setattr(importer, "GAINS_BY_SUBJECT_MAX", 0)
    return request.param


def tip(*rows: dict) -> bytes:
    """A CSV tip of these rows (missing fields are empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=reader.FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: row.get(name, "") for name in reader.FIELDS})
    return buffer.getvalue().encode("utf-8")


def account(n: int, **fields) -> dict:
    row = {"platform": "discord", "account_id": f"acc{n}", "country_hint": "AU", "ip_country": "AU"}
    row.update(fields)
    return row


def run_import(session, world, data: bytes, file_name: str = "tip.csv", **kwargs):
    result = import_tip(session, world.actor("c_liaison"), world.operation.id, data, file_name, **kwargs)
    session.flush()
    return result


def reject_file(session, world, data: bytes) -> str:
    """A tip's reject file, imported with its bad rows skipped (or refused, when no row is good)."""
    try:
        return run_import(session, world, data, skip_invalid=True).reject_csv
    except TipRejected as refused:
        return refused.reject_csv


def known_to_alpha(session, world, identifiers: str) -> Referral:
    """Alpha's referral sent to Bravo, with a subject holding these identifiers (one per line):
    a tip's holder holding one meets it as a hit."""
    other = make_referral(session, world, status="sent", sender="a", receiver="b")
    subjects.add_subject(session, world.actor("a_liaison"), other.id, "Known", identifiers)
    return other


def count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def live_holders(session, world) -> list[Holder]:
    return list(session.scalars(select(Holder).where(Holder.operation_id == world.operation.id,
                                                     Holder.merged_into_id.is_(None)).order_by(Holder.number)))


def holder_of(session, world, account_id: str) -> Holder:
    holder_id = session.scalar(select(TipAccount.holder_id).where(TipAccount.operation_id == world.operation.id,
                                                                  TipAccount.account_key == account_id.lower()))
    return session.get(Holder, holder_id)


def snapshot(session) -> tuple:
    return tuple(count(session, m) for m in (Tip, TipAccount, Holder, Subject, Referral, ReferralEvent,
                                             referral_subjects))


# --- validation: all or nothing ----------------------------------------------------------------

BAD_ROWS = [
    (account(2, account_id=""), "account_id", "missing"),
    (account(3, platform="myspace-ish"), "platform", "unknown platform"),
    (account(4, country_hint="Atlantis"), "country_hint", "unknown country"),
    (account(5, ip_country="XX"), "ip_country", "unknown country code"),
    (account(6, email="not-an-email"), "email", "e-mail"),
    (account(7, phone="call me"), "phone", "phone"),
    (account(8, ip_addresses="999.1.1.1"), "ip_addresses", "IP address"),
    (account(9, first_seen="yesterday"), "first_seen", "ISO 8601"),
    (account(10, first_seen="2021-01-01", last_seen="2020-01-01"), "last_seen", "earlier"),
    (account(11, uploads_a="-1"), "uploads_a", "negative"),
    (account(12, uploads_b="two"), "uploads_b", "whole number"),
    (account(1, email="dup@example.org"), "account_id", "duplicate of line 2"),
]


def bad_tip() -> bytes:
    return tip(account(1, email="one@example.org"), *(row for row, _, _ in BAD_ROWS),
               account(13, email="thirteen@example.org"))


def test_any_bad_row_writes_nothing_and_every_problem_is_named(session, world):
    before = snapshot(session)
    with pytest.raises(TipRejected) as refused:
        run_import(session, world, bad_tip())
    errors = refused.value.errors
    assert [(e.line, e.field) for e in errors] == [(line, field) for line, (_, field, _) in
                                                   enumerate(BAD_ROWS, start=3)]
    for error, (_, _, reason) in zip(errors, BAD_ROWS):
        assert reason.lower() in error.reason.lower(), error
    session.rollback()
    assert snapshot(session) == before


def test_skip_invalid_writes_the_good_rows_and_a_reject_file(session, world):
    result = run_import(session, world, bad_tip(), skip_invalid=True)
    assert (result.rows, result.accepted, result.rejected) == (14, 2, 12)
    assert count(session, TipAccount) == 2
    rows = list(csv.DictReader(io.StringIO(result.reject_csv)))
    assert list(rows[0]) == [*reader.FIELDS, "line", "field", "reason"]
    assert [int(r["line"]) for r in rows] == list(range(3, 15))
    by_line = {int(r["line"]): r for r in rows}
    assert by_line[7]["email"] == "not-an-email" and by_line[7]["field"] == "email"
    assert by_line[14]["reason"].startswith("duplicate of line 2")
    # The reject file is itself a tip (the extra columns are ignored): read again, the same rows are
    # bad, except the duplicate, which is alone now.
    again = reader.read(io.BytesIO(result.reject_csv.encode()), "csv", b"k")
    assert len(again.errors) == len(rows) - 1 and [a.account_id for a in again.accounts] == ["acc1"]
    tip_row = session.scalars(select(Tip)).one()
    assert (tip_row.accepted, tip_row.rejected, tip_row.new_accounts) == (2, 12, 2)


def test_the_reject_file_keeps_the_tip_columns_as_named_and_nothing_the_import_does_not_read(session, world):
    """A column that is no tip field may carry anything (whatever a provider exports): the
    reject file, kept with the import, leaves it out."""
    data = b"Platform, Account_ID ,Note,note,extra\ndiscord,acc1,upper,lower,\ndiscord,,U2,l2,unread text\n"
    result = run_import(session, world, data, skip_invalid=True)
    assert result.ignored_columns == ["Note", "note", "extra"]
    rows = list(csv.reader(io.StringIO(result.reject_csv)))
    assert rows == [["Platform", "Account_ID", "line", "field", "reason"], ["discord", "", "3", "account_id", "missing"]]


@pytest.mark.parametrize("data, reason", [
    (b"platform;account_id;email\r\ndiscord;acc1;a@example.org\r\n", "separated by semicolons; a tip's CSV "
                                                                       "separates them with commas"),
    (b"platform\taccount_id\ndiscord\tacc1\n", "separated by tabs"),
    (b'{"platform": "discord", "account_id": "acc1"}\n', "looks like JSON Lines, not CSV: name it .jsonl"),
    (b'{"platform":"discord","account_id":"acc1"}\n', "so does JSON Lines named .csv (name it .jsonl)"),
    (b'"platform";"account_id"\r\n"discord";"acc1"\r\n', "A header separated by semicolons reads so"),
    (b"platform,email\ndiscord,a@example.org\n", "missing column in the header (account_id)"),
])
def test_a_header_a_spreadsheet_or_a_misnamed_file_wrote_is_refused_saying_what_to_do(session, world, data, reason):
    with pytest.raises(TipRejected, match=re.escape(reason)):
        run_import(session, world, data, file_name="tip.csv")
    assert count(session, Tip) == 0


@pytest.mark.parametrize("data, line", [(b"platform,account_id,email\ndiscord,acc1,a@example.org\n", 1),
                                        (b"\n Platform, Account_ID\r\ndiscord,acc1\r\n", 2)])
def test_a_csv_named_jsonl_is_refused_saying_to_name_it_csv(session, world, data, line):
    """Not one "not valid JSON" per line: the file is refused for what its first line shows."""
    with pytest.raises(TipRejected) as refused:
        run_import(session, world, data, file_name="tip.jsonl")
    assert [(e.line, e.reason) for e in refused.value.errors] == [
        (line, "the file looks like CSV, not JSON Lines: name it .csv")]
    assert "name it .csv" in refused.value.message and count(session, Tip) == 0


def test_a_json_line_unread_whole_is_named_in_the_reject_file_without_a_formulas_apostrophe(session, world):
    data = b'{"platform": "discord", "account_id": "acc1"}\n[1, 2]\n'
    result = run_import(session, world, data, file_name="tip.jsonl", skip_invalid=True)
    rows = list(csv.reader(io.StringIO(result.reject_csv)))
    assert [row[-3:-1] for row in rows[1:]] == [["2", "-"]]
    assert rows[1][-1] == "each line must be a JSON object"


def test_a_refusal_names_the_columns_it_would_not_have_read(session, world):
    data = b"platform,account_id,E-mail\ndiscord,acc1,a@example.org\ndiscord,,b@example.org\n"
    with pytest.raises(TipRejected) as refused:
        run_import(session, world, data)
    assert refused.value.message.endswith("Columns not read, as they are no tip field: E-mail.")


def test_a_quote_written_wrong_is_a_bad_row_not_a_value_read_otherwise(session, world):
    """`"John "Johnny" Smith` would read as `John Johnny" Smith`, a name the provider never sent,
    and match as one: the row is bad, saying how quotes are written, and the next rows are read."""
    data = b'platform,account_id,username\ndiscord,acc1,one\ndiscord,acc2,"John "Johnny" Smith\ndiscord,acc3,three\n'
    result = run_import(session, world, data, skip_invalid=True)
    assert [(e.line, e.field) for e in result.errors] == [(3, "-")]
    assert "a quote inside a quoted value is written twice" in result.errors[0].reason
    assert sorted(session.scalars(select(TipAccount.username))) == ["one", "three"]


@pytest.mark.parametrize("rest", ["", 'discord,acc9,"quoted"\n', 'discord,acc9,brien"\n'],
                         ids=["never closed", "a later quote breaks off", "a later quote closes it"])
def test_a_quote_left_open_says_so_instead_of_swallowing_the_file_unsaid(session, world, rest):
    lines = ["platform,account_id,username"] + [f"discord,acc{n},user{n}" for n in range(1, 300)]
    lines[2] = 'discord,acc2,"John Smith'
    data = ("\n".join(lines) + "\n" + rest).encode()
    with pytest.raises(TipRejected) as refused:
        run_import(session, world, data)
    [error] = [e for e in refused.value.errors if e.line == 3] or refused.value.errors
    assert "quote opened on this line" in error.reason, refused.value.errors


def test_a_second_byte_order_mark_is_a_header_problem_even_when_skipping_bad_rows(session, world):
    """Not one bad row beside good ones: with `\ufeffplatform` for a first column, no row can be read."""
    data = b"\xef\xbb\xbf" * 2 + tip(*(account(n) for n in range(1, 4)))
    with pytest.raises(TipRejected, match=r"Nothing was imported: missing column in the header \(platform\)"):
        run_import(session, world, data, skip_invalid=True)
    assert count(session, Tip) == 0


def test_rows_whose_values_do_not_line_up_with_the_header_keep_them_out_of_its_columns(session, world):
    """A value past the header's named columns (an unquoted 1,500, a header ending in a comma)
    makes a bad row, and its reject row quotes it whole rather than put the values under
    columns, where imported again they would make a good row of the wrong count."""
    data = (b"platform,account_id,uploads_a,\n"
            b"discord,acc1,1,500\n"          # under the unnamed column
            b"discord,acc2,1,\n"             # nothing there: a good row
            b"discord,acc3,2,5,7\n")         # past the header
    result = run_import(session, world, data, skip_invalid=True)
    assert [(e.line, e.field) for e in result.errors] == [(2, "-"), (4, "-")]
    assert "discord | acc1 | 1 | 500" in result.errors[0].reason and "discord | acc3 | 2 | 5 | 7" in result.errors[1].reason
    rows = list(csv.reader(io.StringIO(result.reject_csv)))
    assert [row[:3] for row in rows[1:]] == [["", "", ""], ["", "", ""]]
    with pytest.raises(TipRejected) as again:
        run_import(session, world, result.reject_csv.encode(), file_name="rejects.csv", skip_invalid=True)
    assert [e.field for e in again.value.errors] == ["platform", "account_id"] * 2
    assert session.scalar(select(TipAccount.uploads_a).where(TipAccount.account_key == "acc2")) == 1
    # An unnamed column before the named ones is a row index (pandas writes one), not read.
    indexed = run_import(session, world, b",platform,account_id\n0,discord,acc4\n1,discord,acc5\n", file_name="c.csv")
    assert indexed.errors == [] and indexed.new_accounts == 2


def test_a_header_name_behind_a_tab_comes_back_from_the_reject_file(session, world):
    rejects = reject_file(session, world, b"\tplatform,account_id,email\ndiscord,acc1,broken\n")
    assert rejects.splitlines()[0] == "platform,account_id,email,line,field,reason"
    fixed = rejects.replace(",broken,", ",p1@example.org,")
    assert run_import(session, world, fixed.encode(), file_name="rejects.csv").new_accounts == 1


@pytest.mark.parametrize("value", ["1_000", "\u0663", "1.5", "1,000", "ten"])
def test_a_count_is_written_in_the_digits_0_to_9(value):
    result = reader.read(io.BytesIO(tip(account(1, uploads_a=value))), "csv", b"k")
    assert [(e.field, e.reason) for e in result.errors] == [("uploads_a", f"not a whole number: {value!r}")]


def test_a_count_may_carry_a_sign():
    result = reader.read(io.BytesIO(tip(account(1, uploads_a="+5"), account(2, uploads_b="-1"))), "csv", b"k")
    assert [a.uploads_a for a in result.accounts] == [5]
    assert [(e.line, e.field, e.reason) for e in result.errors] == [(3, "uploads_b", "cannot be negative")]


def test_each_bad_ip_address_is_named():
    result = reader.read(io.BytesIO(tip(account(1, ip_addresses="192.0.2.1;300.1.1.1;bogus"))), "csv", b"k")
    assert [e.reason.split(": ")[-1] for e in result.errors] == ["'300.1.1.1'", "'bogus'"]


def test_a_national_phone_number_is_read_in_the_rows_own_country_only():
    """An unknown country hint is the row's problem; its IP country does not stand in for it.
    With no country at all, the row is told which field gives one."""
    result = reader.read(io.BytesIO(tip(account(1, phone="5", country_hint="Atlantis", ip_country="NZ"),
                                        account(2, phone="021 555 0101", country_hint="", ip_country=""))),
                         "csv", b"k")
    assert [(e.line, e.field, e.reason) for e in result.errors] == [
        (2, "country_hint", "unknown country 'Atlantis'"),
        (3, "phone", "no country code: write it with +<country code>, or give the row's country_hint")]


def test_a_binary_control_character_anywhere_in_a_file_refuses_it(session, world):
    padding = [account(n, email=f"pad{n}@example.org") for n in range(1, 1500)]  # well past the sniffed head
    data = tip(*padding, account(1500, username="nul\x00inside"))
    assert len(data) > files.SNIFF_BYTES and data.index(b"\x00") > files.SNIFF_BYTES
    before = snapshot(session)
    with pytest.raises(DomainError, match=r"binary control character \(byte 0x00 on line 1501\)"):
        run_import(session, world, data)
    session.rollback()
    assert snapshot(session) == before


def test_a_json_escape_of_a_control_character_is_a_bad_value_and_the_other_rows_import(session, world):
    lines = [
        {"platform": "discord", "account_id": "a1", "phone": "+64 21 555 0101\u0000", "country_hint": "NZ"},
        {"platform": "discord", "account_id": "a\u0000b", "ip_addresses": ["2001:db8::1", "2001:db8::\u001b2"]},
        {"platform": "discord", "account_id": "a3", "email": "fine@example.org", "notes\u0000": "x"},
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()  # json writes a NUL as \\u0000
    assert b"\x00" not in data and b"\\u0000" in data  # the file itself is clean text
    with pytest.raises(TipRejected) as refused:
        run_import(session, world, data, "tip.jsonl")
    assert [(e.line, e.field) for e in refused.value.errors] == [(1, "phone"), (2, "account_id"), (2, "ip_addresses")]
    assert all(e.reason == reader.CONTROL_CHARACTER for e in refused.value.errors)
    result = run_import(session, world, data, "tip.jsonl", skip_invalid=True)
    session.commit()  # PostgreSQL refuses a NUL in text: nothing of it may reach the database
    assert [a.account_id for a in session.scalars(select(TipAccount))] == ["a3"]
    assert "\x00" not in result.reject_csv and "\\u0000" in result.reject_csv
    assert result.ignored_columns == ["notes\\u0000"]


def test_the_reject_file_keeps_formulas_from_running_and_gives_them_back(session, world):
    data = tip(account(1, username="=HYPERLINK(\"http://x.example/?\"&A1)", email="broken"),
               account(2, username="@SUM(1)", uploads_a="-2", phone="+64 21 555 0101"))
    rejects = reject_file(session, world, data)
    rows = list(csv.DictReader(io.StringIO(rejects)))
    assert [r["username"] for r in rows] == ["'=HYPERLINK(\"http://x.example/?\"&A1)", "'@SUM(1)"]
    assert rows[1]["uploads_a"] == "'-2" and rows[1]["phone"] == "'+64 21 555 0101"
    assert not any(value.startswith(("=", "+", "-", "@")) for row in rows for value in row.values())
    # Imported again as it is, the file gives the values back as they were, and the same problems.
    again = reader.read(io.BytesIO(rejects.encode()), "csv", b"k")
    assert [(e.line, e.field) for e in again.errors] == [(2, "email"), (3, "uploads_a")]
    corrected = rejects.replace("broken", "fixed@example.org").replace("'-2", "2").encode()
    fixed = reader.read(io.BytesIO(corrected), "csv", b"k")
    assert not fixed.errors
    assert [a.username for a in fixed.accounts] == ['=hyperlink("http://x.example/?"&a1)', "sum(1)"]  # a handle's @ goes
    assert fixed.accounts[1].phone == "+64215550101"


def test_a_reject_file_corrected_in_rounds_keeps_its_columns(session, world):
    first = run_import(session, world, tip(account(1, email="broken"), account(2)), skip_invalid=True)
    second = reject_file(session, world, first.reject_csv.encode())
    header = next(csv.reader(io.StringIO(second)))
    assert header == [*reader.FIELDS, "line", "field", "reason"]  # this round's reasons, not stale ones
    assert next(csv.DictReader(io.StringIO(second)))["line"] == "2"


@pytest.mark.parametrize("ends", ["\n", "\r\n"])
def test_blank_lines_before_the_header_are_no_header(monkeypatch, ends):
    rows = [f"instagram,{n},,,,,NZ,,,,,," for n in range(1, 40)]
    rows[20] = "instagram,21,,,,,NZ,,,,,-1,"
    data = (ends * 2 + ends.join([",".join(reader.FIELDS), *rows]) + ends).encode()
    single = reader.read(io.BytesIO(data), "csv", b"k")
    assert [(e.line, e.field) for e in single.errors] == [(24, "first_seen")] and len(single.accounts) == 38
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    parallel = validation.validate(data, "csv", b"k", workers=2, chunk_bytes=100)
    assert [(e.line, e.field) for e in parallel.errors] == [(24, "first_seen")]
    assert [tuple(a) for a in parallel.accounts] == [tuple(a) for a in single.accounts]
    assert parallel.columns == list(reader.FIELDS)


def test_the_refusal_names_what_is_wrong_with_the_header(session, world):
    with pytest.raises(TipRejected, match=r"Nothing was imported: column named twice in the header \(email\)\."):
        run_import(session, world, b"Email,email,platform,account_id\nx@example.org,,discord,a1\n")
    with pytest.raises(TipRejected, match=r"missing column in the header \(account_id\)"):
        run_import(session, world, b"\n\nplatform,username\ndiscord,someone\n")


def test_utf16_text_without_a_byte_order_mark_is_named_as_such():
    with pytest.raises(DomainError, match="UTF-16 text"):
        files.check_content(tip(account(1)).decode().encode("utf-16-le"))
    with pytest.raises(DomainError, match="UTF-16 text"):
        files.check_content(tip(account(1)).decode().encode("utf-16-be"))


def test_a_long_file_name_is_shortened_with_its_extension_kept():
    name = "x" * 300 + ".csv"
    stored = files.stored_name(name)
    assert len(stored) == 255 and stored.endswith(".csv")
    files.check_name(stored)  # the background import looks at the stored name again
    assert files.stored_name("folder/tip.jsonl") == "tip.jsonl"


def test_a_file_name_cannot_show_itself_backwards():
    """A right-to-left mark would show `tip\u202evsc.exe` as tipexe.csv on the Tips page and in
    the audit trail."""
    assert files.stored_name("tip\u202evsc.exe\u2069.csv") == "tip_vsc.exe_.csv"
    assert files.stored_name("t\u200fip\x00.csv") == "t_ip_.csv"
    assert files.stored_name("\u062a\u200c\u0627.csv") == "\u062a\u200c\u0627.csv"  # a joiner of a script stays


@pytest.mark.parametrize("field, value", [("first_seen", "0001-01-01T00:00+01:00"),
                                          ("last_seen", "9999-12-31T23:30-01:00")])
def test_a_date_out_of_range_once_in_utc_is_a_bad_row_not_a_crash(session, world, field, value):
    with pytest.raises(TipRejected) as refused:
        run_import(session, world, tip(account(1), account(2, **{field: value})))
    assert [(e.line, e.field, e.reason[:25]) for e in refused.value.errors] == [(3, field, "out of the range of dates")]


def test_a_row_with_more_fields_than_the_header_is_a_bad_row():
    """An unquoted "1,500" would move a count into the next column, unreported."""
    data = b"platform,account_id,uploads_a,uploads_b,uploads_c\ndiscord,acc1,1,500,0,7\ndiscord,acc2,1,,,\n"
    result = reader.read(io.BytesIO(data), "csv", b"k")
    assert [a.account_id for a in result.accounts] == ["acc2"]  # empty extra cells are nothing
    assert [(e.line, e.field, e.reason) for e in result.errors] == [
        (2, "-", "6 fields where the header names 5 (a value with a comma in it is written in quotes): "
                 "discord | acc1 | 1 | 500 | 0 | 7")]


@pytest.mark.parametrize("blank", [",,,", "   ", '"",,'])
def test_a_row_of_nothing_but_separators_is_no_row(blank, monkeypatch):
    data = f"{blank}\nplatform,account_id,username,email\ndiscord,a,x,\n{blank}\ndiscord,b,y,\n".encode()
    result = reader.read(io.BytesIO(data), "csv", b"k")
    assert (result.rows, result.errors, [a.line for a in result.accounts]) == (2, [], [3, 5])
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    parallel = validation.validate(data, "csv", b"k", workers=2, chunk_bytes=1)
    assert (parallel.rows, parallel.errors, [a.line for a in parallel.accounts]) == (2, [], [3, 5])


@pytest.mark.parametrize("literal, refused", [("NaN", "NaN is no JSON number"), ("Infinity", "Infinity is no JSON"),
                                              ("1e400000", "more than 2000 digits")])
def test_a_json_account_id_that_is_no_exact_number_is_refused(literal, refused):
    data = ('{"platform": "discord", "account_id": %s}\n' % literal).encode()
    result = reader.read(io.BytesIO(data), "jsonl", b"k")
    assert result.accounts == [] and refused in result.errors[0].reason


def test_a_json_number_keeps_every_digit():
    data = b'{"platform": "discord", "account_id": 12345678901234567890.0, "uploads_a": 1e3}\n'
    (only,) = reader.read(io.BytesIO(data), "jsonl", b"k").accounts
    assert (only.account_id, only.uploads_a) == ("12345678901234567890", 1000)


def test_a_byte_order_mark_inside_a_json_lines_file_reads_the_same_in_chunks(monkeypatch):
    lines = [json.dumps({"platform": "discord", "account_id": f"a{n}"}) for n in range(1, 7)]
    lines[3] = "\ufeff" + lines[3]  # two files joined
    data = ("\ufeff" + "\n".join(lines) + "\n").encode()
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    single = reader.read(io.BytesIO(data), "jsonl", b"k")
    parallel = validation.validate(data, "jsonl", b"k", workers=2, chunk_bytes=1)
    assert [(e.line, e.field) for e in single.errors] == [(4, "-")]
    assert [(e.line, e.field) for e in parallel.errors] == [(4, "-")]
    assert [tuple(a) for a in parallel.accounts] == [tuple(a) for a in single.accounts]


@pytest.mark.parametrize("data, line", [
    (b"platform,account_id,username\rdiscord,a,x\rdiscord,b,data:image/png;base64,AAAA\r", 3),  # lone CRs
    (b"platform,account_id,username\ndiscord,a,x\ndiscord,b,esc\x1bape\n", 3),  # within the sniffed head
])
def test_a_file_refused_for_what_it_holds_names_the_line(data, line):
    with pytest.raises(DomainError, match=f"on line {line}\\)"):
        files.check_content(data)


def test_a_bad_international_phone_is_reported_beside_an_unknown_country():
    data = b"platform,account_id,country_hint,phone\ndiscord,a,Atlantis,+1 2\ndiscord,b,Atlantis,2\n"
    result = reader.read(io.BytesIO(data), "csv", b"k")
    assert [(e.line, e.field) for e in result.errors] == [(2, "country_hint"), (2, "phone"), (3, "country_hint")]


@pytest.mark.parametrize("blank", ["\u00a0", "\x0c", "\u3000,"])
def test_a_line_of_unicode_spaces_before_the_header_reads_as_in_the_reader(blank, monkeypatch):
    data = f"{blank}\nplatform,account_id\ndiscord,a\ndiscord,b\n".encode()
    files.check_content(data)
    single = reader.read(io.BytesIO(data), "csv", b"k")
    assert (single.errors, [a.line for a in single.accounts]) == ([], [3, 4])
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    for workers, chunk in ((1, validation.CHUNK_BYTES), (2, 1)):
        result = validation.validate(data, "csv", b"k", workers=workers, chunk_bytes=chunk)
        assert (result.errors, [a.line for a in result.accounts]) == ([], [3, 4])


@pytest.mark.parametrize("literal", ["1e9999999999999999999", "2.5E-99999999999999999999"])
def test_a_json_number_of_an_exponent_too_large_for_decimal_is_a_bad_row_not_a_crash(literal):
    data = ('{"platform": "discord", "account_id": "a"}\n{"platform": "discord", "account_id": %s}\n'
            % literal).encode()
    result = reader.read(io.BytesIO(data), "jsonl", b"k")
    assert [a.account_id for a in result.accounts] == ["a"] and [e.line for e in result.errors] == [2]


def test_the_reject_record_of_a_json_line_with_a_mark_is_the_same_however_the_file_is_cut(monkeypatch):
    lines = [json.dumps({"platform": "discord", "account_id": f"a{n}"}) for n in range(1, 7)]
    lines[3] = "\ufeff" + lines[3]  # two files joined
    data = ("\n".join(lines) + "\n").encode()
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    whole = validation.validate(data, "jsonl", b"k", workers=1)
    cut = validation.validate(data, "jsonl", b"k", workers=2, chunk_bytes=1)
    assert [e.line for e in whole.errors] == [e.line for e in cut.errors] == [4]
    assert cut.bad_records == whole.bad_records


@pytest.mark.parametrize("before", [",,,", '"",,', "   ", "x" * 140_000])
def test_the_reject_file_keeps_its_columns_after_a_row_of_separators_before_the_header(before):
    data = f"{before}\nplatform,account_id,email\ndiscord,a,broken\ndiscord,b,\n".encode()
    result = validation.validate(data, "csv", b"k", workers=1)
    if len(before) > 100:  # a header the csv module cannot read: refused, saying why
        assert result.header_error and "not readable as CSV" in result.errors[0].reason
        return
    assert [(e.line, e.field) for e in result.errors] == [(3, "email")]
    assert result.columns == ["platform", "account_id", "email"]
    reject = files.reject_csv(result.columns, result.errors, result.bad_records)
    header, first = reject.splitlines()[:2]
    assert header == "platform,account_id,email,line,field,reason" and first.startswith("discord,a,broken,3,email,")


def test_json_keys_no_field_takes_are_named_once_however_the_file_is_cut(monkeypatch):
    lines = [json.dumps({"platform": "discord", "account_id": f"acc{n}", "Verified": n % 2 == 0, "meta": {"n": n}})
             for n in range(200)]
    data = ("\n".join(lines) + "\n").encode()
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    result = validation.validate(data, "jsonl", b"k", workers=2, chunk_bytes=500)
    assert result.errors == [] and len(result.accounts) == 200
    assert result.ignored_columns == ["Verified", "meta"]


def test_files_that_are_not_utf8_text_are_refused(session, world):
    from app.services import DomainError

    for data, message in ((b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "PNG image"),
                          (tip(account(1, username="caf\u00e9")).replace(b"caf\xc3\xa9", b"caf\xe9"), "not UTF-8"),
                          (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 40, "video"),
                          (b"BM\x3a\x00\x00\x00\x00\x00\x00\x00\x36\x00" + b"\x00" * 40, "BMP image"),
                          (b'<?xml version="1.0"?>\n<!-- drawn -->\n<svg xmlns="http://www.w3.org/2000/svg"/>\n',
                           "SVG image"),
                          (b"\xef\xbb\xbf\r\n", "empty")):
        with pytest.raises(DomainError) as refused:
            run_import(session, world, data)
        assert message in refused.value.message
    assert count(session, Tip) == 0


TEXT_IMAGES = {
    "SVG image": [
        b'<?xml version="1.0"?>\n<?xml-stylesheet href="a.css"?>\n<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>\n',
        b'<?xml version="1.0"?>\n<!DOCTYPE svg [ <!ENTITY a "b"> ]>\n<svg xmlns="http://www.w3.org/2000/svg"/>\n',
        b'<svg:svg xmlns:svg="http://www.w3.org/2000/svg"><svg:rect/></svg:svg>\n',
    ],
    "Netpbm image": [b"P3\n2 1\n255\n255 0 0 0 255 0\n", b"P2\n# a comment\n1 1\n255\n0\n"],
    "XPM image": [b'/* XPM */\nstatic char *x[] = {"1 1 1 1", "a c #000000", "a"};\n'],
    "XBM image": [b"#define x_width 1\n#define x_height 1\nstatic char x_bits[] = {0x00};\n"],
    "PostScript or EPS image": [b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n"],
    "HTML page": [b"<!DOCTYPE html>\n<html><body>tip</body></html>\n", b"\n<!-- export -->\n<HTML>\n<body></body>\n"],
    "RTF document": [b"{\\rtf1\\ansi platform,account_id}\n"],
}


@pytest.mark.parametrize("what, data", [(what, data) for what, images in TEXT_IMAGES.items() for data in images])
def test_images_that_are_text_are_refused_saying_what_they_are(what, data):
    from app.services import DomainError

    with pytest.raises(DomainError, match=f"This file is an? {what}"):
        files.check_content(data)


def test_text_that_names_a_media_type_is_no_data_url(session, world):
    data = (b"platform,account_id,username,notes\ndiscord,acc1,metadata:image/png,"
            b"\"our data: image/png files, video/mp4 too\"\n")
    assert run_import(session, world, data).new_accounts == 1


@pytest.mark.parametrize("url", ["data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB",
                                 "DATA:Video/mp4;base64,AAAAGGZ0eXBtcDQy", "data:image/svg+xml,%3Csvg%3E",
                                 "x data: audio/ogg ;base64,T2dnUw"])
def test_an_image_or_video_carried_inside_a_tip_refuses_the_file(session, world, url):
    """Even in a column the import does not read: Handoff never accepts images or video."""
    data = f'platform,account_id,photo\ndiscord,acc1,\ndiscord,acc2,"{url}"\n'.encode()
    before = snapshot(session)
    with pytest.raises(DomainError, match=r"encoded image, video or audio file \(a data: URL on line 3\)"):
        run_import(session, world, data, skip_invalid=True)
    session.rollback()
    assert snapshot(session) == before


@pytest.mark.parametrize("line", [
    r'{"platform": "discord", "account_id": "acc2", "username": "\u0064ata:image/png;base64,iVBORw0KGgo"}',
    r'{"platform": "discord", "account_id": "acc2", "photo": "data:image\/png;base64,iVBORw0KGgo"}',
    r'{"platform": "discord", "account_id": "acc2", "extra": {"thumbs": ["x", "DATA:\u0076ideo/mp4;base64,AAAA"]}}',
])
@pytest.mark.parametrize("end", ["\n", "\r", "\r\n"])
def test_an_image_hidden_by_json_escapes_refuses_the_file(session, world, line, end):
    data = ('{"platform": "discord", "account_id": "acc1", "username": "back\\\\slash"}' + end + line + end).encode()
    before = snapshot(session)
    with pytest.raises(DomainError, match=r"encoded image, video or audio file \(a data: URL on line 2\)"):
        run_import(session, world, data, file_name="tip.jsonl", skip_invalid=True)
    session.rollback()
    assert snapshot(session) == before


def test_an_image_hidden_by_json_escapes_is_found_in_any_chunk_of_a_large_file(monkeypatch):
    lines = [json.dumps({"platform": "discord", "account_id": f"acc{n}", "username": f"user\\{n}"}) for n in range(300)]
    lines[250] = r'{"platform": "discord", "account_id": "x", "photo": ["\u0064ata:image/png;base64,iVBO"]}'
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    with pytest.raises(reader.MediaInTip) as found:
        validation.validate(("\n".join(lines) + "\n").encode(), "jsonl", b"k", workers=2, chunk_bytes=2000)
    assert found.value.line == 251


def _validate_in_thread(*args, **kwargs):
    """`validation.validate` in a daemon thread: (outcome, finished within a minute), so that a
    validation waiting for ever fails the test instead of hanging the run."""
    outcome = []

    def run():
        try:
            outcome.append(validation.validate(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the test as it is
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    return (outcome or [None])[0], not thread.is_alive()


def test_a_worker_ended_from_outside_breaks_the_validation_instead_of_leaving_it_waiting(monkeypatch):
    """A worker killed as it reads a chunk (the machine out of memory, a person's kill) ends the
    import with an error; a multiprocessing pool waited for its answer for ever."""
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    read = reader.read

    def read_and_die(stream, *args, line_offset=0, **kwargs):
        if line_offset > 1000:  # in a worker: fork copies this patch
            os.kill(os.getpid(), signal.SIGKILL)
        return read(stream, *args, line_offset=line_offset, **kwargs)

    monkeypatch.setattr(reader, "read", read_and_die)
    data = ("platform,account_id\n" + "".join(f"instagram,{n}\n" for n in range(3000))).encode()
    outcome, finished = _validate_in_thread(data, "csv", b"k", workers=2, chunk_bytes=2000)
    assert finished and isinstance(outcome, BrokenProcessPool)


def test_a_bad_chunk_ends_the_validation_every_time(monkeypatch):
    """An image found in a chunk raises while other chunks are still being read: the workers are
    let go at once, every time (a terminated multiprocessing pool hung now and then, waiting on
    its own queue's lock)."""
    lines = [json.dumps({"platform": "discord", "account_id": f"acc{n}"}) for n in range(300)]
    lines[150] = r'{"platform": "discord", "account_id": "x", "photo": ["\u0064ata:image/png;base64,iVBO"]}'
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    for _ in range(40):
        outcome, finished = _validate_in_thread(("\n".join(lines) + "\n").encode(), "jsonl", b"k", workers=2,
                                                chunk_bytes=1000)
        assert finished and isinstance(outcome, reader.MediaInTip) and outcome.line == 151


def test_backslashes_that_hide_no_image_are_imported(session, world):
    data = (b'{"platform": "discord", "account_id": "acc1", "username": "back\\\\slash", "note": "metadata:image/png"}\n'
            b'{"platform": "discord", "account_id": "acc2", "username": "\\u0064ata"}\n')
    assert run_import(session, world, data, file_name="tip.jsonl").new_accounts == 2
    assert run_import(session, world, b"platform,account_id,username\ndiscord,acc3,back\\slash\n").new_accounts == 1


# --- idempotence and the killed import ----------------------------------------------------------

def test_reimporting_the_same_or_an_overlapping_file_adds_only_what_is_new(session, world):
    first = tip(*(account(n, email=f"p{n}@example.org", uploads_b="1") for n in range(1, 7)))
    run_import(session, world, first)
    after_first = snapshot(session)
    again = run_import(session, world, first)
    assert (again.new_accounts, again.known_accounts, again.new_holders) == (0, 6, 0)
    assert again.routing.created == [] and again.hits is None
    assert snapshot(session)[1:] == after_first[1:]  # only the second import's own record is new
    overlap = tip(*(account(n, email=f"p{n}@example.org", uploads_b="1") for n in range(4, 10)))
    result = run_import(session, world, overlap)
    assert (result.new_accounts, result.known_accounts, result.new_holders) == (3, 3, 3)
    assert count(session, TipAccount) == 9 and len(live_holders(session, world)) == 9
    # Case and spacing do not make an account new: the natural key is normalised.
    result = run_import(session, world, tip(account(1, account_id=" ACC1 ", email="p1@example.org")))
    assert result.new_accounts == 0
    # A known account given otherwise stays as first imported; the summary counts it.
    assert again.differing_known == 0 and result.differing_known == 1  # acc1 had category B uploads
    changed = run_import(session, world, tip(account(2, email="P2@Example.org", uploads_b="1"),
                                             account(3, email="new3@example.org", uploads_b="1")))
    assert (changed.known_accounts, changed.differing_known) == (2, 1)
    run_import(session, world, tip(account(20, ip_addresses="192.0.2.1;192.0.2.2")))
    reordered = run_import(session, world, tip(account(20, ip_addresses="192.0.2.2; 192.0.2.1")))
    assert (reordered.known_accounts, reordered.differing_known) == (1, 0)
    assert session.scalar(select(TipAccount.email).where(TipAccount.account_key == "acc3")) == "p3@example.org"
    # Who imported is the tip's to say; the rows it wrote name no creator of their own.
    assert set(session.scalars(select(Tip.imported_by_id))) == {world.users["c_liaison"].id}
    assert set(session.scalars(select(Identifier.created_by_id))) == {None}
    assert set(session.scalars(select(Subject.created_by_id))) == {None}


def cli_env(any_app) -> dict[str, str]:
    """The environment of a command run on the test's database."""
    return {**os.environ, "HANDOFF_CONFIG": "testing", "HANDOFF_DATABASE_URL": any_app.config["DATABASE_URL"]}


def import_command(path) -> list[str]:
    return [sys.executable, "-m", "flask", "--app", "wsgi", "import-tip", str(path), "--operation", "LANTERN"]


def start_paused_import(any_app, path, seconds: int = 60, **popen) -> subprocess.Popen:
    """The import-tip command on `path` in a subprocess, once it has paused (test hook) for
    `seconds` right after writing the accounts inside its transaction."""
    process = subprocess.Popen(import_command(path), cwd=ROOT, env={**cli_env(any_app), PAUSE_ENV: str(seconds)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    for line in process.stderr:
        if "import paused" in line:
            return process
    process.kill()
    process.wait()
    pytest.fail(f"the import never paused: {process.stdout.read()}")


def test_a_killed_import_leaves_nothing_and_running_it_again_completes(any_app, session, world, tmp_path):
    """The CLI in a subprocess pauses (test hook) right after writing the accounts inside its
    transaction; it is killed with SIGKILL there. The database is as before; a second run
    imports everything."""
    session.commit()
    before = snapshot(session)
    path = tmp_path / "tip.csv"
    path.write_bytes(tip(*(account(n, email=f"k{n}@example.org") for n in range(1, 41))))
    process = start_paused_import(any_app, path)
    try:
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    session.rollback()
    assert snapshot(session) == before
    done = subprocess.run(import_command(path), cwd=ROOT, env=cli_env(any_app), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "40 new accounts" in done.stdout
    session.rollback()
    assert count(session, TipAccount) == 40 and count(session, Tip) == 1
    assert audit.verify(session).ok


def test_parallel_validation_gives_what_one_reader_gives(monkeypatch):
    rows = [account(n, email=f"v{n}@example.org", phone="+61 412 345 678" if n % 3 else "",
                    ip_addresses="2001:db8::1;192.0.2.7") for n in range(1, 400)]
    rows[50]["email"] = "broken"
    rows[300] = dict(rows[10])  # a duplicate in another chunk
    rows[351] = dict(rows[350])  # a duplicate within a later chunk: its reason names the first line in the file
    rows[301]["username"] = 'multi\nline "quoted"'  # a record spanning two lines
    data = tip(*rows)
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    parallel = validation.validate(data, "csv", b"k", workers=2, chunk_bytes=4000)
    single = reader.read(io.BytesIO(data), "csv", b"k")
    assert [tuple(a) for a in parallel.accounts] == [tuple(a) for a in single.accounts]  # identifiers, keys and all
    assert [(e.line, e.field, e.reason) for e in parallel.errors] == [(e.line, e.field, e.reason) for e in single.errors]
    assert parallel.bad_records[302]["account_id"] == "acc11"  # the cross-chunk duplicate, read back for the reject file
    first = next(a.line for a in single.accounts if a.account_id == "acc351")
    assert [(e.line, e.reason) for e in parallel.errors if e.line == first + 1] == [
        (first + 1, f"duplicate of line {first} (same platform and account id)")]


@pytest.mark.parametrize("chunk_bytes", [10, 25, 40, 60, 90, 150])
def test_parallel_validation_follows_the_csv_reader_around_stray_quotes(monkeypatch, chunk_bytes):
    """A quote inside an unquoted field is a plain character to the csv module; chunks must
    not be cut inside a quoted field that follows one. Duplicates name the same first line."""
    header = ",".join(reader.FIELDS)
    rows = ['instagram,1,o"brien,,,,NZ,,,,,,', 'instagram,2,,"a@b.org\nx",,,NZ,,,,,,']
    rows += [f"instagram,{n},,,,,NZ,,,,,," for n in (3, 4, 3, 3, 5)]
    rows += ["instagram,40,,bad-email,,,NZ,,,,,,", "instagram,41,,,,,NZ,,,,,,", "instagram,40,,,,,NZ,,,,,,"]
    rows += ['instagram,6,"quoted ""name""",,,,NZ,,,,,,'] + [f"instagram,{n},,v{n}@example.org,,,NZ,,,,,," for n in range(7, 30)]
    data = ("\n".join([header, *rows]) + "\n").encode()
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    parallel = validation.validate(data, "csv", b"k", workers=2, chunk_bytes=chunk_bytes)
    single = reader.read(io.BytesIO(data), "csv", b"k")
    assert [tuple(a) for a in parallel.accounts] == [tuple(a) for a in single.accounts]
    assert [(e.line, e.field, e.reason) for e in parallel.errors] == [(e.line, e.field, e.reason) for e in single.errors]
    assert [(e.line, e.reason) for e in single.errors if e.field == "account_id"] == [
        (7, "duplicate of line 5 (same platform and account id)"),
        (8, "duplicate of line 5 (same platform and account id)"),
        (12, "duplicate of line 10 (same platform and account id)")]  # line 10 is bad itself


def test_parallel_validation_counts_a_lone_cr_as_the_reader_does(monkeypatch):
    rows = [f"instagram,{n},,,,,NZ,,,,,," for n in range(1, 12)]
    rows[2] = 'instagram,3,"two\rlines",,,,NZ,,,,,,'  # a CR inside a quoted field: a line of its own
    rows[8] = "instagram,9,,,,,NZ,,,,,-1,"
    data = ("\r\n".join([",".join(reader.FIELDS), *rows]) + "\r\n").encode()
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    parallel = validation.validate(data, "csv", b"k", workers=2, chunk_bytes=60)
    single = reader.read(io.BytesIO(data), "csv", b"k")
    assert [(e.line, e.field) for e in parallel.errors] == [(e.line, e.field) for e in single.errors]
    assert [a.line for a in parallel.accounts] == [a.line for a in single.accounts]


@pytest.mark.parametrize("chunk_bytes", [30, 70, 200])
def test_parallel_validation_agrees_with_the_reader_around_blank_lines_lone_crs_and_unreadable_rows(
        monkeypatch, chunk_bytes):
    rows = [f"instagram,{n},,,,,NZ,,,,,," for n in range(1, 16)]
    rows[1] = 'instagram,2,o"brien,,,,NZ,,,,,,'  # a quote: the file is cut by the csv module
    rows[3] = "instagram,4,two\rlines,,,,NZ,,,,,,"  # a lone CR in an unquoted field ends a line
    rows[5] = ""
    rows[6] = "instagram,7,,,,,NZ,,,,,-1,"
    rows[9] = f'instagram,10,"{"x" * 200_000}",,,,NZ,,,,,,'  # beyond the csv module's field limit
    rows[12] = "instagram,7,,,,,NZ,,,,,,"
    data = ("\n".join([",".join(reader.FIELDS), *rows, "", "instagram,16,,,,,NZ,,,,,,-2"]) + "\n").encode()
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    assert len(validation._chunks(data, "csv", chunk_bytes)) > 2
    parallel = validation.validate(data, "csv", b"k", workers=2, chunk_bytes=chunk_bytes)
    single = reader.read(io.BytesIO(data), "csv", b"k")
    assert [(e.line, e.field, e.reason) for e in parallel.errors] == [(e.line, e.field, e.reason) for e in single.errors]
    assert [tuple(a) for a in parallel.accounts] == [tuple(a) for a in single.accounts]
    # The lone CR's second line is a row of its own (a bad one); the blank lines are no rows.
    assert sorted({(e.line, e.field) for e in single.errors}) == [
        (6, "account_id"), (6, "phone"), (6, "platform"), (9, "first_seen"), (12, "-"), (15, "account_id"),
        (19, "last_seen")]
    assert "duplicate of line 9" in next(e.reason for e in single.errors if e.line == 15)


@pytest.mark.parametrize("header_end, row_end", [("\r", "\r"), ("\r", "\n"), ("\r\n", "\r")])
@pytest.mark.parametrize("extra_column", ["notes", 'o"x'])
def test_parallel_validation_finds_the_header_where_the_csv_module_ends_it(monkeypatch, header_end, row_end,
                                                                          extra_column):
    rows = [f"instagram,{n},,,,,NZ,,,,,,,x" for n in range(1, 30)]
    rows[4] = "instagram,5,,,,,NZ,,,,,-1,,x"
    data = (",".join([*reader.FIELDS, extra_column]) + header_end + row_end.join(rows) + row_end).encode()
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    parallel = validation.validate(data, "csv", b"k", workers=2, chunk_bytes=80)
    single = reader.read(io.BytesIO(data), "csv", b"k")
    assert (parallel.rows, len(parallel.accounts)) == (single.rows, len(single.accounts)) == (29, 28)
    assert [(e.line, e.field) for e in parallel.errors] == [(e.line, e.field) for e in single.errors] == [
        (6, "first_seen")]
    assert parallel.ignored_columns == [extra_column]


def test_chunked_validation_agrees_with_one_reader_on_random_files(monkeypatch):
    """Random small files mixing the three line ends, blank lines, quoted line breaks, stray
    quotes, bad rows and duplicates, cut into random chunks (a deterministic sample)."""
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    rng = random.Random(20261201)
    ends = ["\n", "\r\n", "\r"]
    for _case in range(300):
        rows = ["platform,account_id,username" + rng.choice(["", ',o"x', ",notes"])]
        for n in range(rng.randint(0, 12)):
            rows.append(rng.choice(["", f'instagram,{n},"two{rng.choice(ends)}lines"', f"nope,{n},x",
                                    f'instagram,{n},o"b', f"instagram,{rng.randint(0, 5)},u{n}"]))
        text = "".join(row + rng.choice(ends) for row in rows)
        data = (text.rstrip("\r\n") if rng.random() < 0.3 else text).encode()
        single = reader.read(io.BytesIO(data), "csv", b"k")
        chunked = validation.validate(data, "csv", b"k", workers=1, chunk_bytes=rng.randint(1, 40))
        assert [(e.line, e.field, e.reason) for e in chunked.errors] == [
            (e.line, e.field, e.reason) for e in single.errors], data
        assert [tuple(a) for a in chunked.accounts] == [tuple(a) for a in single.accounts], data


def test_splitting_a_large_csv_with_a_stray_quote_reads_it_once():
    """Cutting chunks used to count quotes from the chunk's start at every newline: a stray
    quote made that quadratic (minutes for a full tip)."""
    body = b'instagram,0,o"brien,,,,NZ,,,,,,\n' + b"instagram,1,,,,,NZ,,,,,,\n" * 200_000
    chunks = validation._chunks(body, "csv", 1_000_000)
    assert len(chunks) > 3 and chunks[0][0] == 0 and chunks[-1][1] == len(body)
    assert all(body[end - 1:end] == b"\n" and end == start_next for (_s, end), (start_next, _e) in zip(chunks, chunks[1:]))


# --- clustering through the importer -----------------------------------------------------------

def test_chains_join_and_ips_or_other_platforms_do_not(session, world):
    run_import(session, world, tip(
        account(1, email="chain@example.org"),
        account(2, email="chain@example.org", phone="+61 412 000 001"),
        account(3, phone="+61 412 000 001", username="linker"),
        account(4, username="@Linker"),  # the same handle on the same platform, written differently
        account(5, platform="steam", username="linker"),  # same handle, another platform: another person
        account(6, ip_addresses="2001:db8::9", email="alone@example.org"),
        account(7, ip_addresses="2001:db8::9"),  # a shared address says where, not who
    ))
    chain = holder_of(session, world, "acc1")
    assert {holder_of(session, world, f"acc{n}").id for n in (1, 2, 3, 4)} == {chain.id}
    assert len({holder_of(session, world, f"acc{n}").id for n in (1, 5, 6, 7)}) == 4
    view = holder_service.view_holder(session, world.actor("c_liaison"), chain.subject_id)
    assert {(e.kind.value, e.platform, e.value) for e in view.shared} == {
        ("email", "", "chain@example.org"), ("phone", "", "+61412000001"), ("username", "discord", "linker")}
    assert chain.accounts == 4 and len(view.accounts) == 4


def test_common_identifiers_join_nobody(session, world):
    threshold = session.info["config"]["COMMON_IDENTIFIER_THRESHOLD"]
    shared = "+44 20 7946 0999"
    rows = [account(n, phone=shared, email=f"c{n}@example.org") for n in range(1, threshold + 2)]
    rows.append(account(100, phone="+44 20 7946 0111", email="pair@example.org"))
    rows.append(account(101, phone="+44 20 7946 0111"))
    result = run_import(session, world, tip(*rows))
    assert result.common_identifiers == 1
    assert len(live_holders(session, world)) == threshold + 2  # the shared number joined nobody; the pair did
    view = holder_service.view_holder(session, world.actor("c_liaison"), holder_of(session, world, "acc1").subject_id)
    assert view.shared == [] and [(e.value, e.operation_accounts) for e in view.common] == [("+442079460999",
                                                                                              threshold + 1)]


def test_a_later_tip_keeps_the_common_identifiers_of_earlier_ones(session, world):
    """A second tip whose accounts do not hold the common number leaves it common, and counts it
    again when one does."""
    threshold = session.info["config"]["COMMON_IDENTIFIER_THRESHOLD"]
    shared = "+44 20 7946 0999"
    run_import(session, world, tip(*(account(n, phone=shared, email=f"c{n}@example.org")
                                     for n in range(1, threshold + 2))))
    second = run_import(session, world, tip(account(500, email="other@example.org")), file_name="b.csv")
    assert second.common_identifiers == 0  # none among its accounts
    lead = world.actor("c_liaison")
    view = holder_service.view_holder(session, lead, holder_of(session, world, "acc1").subject_id)
    assert [(e.value, e.operation_accounts) for e in view.common] == [("+442079460999", threshold + 1)]
    third = run_import(session, world, tip(account(501, phone=shared)), file_name="c.csv")
    assert third.common_identifiers == 1
    view = holder_service.view_holder(session, lead, holder_of(session, world, "acc1").subject_id)
    assert [(e.value, e.operation_accounts) for e in view.common] == [("+442079460999", threshold + 2)]


def test_a_common_key_a_raised_threshold_lets_join_is_no_longer_listed_common(session, world):
    """Delete-all-then-insert dropped a met key that is no longer common; the upsert keeps it
    with its old count, so the holder page calls a key that joined four accounts 'common, 3'."""
    config = session.info["config"]
    old = config["COMMON_IDENTIFIER_THRESHOLD"]
    try:
        config["COMMON_IDENTIFIER_THRESHOLD"] = 2
        shared = "+44 20 7946 0999"
        first = run_import(session, world, tip(*(account(n, phone=shared) for n in range(1, 4))))
        assert first.common_identifiers == 1
        config["COMMON_IDENTIFIER_THRESHOLD"] = 10
        second = run_import(session, world, tip(account(4, phone=shared)), file_name="b.csv")
        assert second.common_identifiers == 0 and second.merges  # it joins them all now
        view = holder_service.view_holder(session, world.actor("c_liaison"),
                                          holder_of(session, world, "acc1").subject_id)
        assert [(e.value, e.accounts, e.common) for e in view.shared] == [("+442079460999", 4, False)]
    finally:
        config["COMMON_IDENTIFIER_THRESHOLD"] = old


def test_an_identifier_common_when_it_came_raises_its_hits_when_its_referral_next_changes(session, world, match_path):
    """Two of Alpha's referrals and the tip's package held an address, common under a threshold
    of 1: no hit. With the threshold raised, the next import onto the package finds both."""
    config = session.info["config"]
    old = config["COMMON_IDENTIFIER_THRESHOLD"]
    try:
        config["COMMON_IDENTIFIER_THRESHOLD"] = 1
        alphas = [known_to_alpha(session, world, "ip: 203.0.113.7").id for _ in range(2)]
        run_import(session, world, tip(account(1, email="one@example.org", ip_addresses="203.0.113.7")))
        package = holder_of(session, world, "acc1").referral_id
        touching = or_(Hit.referral_low_id == package, Hit.referral_high_id == package)
        assert session.scalars(select(Hit).where(touching)).all() == []
        config["COMMON_IDENTIFIER_THRESHOLD"] = 20
        run_import(session, world, tip(account(2, email="two@example.org")), file_name="b.csv")
        assert holder_of(session, world, "acc2").referral_id == package
        assert sorted({h.referral_low_id for h in session.scalars(select(Hit).where(touching))}) == alphas
    finally:
        config["COMMON_IDENTIFIER_THRESHOLD"] = old


def test_an_identifier_no_longer_common_raises_the_hit_of_two_referrals_the_import_did_not_touch(session, world, match_path):
    """Alpha's and Bravo's referrals and the tip's package held an address, common under a
    threshold of 1: no hit. With the threshold raised, the next import onto the package raises
    the package's hits and the one between Alpha's and Bravo's referrals, which it did not
    touch, and the address is no longer listed common."""
    config = session.info["config"]
    old = config["COMMON_IDENTIFIER_THRESHOLD"]
    try:
        config["COMMON_IDENTIFIER_THRESHOLD"] = 1
        alpha = known_to_alpha(session, world, "ip: 203.0.113.7")
        bravo = make_referral(session, world, status="sent", sender="b", receiver="a")
        subjects.add_subject(session, world.actor("b_liaison"), bravo.id, "Known", "ip: 203.0.113.7")
        run_import(session, world, tip(account(1, email="one@example.org", ip_addresses="203.0.113.7")))
        package = holder_of(session, world, "acc1").referral_id
        assert count(session, Hit) == 0 and count(session, CommonIdentifier) == 1
        config["COMMON_IDENTIFIER_THRESHOLD"] = 20
        result = run_import(session, world, tip(account(2, email="two@example.org")), file_name="b.csv")
        assert holder_of(session, world, "acc2").referral_id == package
        hits = {(h.referral_low_id, h.referral_high_id): h.id for h in session.scalars(select(Hit))}
        assert set(hits) == {tuple(sorted(pair)) for pair in ((alpha.id, bravo.id), (alpha.id, package),
                                                                (bravo.id, package))}
        assert sorted(result.hits.created) == sorted(hits.values())
        assert count(session, CommonIdentifier) == 0
        untouched = hits[tuple(sorted((alpha.id, bravo.id)))]
        told = session.scalars(select(Notification.agency_id).where(Notification.hit_id == untouched)).all()
        assert sorted(told) == sorted([world.agencies["a"].id, world.agencies["b"].id])
    finally:
        config["COMMON_IDENTIFIER_THRESHOLD"] = old


def test_a_case_transferred_on_counts_once_when_the_import_tells_common_identifiers(session, world, match_path):
    """Alpha's referral holding an address was transferred on twice: three referrals, one case.
    With the tip's package holding it too, two cases hold it, not four referrals: under a
    threshold of 2 the import raises the package's hit with the referral the case came in on."""
    config = session.info["config"]
    old = config["COMMON_IDENTIFIER_THRESHOLD"]
    try:
        config["COMMON_IDENTIFIER_THRESHOLD"] = 2
        case = [make_referral(session, world, "sent", sender="a", receiver="b", handling_code="H1")]
        subjects.add_subject(session, world.actor("a_liaison"), case[0].id, "Known", "ip: 203.0.113.7")
        for receiver, onward in (("b", "i"), ("i", "c")):
            referrals.transition(session, world.actor(f"{receiver}_liaison"), case[-1].id, "acknowledge", None)
            case.append(referrals.transition(session, world.actor(f"{receiver}_liaison"), case[-1].id, "transfer",
                                             None, transfer_to_agency_id=world.agencies[onward].id))
        result = run_import(session, world, tip(account(1, email="one@example.org", ip_addresses="203.0.113.7")))
        package = holder_of(session, world, "acc1").referral_id
        [hit] = session.scalars(select(Hit)).all()
        assert (hit.referral_low_id, hit.referral_high_id) == (case[0].id, package)
        assert result.hits.created == [hit.id] and count(session, CommonIdentifier) == 0
    finally:
        config["COMMON_IDENTIFIER_THRESHOLD"] = old


def test_an_identifier_that_turned_common_is_still_listed_among_what_a_holders_accounts_share(session, world):
    """Twenty accounts joined by one number, then a twenty-first holding it: the number is common
    now and joins nobody more, but the holder page still lists it as shared by its twenty, not
    as an identifier that joined nobody."""
    threshold = session.info["config"]["COMMON_IDENTIFIER_THRESHOLD"]
    shared = "+44 20 7946 0999"
    run_import(session, world, tip(*(account(n, phone=shared) for n in range(1, threshold + 1))))
    run_import(session, world, tip(account(threshold + 1, phone=shared)), file_name="b.csv")
    holder = holder_of(session, world, "acc1")
    assert holder.accounts == threshold and holder_of(session, world, f"acc{threshold + 1}").id != holder.id
    view = holder_service.view_holder(session, world.actor("c_liaison"), holder.subject_id)
    assert [(e.value, e.accounts, e.common, e.operation_accounts) for e in view.shared] == [
        ("+442079460999", threshold, True, threshold + 1)]
    assert view.common == []


def test_a_new_account_bridging_two_holders_merges_them_into_the_older(session, world):
    run_import(session, world, tip(account(1, email="left@example.org"), account(2, username="righty", uploads_a="10")))
    left, right = holder_of(session, world, "acc1"), holder_of(session, world, "acc2")
    assert left.id < right.id and right.referral_id is not None
    right_draft = right.referral_id
    result = run_import(session, world, tip(account(3, email="left@example.org", username="righty")))
    assert result.merges == [(left.id, [right.id])]
    session.expire_all()
    right = session.get(Holder, right.id)
    assert right.merged_into_id == left.id and right.referral_id is None
    assert {holder_of(session, world, f"acc{n}").id for n in (1, 2, 3)} == {left.id}
    assert session.get(Holder, left.id).accounts == 3
    keys = set(session.scalars(select(Subject).where(Subject.id == left.subject_id)).one().identifiers)
    assert {i.value for i in keys} >= {"left@example.org", "righty", "acc2"}
    assert session.get(Referral, right_draft) is None  # the emptied draft was discarded
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "tip.holders_merge")).one()
    assert entry.object_id == str(left.id) and str(right.id) in entry.detail
    assert [h.id for h in live_holders(session, world)] == [left.id]


def test_a_merge_of_holders_holding_one_key_in_two_spellings_keeps_one_identifier(session, world):
    """An address written two ways joins nobody (addresses never join), so two holders can
    hold its one match key; the survivor of their merge gets it once."""
    run_import(session, world, tip(account(1, email="left@example.org"),
                                   account(2, username="righty", ip_addresses="2001:DB8::1"),
                                   account(3, phone="+61 412 000 001", ip_addresses="2001:db8:0:0::1")))
    holders = {holder_of(session, world, f"acc{n}").id for n in (1, 2, 3)}
    assert len(holders) == 3
    result = run_import(session, world, tip(account(4, email="left@example.org", username="righty",
                                                    phone="+61412000001")))
    survivor = holder_of(session, world, "acc1")
    assert result.merges == [(survivor.id, sorted(holders - {survivor.id}))]
    addresses = session.scalars(select(Identifier.value).where(Identifier.subject_id == survivor.subject_id,
                                                               Identifier.kind == IdentifierKind.IP)).all()
    assert addresses == ["2001:db8::1"]


def test_counts_summed_past_32_bits_are_stored_whole(session, world):
    # One holder of 2,200 accounts, joined in a chain (each identifier held by two: none common).
    rows = [account(n, email=f"e{n // 2}@example.org", username=f"u{(n + 1) // 2}", uploads_c=str(reader.MAX_COUNT))
            for n in range(1, 2201)]
    rows.append(account(9000, email="other@example.org", uploads_c=str(reader.MAX_COUNT)))  # same package
    run_import(session, world, tip(*rows))
    session.expire_all()
    holder = holder_of(session, world, "acc1")
    assert (holder.accounts, holder.grade_c) == (2200, 2_200_000_000)
    package = session.get(Referral, holder.referral_id)
    assert package.grade_c == 2_201_000_000
    # The other holder, flagged, leaves for a P2 referral of its own; the package's figures,
    # recomputed by the database, keep the sum whole.
    holder_service.set_risk_flags(session, world.actor("c_liaison"), holder_of(session, world, "acc9000").subject_id,
                                  {"risk_previous_convictions": True})
    session.expire_all()
    assert holder_of(session, world, "acc9000").referral_id != package.id
    assert session.get(Referral, package.id).grade_c == 2_200_000_000


def test_a_holder_merged_twice_over_points_to_where_its_accounts_are(session, world):
    """C is absorbed into B, then B into A: C's accounts are A's, and C says so."""
    run_import(session, world, tip(account(1, email="a@example.org"), account(2, email="b@example.org"),
                                   account(3, email="c@example.org")))
    a, b, c = (holder_of(session, world, f"acc{n}") for n in (1, 2, 3))
    run_import(session, world, tip(account(4, email="b@example.org", phone="+61 412 000 004"),
                                   account(5, email="c@example.org", phone="+61 412 000 004")), file_name="2.csv")
    run_import(session, world, tip(account(6, email="a@example.org", username="bridge"),
                                   account(7, email="b@example.org", username="bridge")), file_name="3.csv")
    session.expire_all()
    assert session.get(Holder, b.id).merged_into_id == a.id
    assert session.get(Holder, c.id).merged_into_id == a.id
    view = holder_service.view_holder(session, world.actor("c_liaison"), a.subject_id)
    assert {m.id for m in view.merged_from} == {b.id, c.id} and len(view.accounts) == 7


def test_a_merge_keeps_the_jurisdiction_a_person_set_on_an_absorbed_holder(session, world):
    run_import(session, world, tip(account(1, email="left@example.org"),
                                   account(2, username="righty", country_hint="AU", ip_country="NZ")))
    left, right = holder_of(session, world, "acc1"), holder_of(session, world, "acc2")
    holder_service.set_jurisdiction(session, world.actor("c_liaison"), right.subject_id, "NZ")
    session.flush()
    run_import(session, world, tip(account(3, email="left@example.org", username="righty")))
    session.expire_all()
    survivor = session.get(Holder, left.id)
    assert (survivor.jurisdiction, survivor.jurisdiction_source) == ("NZ", JurisdictionSource.MANUAL)
    assert survivor.jurisdiction_set_by_id == world.users["c_liaison"].id and not survivor.needs_review
    assert session.get(Referral, survivor.referral_id).jurisdiction == "NZ"


# --- jurisdiction, routing, triage ----------------------------------------------------------------

def test_conflicting_evidence_goes_to_review_and_a_person_decides(session, world):
    run_import(session, world, tip(account(1, country_hint="AU", ip_country="NZ", email="x@example.org"),
                                   account(2, country_hint="", ip_country="NZ", email="x@example.org"),
                                   account(3, country_hint="AU", ip_country="AU")))
    unsure = holder_of(session, world, "acc1")
    assert (unsure.jurisdiction, unsure.confidence, unsure.needs_review) == ("AU", 0.5, True)
    assert unsure.evidence == {"AU": 2, "NZ": 2}
    lead = world.users["c_liaison"]
    listed = holder_service.review_list(session, lead, holder_service.HolderFilters())
    assert [h.id for h in listed.items] == [unsure.id]
    assert holder_service.review_list(session, lead, holder_service.HolderFilters(country="NZ")).total == 0
    assert unsure.receiver_agency_id == world.agencies["b"].id
    decision = holder_service.set_jurisdiction(session, world.actor("c_liaison"), unsure.subject_id, "nz",
                                               "Provider confirmed.")
    holder = decision.holder
    assert (holder.jurisdiction, holder.jurisdiction_source, holder.needs_review) == ("NZ", JurisdictionSource.MANUAL,
                                                                                    False)
    assert holder.receiver_agency_id == world.agencies["a"].id and decision.moved
    assert session.get(Referral, holder.referral_id).receiver_agency_id == world.agencies["a"].id
    assert holder_service.review_list(session, lead, holder_service.HolderFilters()).total == 0
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "tip.holder_jurisdiction")).one()
    assert '"to": "NZ"' in entry.detail and entry.user_id == lead.id
    # A later import keeps the decision.
    run_import(session, world, tip(account(4, email="x@example.org", country_hint="AU", ip_country="AU")))
    session.expire_all()
    assert session.get(Holder, holder.id).jurisdiction == "NZ"
    with pytest.raises(Exception):
        holder_service.set_jurisdiction(session, world.actor("b_liaison"), holder.subject_id, "AU")


def test_routing_to_focal_points_packages_and_the_unrouted_list(session, world):
    result = run_import(session, world, tip(
        account(1, email="au1@example.org"), account(2, email="au2@example.org"),  # P4, AU: one package
        account(3, email="au3@example.org", uploads_b="1"),  # P3, AU: another package
        account(4, email="au4@example.org", uploads_a="10"),  # P2, AU: its own draft
        account(5, country_hint="FR", ip_country="FR"),  # no focal point: the international body
        account(6, country_hint="GB", ip_country="GB"),  # the lead agency's own country
        account(7, country_hint="", ip_country=""),  # no evidence: review, no referral
    ))
    h = {n: holder_of(session, world, f"acc{n}") for n in range(1, 8)}
    b, i = world.agencies["b"].id, world.agencies["i"].id
    assert h[1].referral_id == h[2].referral_id and h[1].packaged
    assert len({h[1].referral_id, h[3].referral_id, h[4].referral_id}) == 3
    package = session.get(Referral, h[1].referral_id)
    assert (package.receiver_agency_id, package.priority, package.status, package.jurisdiction) == (b, Priority.P4,
                                                                                                   Status.DRAFT, "AU")
    assert package.sender_agency_id == world.agencies["c"].id and package.operation_id == world.operation.id
    assert session.scalar(select(func.count()).select_from(referral_subjects).where(
        referral_subjects.c.referral_id == package.id)) == 2
    own = session.get(Referral, h[4].referral_id)
    assert (own.priority, own.grade_a, h[4].packaged) == (Priority.P2, 10, False)
    assert [e.action for e in own.events] == ["create"]
    assert (h[5].routing, h[5].receiver_agency_id) == (HolderRouting.INTERNATIONAL, i)
    assert (h[6].routing, h[6].referral_id) == (HolderRouting.OWN_AGENCY, None)
    assert (h[7].routing, h[7].referral_id, h[7].needs_review) == (HolderRouting.UNPLACED, None, True)
    assert len(result.routing.created) == 4
    summary, page = holder_service.unrouted(session, world.users["c_manager"], holder_service.HolderFilters())
    assert [(u.country, u.holders, u.receiver) for u in summary] == [("FR", 1, "Intl Bureau")]
    assert [x.id for x in page.items] == [h[5].id]
    creates = session.scalars(select(AuditEntry).where(AuditEntry.action == "referral.create")).all()
    assert len(creates) == 4 and audit.verify(session).ok


def test_without_an_international_body_a_country_with_no_focal_point_has_no_receiver(session, world):
    world.agencies["i"].kind = AgencyKind.GOVERNMENT
    world.agencies["i"].country_code = "US"
    session.flush()
    run_import(session, world, tip(account(1, country_hint="FR", ip_country="FR")))
    holder = holder_of(session, world, "acc1")
    assert (holder.routing, holder.referral_id) == (HolderRouting.NO_RECEIVER, None)
    summary, _ = holder_service.unrouted(session, world.users["c_liaison"], holder_service.HolderFilters())
    assert [(u.country, u.receiver) for u in summary] == [("FR", None)]


@pytest.mark.parametrize("hint, expected", [
    ("Cote d'Ivoire", "CI"), ("Côte d’Ivoire", "CI"), ("Curacao", "CW"), ("Reunion", "RE"),
    ("Falkland Islands", "FK"), ("Holy See", "VA"), ("Macau", "MO"), ("new zealand", "NZ"), ("NZL", "NZ"),
    ("Korea", None), ("Virgin Islands", None), ("Atlantis", None),  # ambiguous or no country: refused
])
def test_country_hints_as_providers_write_them(hint, expected):
    from app.services import countries

    assert countries.lookup(hint) == expected


def _agency_data(agency, **changes) -> directory.AgencyData:
    data = directory.AgencyData(name=agency.name, kind=agency.kind, country_code=agency.country_code,
                                desk_email=agency.desk_email, desk_phone=agency.desk_phone, timezone=agency.timezone,
                                is_focal_point=agency.is_focal_point)
    for name, value in changes.items():
        setattr(data, name, value)
    return data


def test_a_focal_point_named_later_takes_its_countrys_unsent_holders_at_once(session, world):
    run_import(session, world, tip(account(1, email="fr1@example.org", country_hint="FR", ip_country="FR"),
                                   account(2, email="fr2@example.org", country_hint="FR", ip_country="FR")))
    waiting, sent_one = holder_of(session, world, "acc1"), holder_of(session, world, "acc2")
    assert waiting.routing is HolderRouting.INTERNATIONAL and waiting.referral_id == sent_one.referral_id
    intl_draft = waiting.referral_id
    admin = world.actor("a_admin")
    france = directory.create_agency(session, admin, directory.AgencyData(
        name="Seine Online Desk", kind=AgencyKind.POLICE, country_code="FR", desk_email="desk@seine.example.org",
        desk_phone="+33 1 99 00 12 34", is_focal_point=True))
    session.expire_all()
    holders = [session.get(Holder, h.id) for h in (waiting, sent_one)]
    assert {(h.routing, h.receiver_agency_id) for h in holders} == {(HolderRouting.FOCAL_POINT, france.id)}
    draft = session.get(Referral, holders[0].referral_id)
    assert (draft.receiver_agency_id, draft.status, draft.jurisdiction) == (france.id, Status.DRAFT, "FR")
    assert session.get(Referral, intl_draft) is None  # left empty: discarded
    summary, _ = holder_service.unrouted(session, world.users["c_liaison"], holder_service.HolderFilters())
    assert summary == []
    assert audit.verify(session).ok


def test_a_focal_point_withdrawn_leaves_no_unsent_draft_to_it_and_sent_cases_stay(session, world, monkeypatch):
    run_import(session, world, tip(account(1, email="au1@example.org"), account(2, email="au2@example.org",
                                                                                uploads_a="10")))
    packaged, single = holder_of(session, world, "acc1"), holder_of(session, world, "acc2")
    sent = referrals.transition(session, world.actor("c_liaison"), single.referral_id, "send", None)
    bravo = world.agencies["b"]
    directory.update_agency(session, world.actor("a_admin"), bravo.id, _agency_data(bravo, is_focal_point=False))
    session.expire_all()
    moved = session.get(Holder, packaged.id)
    assert (moved.routing, moved.receiver_agency_id) == (HolderRouting.INTERNATIONAL, world.agencies["i"].id)
    assert session.get(Referral, moved.referral_id).receiver_agency_id == world.agencies["i"].id
    summary, _ = holder_service.unrouted(session, world.users["c_liaison"], holder_service.HolderFilters())
    assert [(u.country, u.holders) for u in summary] == [("AU", 1)]
    kept = session.get(Holder, single.id)  # its referral was sent: it stays where it went
    assert (kept.referral_id, session.get(Referral, sent.id).receiver_agency_id) == (sent.id, bravo.id)
    # An edit routing does not read neither locks nor reroutes anything.
    called = []
    monkeypatch.setattr(holder_service, "lock_operations_with_holders", lambda *a: called.append("lock"))
    monkeypatch.setattr(holder_service, "reroute_after_directory_change", lambda *a: called.append("reroute"))
    directory.update_agency(session, world.actor("a_admin"), bravo.id, _agency_data(bravo, desk_email="new@b.example.org"))
    assert called == []
    directory.update_agency(session, world.actor("a_admin"), bravo.id, _agency_data(bravo, country_code="NZ"))
    assert called == ["lock", "reroute"]


def test_of_two_focal_points_of_a_country_the_first_registered_receives(session, world):
    """Not the first by name: names sort differently by database collation."""
    session.add(Agency(name="Aardvark Desk", kind=AgencyKind.POLICE, country_code="AU", desk_email="desk@aa.example.org",
                       desk_phone="+61 2 5550 0100", is_focal_point=True))
    session.flush()
    run_import(session, world, tip(account(1)))
    assert holder_of(session, world, "acc1").receiver_agency_id == world.agencies["b"].id


def test_drafts_sharing_an_identifier_with_another_referral_are_matched_and_only_they(session, world, match_path):
    other = make_referral(session, world, sender="a", receiver="b")
    subjects.add_subject(session, world.actor("a_liaison"), other.id, "Known", "shared@example.org")
    result = run_import(session, world, tip(account(1, email="Shared@example.org"),
                                            account(2, email="alone@example.org", country_hint="NZ",
                                                    ip_country="NZ")))
    sharing, alone = holder_of(session, world, "acc1").referral_id, holder_of(session, world, "acc2").referral_id
    assert sharing and alone and sharing != alone
    hit = session.get(Hit, result.hits.created[0])
    assert len(result.hits.created) == 1
    assert {hit.referral_low_id, hit.referral_high_id} == {other.id, sharing}
    refreshed = session.scalars(select(AuditEntry.detail).where(AuditEntry.action == "deconfliction.match")
                                .order_by(AuditEntry.seq.desc())).first()
    if match_path == "through referrals":  # a large tip's draft sharing nothing is not matched at all
        assert json.loads(refreshed)["referrals"] == [sharing]


def test_a_holder_triaged_p1_gets_its_own_referral_with_the_24_hour_clock(session, world):
    run_import(session, world, tip(account(1, email="p@example.org", uploads_a="1"),
                                   account(2, email="q@example.org", uploads_b="2")))
    first, second = holder_of(session, world, "acc1"), holder_of(session, world, "acc2")
    assert first.priority is Priority.P3 and first.referral_id == second.referral_id  # one P3 package
    package_id = first.referral_id
    decision = holder_service.set_risk_flags(session, world.actor("c_liaison"), first.subject_id,
                                             {"risk_access_to_children": True})
    holder = decision.holder
    assert holder.priority is Priority.P1 and not holder.packaged and holder.referral_id != package_id
    own = session.get(Referral, holder.referral_id)
    assert (own.priority, own.risk_access_to_children, own.grade_a) == (Priority.P1, True, 1)
    package = session.get(Referral, package_id)
    assert (package.grade_a, package.grade_b) == (0, 2)  # what is left in the package
    assert package.events[-1].action == "edit"
    sent = referrals.transition(session, world.actor("c_liaison"), own.id, "send", None)
    assert sent.acknowledge_due - sent.sent_at == timedelta(hours=24)
    # A decision after sending changes the holder's triage, not where the referral went.
    later = holder_service.set_jurisdiction(session, world.actor("c_liaison"), holder.subject_id, "NZ")
    assert later.stays_sent is not None and later.holder.referral_id == own.id


def _sent_package(session, world, at: datetime) -> tuple[Holder, Referral]:
    """Two P3 holders in one package referral to agency b, sent at `at`."""
    run_import(session, world, tip(account(1, email="p@example.org", uploads_a="1"),
                                   account(2, email="q@example.org", uploads_b="2")))
    holder = holder_of(session, world, "acc1")
    sent = referrals.transition(session, world.actor("c_liaison"), holder.referral_id, "send", None, at=at)
    assert (sent.status, sent.priority) == (Status.SENT, Priority.P3)
    return holder, sent


def _transferred_package(session, world) -> tuple[Holder, Referral, Referral]:
    """`_sent_package`, acknowledged by agency b and transferred on to agency i (with the
    lead's consent): (holder, the original, the referral it is on now)."""
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    return holder, sent, _passed_on(session, world, sent.id)


def _passed_on(session, world, sent_id: int) -> Referral:
    """The lead's sent referral acknowledged by agency b and transferred on to agency i, with
    the lead's consent: the referral that carries the case now."""
    referrals.transition(session, world.actor("b_liaison"), sent_id, "acknowledge", None)
    referrals.grant_transfer_consent(session, world.actor("c_liaison"), sent_id, None)
    return referrals.transition(session, world.actor("b_liaison"), sent_id, "transfer", None,
                                transfer_to_agency_id=world.agencies["i"].id)


def test_a_merge_with_a_holder_on_a_sent_referral_stays_on_it_and_raises_it(session, world):
    """The older holder (the survivor) is on a draft, the one it absorbs on a sent referral:
    the merged holder follows the sent referral, which is raised; no second draft is made."""
    run_import(session, world, tip(account(5, username="lefty"), account(1, email="p@example.org", uploads_a="1"),
                                   account(2, email="q@example.org", uploads_b="2")))
    left, right = holder_of(session, world, "acc5"), holder_of(session, world, "acc1")
    left_draft = left.referral_id
    sent = referrals.transition(session, world.actor("c_liaison"), right.referral_id, "send", None)
    drafts_before = count(session, Referral)
    result = run_import(session, world, tip(account(9, username="lefty", email="p@example.org", uploads_a="12")))
    assert result.merges == [(left.id, [right.id])]
    session.expire_all()
    merged = session.get(Holder, left.id)
    assert (merged.referral_id, merged.priority) == (sent.id, Priority.P2)
    raised = session.get(Referral, sent.id)
    assert (raised.priority, raised.status) == (Priority.P2, Status.SENT)
    assert [e.action for e in raised.events[-2:]] == ["escalate", "update"]
    assert (f"holder {merged.label} joined this referral by a merge with holder {right.label}, which is on it"
            in raised.events[-1].note)
    told, _total = deconfliction.list_notifications(session, world.users["b_liaison"], mark_seen=False)
    assert {(n.kind, n.referral_id) for n in told} == {(NotificationKind.PRIORITY_RAISED, sent.id),
                                                       (NotificationKind.REFERRAL_UPDATED, sent.id)}
    assert session.scalar(select(func.count()).select_from(referral_subjects).where(
        referral_subjects.c.referral_id == sent.id, referral_subjects.c.subject_id == merged.subject_id)) == 1
    assert session.get(Referral, left_draft) is None  # its only holder left it
    assert count(session, Referral) == drafts_before - 1 and result.routing.created == []


def test_a_holder_on_a_declined_referral_is_routed_again(session, world):
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    referrals.transition(session, world.actor("b_liaison"), sent.id, "acknowledge", None)
    referrals.transition(session, world.actor("b_liaison"), sent.id, "decline", None, "Not our jurisdiction.")
    holder_service.set_jurisdiction(session, world.actor("c_liaison"), holder.subject_id, "NZ")
    session.flush()
    session.expire_all()
    moved = session.get(Holder, holder.id)
    draft = session.get(Referral, moved.referral_id)
    assert (draft.status, draft.jurisdiction, draft.receiver_agency_id) == (Status.DRAFT, "NZ", world.agencies["a"].id)
    assert session.scalar(select(func.count()).select_from(referral_subjects).where(  # its history stays
        referral_subjects.c.referral_id == sent.id, referral_subjects.c.subject_id == holder.subject_id)) == 1


def test_an_agency_that_declined_a_holder_no_longer_sees_it(session, world):
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    receiver = world.users["b_liaison"]
    assert get_visible_holder(session, receiver, holder.subject_id).id == holder.id  # its to work
    referrals.transition(session, world.actor("b_liaison"), sent.id, "acknowledge", None)
    referrals.transition(session, world.actor("b_liaison"), sent.id, "decline", None, "Not our case.")
    session.flush()
    with pytest.raises(NotFound):  # the referral stays in its history; the holder, live, is not its own
        get_visible_holder(session, receiver, holder.subject_id)
    assert session.scalars(visible_holders(receiver)).all() == []
    assert session.scalars(visible_referrals(receiver).where(Referral.id == sent.id)).one()
    assert get_visible_holder(session, world.users["c_liaison"], holder.subject_id).id == holder.id  # the lead


def test_the_receiver_of_a_transfer_that_declines_no_longer_sees_the_holder(session, world):
    holder, sent, onward = _transferred_package(session, world)
    onward_receiver = world.users["i_liaison"]
    assert get_visible_holder(session, onward_receiver, holder.subject_id).id == holder.id
    referrals.transition(session, world.actor("i_liaison"), onward.id, "acknowledge", None)
    referrals.transition(session, world.actor("i_liaison"), onward.id, "decline", None, "Not ours.")
    session.flush()
    with pytest.raises(NotFound):
        get_visible_holder(session, onward_receiver, holder.subject_id)
    with pytest.raises(NotFound):  # the agency that passed it on let it go too
        get_visible_holder(session, world.users["b_liaison"], holder.subject_id)


def test_a_declined_holder_waits_for_a_person_and_is_not_sent_back_to_the_decliner(session, world):
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    referrals.transition(session, world.actor("b_liaison"), sent.id, "acknowledge", None)
    referrals.transition(session, world.actor("b_liaison"), sent.id, "decline", None, "Not our case.")
    session.expire_all()
    assert session.get(Holder, holder.id).needs_review  # on the review list at once
    lead = world.users["c_liaison"]
    listed = holder_service.review_list(session, lead, holder_service.HolderFilters()).items
    assert holder_service.review_reasons(session, lead, listed)[holder.id].text == (
        f"{sent.reference} was declined by {world.agencies['b'].name}")
    drafts_before = count(session, Referral)
    # New accounts of the holder, still pointing to the country that declined it: no new draft.
    run_import(session, world, tip(account(7, email="p@example.org", uploads_a="1")))
    holder_service.set_risk_flags(session, world.actor("c_liaison"), holder.subject_id, {"risk_previous_convictions": True})
    session.expire_all()
    waiting = session.get(Holder, holder.id)
    assert (waiting.referral_id, waiting.needs_review, count(session, Referral)) == (sent.id, True, drafts_before)
    # A person decides the same country after all: then it goes there again, as a new draft.
    decision = holder_service.set_jurisdiction(session, world.actor("c_liaison"), holder.subject_id, "AU")
    session.flush()
    session.expire_all()
    routed = session.get(Holder, decision.holder.id)
    draft = session.get(Referral, routed.referral_id)
    assert (draft.status, draft.receiver_agency_id, routed.needs_review) == (Status.DRAFT, sent.receiver_agency_id, False)


def _draft_of(session, world, account_key: str) -> Referral:
    return session.get(Referral, holder_of(session, world, account_key).referral_id)


@pytest.mark.parametrize("change, field", [
    ({"receiver_agency_id": "a"}, "receiver_agency_id"),
    ({"jurisdiction": "NZ"}, "jurisdiction"),
    ({"priority": Priority.P1}, "priority"),
    ({"risk_plans_to_meet": True}, "risk_plans_to_meet"),
    ({"grade_a": 40}, "grade_a"),
    ({"operation_id": None}, "operation_id"),
])
def test_what_routing_decided_of_a_tip_draft_is_not_edited_by_hand(session, world, change, field):
    """Changed by hand, the holders' pages would contradict the draft and the next import would
    undo it: the person is sent to the holder's page."""
    run_import(session, world, tip(account(1, email="p@example.org", uploads_a="1"),
                                   account(2, email="q@example.org", uploads_b="2")))
    draft = _draft_of(session, world, "acc1")
    data = referrals.ReferralData.from_referral(draft)
    for name, value in change.items():
        setattr(data, name, world.agencies[value].id if name == "receiver_agency_id" else value)
    with pytest.raises(DomainError, match="carries 2 account holders of a provider tip") as refused:
        referrals.update_draft(session, world.actor("c_liaison"), draft.id, draft.version, data)
    assert refused.value.field == field
    routed = field in ("receiver_agency_id", "jurisdiction", "operation_id")
    assert (("where it goes follows them." if routed else "its priority, risk flags and counts follow them.")
            in refused.value.message)


def test_a_tip_drafts_summary_written_by_hand_survives_the_next_import(session, world):
    run_import(session, world, tip(account(1, email="p@example.org", uploads_a="1"),
                                   account(2, email="q@example.org", uploads_b="2")))
    draft = _draft_of(session, world, "acc1")
    assert draft.summary.startswith("Provider tip, operation LANTERN: 2 account holders")
    data = referrals.ReferralData.from_referral(draft)
    data.summary, data.material_description = "Checked by the desk: two holders, one household.", "Chat logs."
    referrals.update_draft(session, world.actor("c_liaison"), draft.id, draft.version, data)
    run_import(session, world, tip(account(3, email="p@example.org", uploads_a="4")))  # figures move
    session.expire_all()
    edited = session.get(Referral, draft.id)
    assert edited.summary == "Checked by the desk: two holders, one household."
    assert (edited.material_description, edited.grade_a) == ("Chat logs.", 5)


def test_a_tip_draft_left_with_hand_added_subjects_only_drops_the_holders_figures(session, world):
    run_import(session, world, tip(account(1, email="p@example.org", uploads_a="1"),
                                   account(2, email="q@example.org", uploads_b="2")))
    draft = _draft_of(session, world, "acc1")
    subjects.add_subject(session, world.actor("c_liaison"), draft.id, "Known to the desk", "desk.known@example.org")
    for key in ("acc1", "acc2"):
        holder_service.set_jurisdiction(session, world.actor("c_liaison"), holder_of(session, world, key).subject_id,
                                        "NZ")
    session.flush()
    session.expire_all()
    left = session.get(Referral, draft.id)
    assert left is not None and left.status is Status.DRAFT  # its hand-added subject keeps it
    assert (left.grade_a, left.grade_b, left.grade_c) == (0, 0, 0)
    assert "moved to other referrals" in left.summary and "2 account holders" not in left.summary
    assert holder_of(session, world, "acc1").referral_id != draft.id


def test_risk_flags_found_on_a_holder_show_on_its_sent_referral_and_are_never_taken_off(session, world):
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    lead = world.actor("c_liaison")
    holder_service.set_risk_flags(session, lead, holder.subject_id, {"risk_plans_to_meet": True})
    session.flush()
    session.expire_all()
    raised = session.get(Referral, sent.id)
    assert (raised.priority, raised.risk_plans_to_meet, raised.risk_access_to_children) == (Priority.P1, True, False)
    # Taken off the holder later: the referral keeps what it told its receiver (and its priority).
    holder_service.set_risk_flags(session, lead, holder.subject_id, {"risk_access_to_children": True})
    session.flush()
    session.expire_all()
    kept = session.get(Referral, sent.id)
    assert (kept.priority, kept.risk_plans_to_meet, kept.risk_access_to_children) == (Priority.P1, True, True)
    # The same through the investigators' batch, for the package's other holder.
    other = holder_of(session, world, "acc2")
    holder_service.record_risk_flags_batch(session, lead, world.operation.id,
                                           {other.id: {"risk_previous_convictions": True}})
    session.flush()
    session.expire_all()
    assert session.get(Referral, sent.id).risk_previous_convictions


def test_a_summary_routing_wrote_follows_the_figures_whatever_the_operations_code(session, world):
    world.operation.code = "NIGHT OWL"
    session.flush()
    run_import(session, world, tip(account(1, email="p@example.org", uploads_a="1"),
                                   account(2, email="q@example.org", uploads_b="2")))
    draft = _draft_of(session, world, "acc1")
    assert "2 account holders" in draft.summary
    run_import(session, world, tip(account(3, email="r@example.org", uploads_b="1")), file_name="b.csv")
    session.expire_all()
    grown = session.get(Referral, draft.id)
    assert grown.grade_b == 3 and "operation NIGHT OWL: 3 account holders" in grown.summary


def test_a_summary_counting_thousands_of_holders_writes_them_with_separators_and_follows_them(session, world):
    """A package of a thousand holders says "1,000 account holders"; a summary written before
    without the separator is still known as routing's, and follows the figures."""
    run_import(session, world, tip(*(account(n, email=f"p{n}@example.org") for n in range(1, 1001))))
    draft = _draft_of(session, world, "acc1")
    assert "1,000 account holders" in draft.summary
    draft.summary = draft.summary.replace("1,000", "1000")
    session.flush()
    run_import(session, world, tip(account(1001, email="q@example.org")), file_name="b.csv")
    session.expire_all()
    assert "1,001 account holders" in session.get(Referral, draft.id).summary


def test_a_decline_puts_the_holders_on_review_whatever_operation_their_referral_names(session, world):
    """The holders say which operation they belong to: a tip referral whose operation was
    cleared by hand (as drafts could be edited before) is declined like any other."""
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    session.execute(Referral.__table__.update().where(Referral.__table__.c.id == sent.id).values(operation_id=None))
    session.expire_all()
    referrals.transition(session, world.actor("b_liaison"), sent.id, "acknowledge", None)
    referrals.transition(session, world.actor("b_liaison"), sent.id, "decline", None, "Not ours.")
    session.flush()
    session.expire_all()
    assert session.get(Holder, holder.id).needs_review


def test_risk_flags_found_on_a_merged_part_reach_the_sent_referral_the_holder_stays_on(session, world):
    run_import(session, world, tip(account(5, username="lefty"), account(1, email="p@example.org", uploads_a="1"),
                                   account(2, email="q@example.org", uploads_b="2")))
    left = holder_of(session, world, "acc5")
    holder_service.set_risk_flags(session, world.actor("c_liaison"), left.subject_id,
                                  {"risk_previous_convictions": True})
    session.flush()
    sent = referrals.transition(session, world.actor("c_liaison"), holder_of(session, world, "acc1").referral_id,
                                "send", None)
    assert not sent.risk_previous_convictions
    run_import(session, world, tip(account(9, username="lefty", email="p@example.org")), file_name="m.csv")
    session.expire_all()
    assert session.get(Holder, left.id).referral_id == sent.id
    carried = session.get(Referral, sent.id)
    assert carried.risk_previous_convictions
    assert "its risk flags now include what was found on the holders merged: previous convictions" in (
        carried.events[-1].note)


def test_holders_of_a_withdrawn_referral_are_routed_again_at_once(session, world):
    """Sent by mistake, withdrawn: its holders go back on a draft (the work lists count them
    again), and the withdrawn referral keeps them in its history."""
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    other = holder_of(session, world, "acc2")
    referrals.transition(session, world.actor("c_liaison"), sent.id, "withdraw", None, "Sent by mistake.")
    session.flush()
    session.expire_all()
    moved = [session.get(Holder, h.id) for h in (holder, other)]
    assert moved[0].referral_id == moved[1].referral_id != sent.id
    draft = session.get(Referral, moved[0].referral_id)
    assert (draft.status, draft.receiver_agency_id, draft.jurisdiction) == (Status.DRAFT, sent.receiver_agency_id, "AU")
    assert not any(h.needs_review for h in moved)
    assert session.scalar(select(func.count()).select_from(referral_subjects).where(
        referral_subjects.c.referral_id == sent.id)) == 2
    summary = {s.operation.code: s for s in holder_service.overview(session, world.users["c_liaison"])[0]}["LANTERN"]
    assert summary.drafts == 1
    assert get_visible_holder(session, world.users["c_liaison"], holder.subject_id).referral_id == draft.id
    with pytest.raises(NotFound):  # the agency it was withdrawn from let it go
        get_visible_holder(session, world.users["b_liaison"], holder.subject_id)


def test_holders_of_a_withdrawn_transfer_are_routed_again(session, world):
    holder, sent, onward = _transferred_package(session, world)
    referrals.transition(session, world.actor("b_liaison"), onward.id, "withdraw", None, "Wrong bureau.")
    session.flush()
    session.expire_all()
    moved = session.get(Holder, holder.id)
    draft = session.get(Referral, moved.referral_id)
    assert draft.status is Status.DRAFT and draft.sender_agency_id == world.agencies["c"].id


def test_a_holder_whose_referral_was_transferred_and_then_declined_is_not_stranded(session, world):
    holder, sent, onward = _transferred_package(session, world)
    referrals.transition(session, world.actor("i_liaison"), onward.id, "acknowledge", None)
    referrals.transition(session, world.actor("i_liaison"), onward.id, "decline", None, "Not ours either.")
    session.expire_all()
    assert session.get(Holder, holder.id).needs_review
    lead = world.users["c_liaison"]
    assert holder_service.review_reasons(session, lead, [session.get(Holder, holder.id)])[holder.id].text == (
        f"{onward.reference} (transferred from {sent.reference}) was declined by {world.agencies['i'].name}")
    # Routing would send it back to the agency that passed it on: it waits for a person instead.
    drafts_before = count(session, Referral)
    run_import(session, world, tip(account(7, email="p@example.org", uploads_a="1")))
    session.expire_all()
    waiting = session.get(Holder, holder.id)
    assert (waiting.referral_id, waiting.needs_review, count(session, Referral)) == (sent.id, True, drafts_before)
    decision = holder_service.set_jurisdiction(session, world.actor("c_liaison"), holder.subject_id, "AU")
    session.flush()
    draft = session.get(Referral, decision.holder.referral_id)
    assert (draft.status, draft.receiver_agency_id) == (Status.DRAFT, world.agencies["b"].id)


def test_a_decision_names_the_holder_as_it_saw_it_and_a_changed_one_is_refused(session, world):
    run_import(session, world, tip(account(1, country_hint="AU", ip_country="NZ")))
    holder = holder_of(session, world, "acc1")
    session.commit()  # as a page would have it: stored, and read back
    seen = session.get(Holder, holder.id).updated_at
    first = holder_service.set_risk_flags(session, world.actor("c_liaison"), holder.subject_id,
                                          {"risk_access_to_children": True}, seen_at=seen)
    session.commit()
    with pytest.raises(Conflict):  # the second person's page showed the holder before the first decision
        holder_service.set_jurisdiction(session, world.actor("c_liaison"), holder.subject_id, "AU", seen_at=seen)
    session.rollback()
    holder_service.set_jurisdiction(session, world.actor("c_liaison"), holder.subject_id, "AU",
                                    seen_at=session.get(Holder, first.holder.id).updated_at)


def test_a_decision_on_a_holder_whose_referral_was_transferred_names_where_it_is_now(session, world):
    holder, sent, onward = _transferred_package(session, world)
    decision = holder_service.set_risk_flags(session, world.actor("c_liaison"), holder.subject_id,
                                             {"risk_plans_to_meet": True})
    assert decision.stays_sent.id == onward.id
    assert (decision.stays_sent.receiver_agency_id, decision.stays_sent.priority) == (world.agencies["i"].id,
                                                                                      Priority.P1)


def test_a_decision_on_a_holder_on_a_sent_referral_reaches_its_receiver(session, world):
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    c_liaison = world.actor("c_liaison")
    holder_service.set_risk_flags(session, c_liaison, holder.subject_id, {"risk_plans_to_meet": True})  # raised
    flags = {"risk_plans_to_meet": True, "risk_position_of_authority": True}  # P1 still: news
    holder_service.set_risk_flags(session, c_liaison, holder.subject_id, flags)
    holder_service.set_risk_flags(session, c_liaison, holder.subject_id, flags)  # the same again: no news
    holder_service.set_jurisdiction(session, c_liaison, holder.subject_id, "NZ", "Lives in Auckland.")
    session.flush()
    session.expire_all()
    seen = referrals.view(session, world.actor("b_liaison"), sent.id)
    updates = [e.note for e in seen.events if e.action == "update"]
    assert updates == [f"holder {holder.label}: the lead agency recorded "
                       f"{holder_service._flags_named(flags)}.",
                       f"holder {holder.label}: jurisdiction set to New Zealand by the lead agency (it was "
                       "Australia)."]
    # The note on the decision is the audit trail's, not the receiver's to read.
    decided = session.scalars(select(AuditEntry).where(AuditEntry.action == "tip.holder_jurisdiction")).one()
    assert json.loads(decided.detail)["note"] == "Lives in Auckland."
    assert "position of authority" in updates[0] and [e.action for e in seen.events].count("escalate") == 1
    told, _total = deconfliction.list_notifications(session, world.users["b_liaison"], mark_seen=False)
    assert [n.kind for n in told].count(NotificationKind.REFERRAL_UPDATED) == 2


def test_an_agency_that_passed_a_case_on_reads_no_news_of_its_holders(session, world):
    """Bravo transferred the package on to the Intl Bureau, and sent the referral that continues
    it: it reads that referral's steps, not what the lead later decides about the holders."""
    holder, _sent, onward = _transferred_package(session, world)
    holder_service.set_jurisdiction(session, world.actor("c_liaison"), holder.subject_id, "NZ", "Lives in Auckland.")
    holder_service.set_risk_flags(session, world.actor("c_liaison"), holder.subject_id, {"risk_plans_to_meet": True})
    session.flush()
    session.expire_all()
    referral = session.get(Referral, onward.id)
    told_bureau = [e for e in referrals.history(referral, world.users["i_liaison"]) if e.action in ("update", "escalate")]
    assert [e.action for e in told_bureau] == ["update", "escalate"]
    assert "jurisdiction set to New Zealand" in told_bureau[0].note and "plans to meet" in told_bureau[1].note
    assert [e.action for e in referrals.history(referral, world.users["b_liaison"])] == ["create", "send"]


def test_a_holder_flagged_p1_after_sending_escalates_its_sent_referral(session, world):
    sent_at = datetime.now(timezone.utc) - timedelta(hours=30)
    holder, sent = _sent_package(session, world, sent_at)
    decision = holder_service.set_risk_flags(session, world.actor("c_liaison"), holder.subject_id,
                                             {"risk_plans_to_meet": True})
    assert decision.holder.priority is Priority.P1 and decision.stays_sent.id == sent.id
    session.expire_all()
    # Both agencies see the new priority and, in the history, why it changed.
    for user in ("c_liaison", "b_liaison"):
        seen = referrals.view(session, world.actor(user), sent.id)
        assert (seen.priority, seen.status, seen.sent_at) == (Priority.P1, Status.SENT, sent_at)
        escalation = seen.events[-1]
        assert (escalation.action, escalation.from_status, escalation.to_status) == ("escalate", "sent", "sent")
        assert escalation.note.startswith("Priority raised from P3 to P1: holder H-")
        assert "plans to meet" in escalation.note and escalation.agency_id == world.agencies["c"].id
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "referral.escalate")).one()
    assert entry.object_id == str(sent.id)
    assert json.loads(entry.detail) | {"reason": "-"} == {"reference": sent.reference, "from": "P3", "to": "P1",
                                                          "reason": "-"}
    # The clock still counts from the sending, with the P1 window: 30 hours on, it is overdue.
    seen = session.get(Referral, sent.id)
    assert seen.acknowledge_due == sent_at + timedelta(hours=24) and seen.is_overdue()
    overdue = referrals.list_referrals(session, world.users["b_liaison"], referrals.ListFilters(overdue=True))
    assert sent.id in {r.id for r in overdue.items}
    # The receiving agency is told; the sender, who raised it, is not.
    notices, _total = deconfliction.list_notifications(session, world.users["b_liaison"], mark_seen=False)
    assert [(n.kind, n.referral_id, n.unread) for n in notices] == [(NotificationKind.PRIORITY_RAISED, sent.id, True)]
    assert notices[0].message == f"{sent.reference} from {world.agencies['c'].name}: priority raised from P3 to P1."
    mine, _total = deconfliction.list_notifications(session, world.users["c_liaison"], mark_seen=False)
    assert NotificationKind.PRIORITY_RAISED not in {n.kind for n in mine}
    assert audit.verify(session).ok


def test_a_referral_transferred_onward_is_escalated_where_it_is_now(session, world):
    holder, sent, onward = _transferred_package(session, world)
    holder_service.set_risk_flags(session, world.actor("c_liaison"), holder.subject_id, {"risk_plans_to_meet": True})
    session.expire_all()
    assert session.get(Referral, onward.id).priority is Priority.P1
    assert session.get(Referral, sent.id).priority is Priority.P3  # the closed original stays as it was
    # The agency that has the case now is told; the one that passed it on is not.
    now_holding, _total = deconfliction.list_notifications(session, world.users["i_liaison"], mark_seen=False)
    assert [(n.kind, n.referral_id) for n in now_holding] == [(NotificationKind.PRIORITY_RAISED, onward.id)]
    passed_on, _total = deconfliction.list_notifications(session, world.users["b_liaison"], mark_seen=False)
    assert NotificationKind.PRIORITY_RAISED not in {n.kind for n in passed_on}


def test_new_accounts_of_a_holder_on_a_sent_referral_are_recorded_and_its_receiver_told(session, world):
    """Even when its priority stays as it was."""
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    run_import(session, world, tip(account(7, email="p@example.org"), account(8, email="p@example.org")),
               file_name="later.csv")
    session.expire_all()
    referral = session.get(Referral, sent.id)
    assert referral.priority is Priority.P3
    event = referral.events[-1]
    assert (event.action, event.from_status, event.to_status) == ("update", "sent", "sent")
    assert "Tip later.csv (import " in event.note and f"2 new accounts of holder {holder.label}" in event.note
    told, _total = deconfliction.list_notifications(session, world.users["b_liaison"], mark_seen=False)
    assert [(n.kind, n.referral_id) for n in told] == [(NotificationKind.REFERRAL_UPDATED, sent.id)]
    assert referral.reference in told[0].message
    # Importing the same file again adds nothing, and says nothing.
    run_import(session, world, tip(account(7, email="p@example.org"), account(8, email="p@example.org")))
    session.expire_all()
    assert session.get(Referral, sent.id).events[-1].id == event.id


def _closed(session, world, referral_id: int) -> Referral:
    """The lead's referral sent, worked by agency b (acknowledged, accepted, an outcome) and closed."""
    if session.get(Referral, referral_id).status is Status.DRAFT:
        referrals.transition(session, world.actor("c_liaison"), referral_id, "send", None)
    bravo = world.actor("b_liaison")
    for action in ("acknowledge", "accept"):
        referrals.transition(session, bravo, referral_id, action, None)
    referrals.record_outcome(session, bravo, referral_id, referrals.OutcomeData(occurred_on=utcnow().date(), arrests=1))
    return referrals.transition(session, bravo, referral_id, "close", None)


def test_new_accounts_of_a_holder_on_an_open_referral_reach_its_receiver_not_the_review_list(session, world):
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    run_import(session, world, tip(account(7, email="p@example.org")), file_name="later.csv")
    session.expire_all()
    assert (session.get(Holder, holder.id).referral_id, session.get(Holder, holder.id).needs_review) == (sent.id,
                                                                                                       False)
    told, _total = deconfliction.list_notifications(session, world.users["b_liaison"], mark_seen=False)
    assert [(n.kind, n.referral_id) for n in told] == [(NotificationKind.REFERRAL_UPDATED, sent.id)]


def test_new_accounts_of_a_holder_on_a_closed_referral_wait_on_the_review_list_saying_why(session, world):
    """The case is closed and stays so: nobody is told through it, and the new accounts do not
    vanish either. The lead agency's review list holds the holder and says why; the holder's
    page says it too, to the lead agency only."""
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    closed = _closed(session, world, sent.id)
    events_before = len(closed.events)
    run_import(session, world, tip(account(7, email="p@example.org")), file_name="later.csv")
    session.expire_all()
    waiting = session.get(Holder, holder.id)
    assert (waiting.referral_id, waiting.needs_review) == (closed.id, True)
    assert not holder_of(session, world, "acc2").needs_review  # its package fellow gained nothing
    referral = session.get(Referral, closed.id)
    assert (referral.status, len(referral.events)) == (Status.CLOSED, events_before)
    told, _total = deconfliction.list_notifications(session, world.users["b_liaison"], mark_seen=False)
    assert NotificationKind.REFERRAL_UPDATED not in {n.kind for n in told}
    lead = world.users["c_liaison"]
    listed = holder_service.review_list(session, lead, holder_service.HolderFilters()).items
    assert [h.id for h in listed] == [holder.id]
    why = f"1 new account after its referral {closed.reference} was closed by {world.agencies['b'].name}"
    assert holder_service.review_reasons(session, lead, listed) == {holder.id: ReviewReason(why, closed_case=True)}
    assert holder_service.view_holder(session, world.actor("c_liaison"), holder.subject_id).review_reason.text == why
    assert holder_service.view_holder(session, world.actor("b_liaison"), holder.subject_id).review_reason is None
    # A later import that brings nothing new about it leaves the reason as it was.
    run_import(session, world, tip(account(7, email="p@example.org"), account(8, email="q@example.org")))
    session.expire_all()
    assert holder_service.review_reasons(session, lead, [session.get(Holder, holder.id)]) == {
        holder.id: ReviewReason(why, closed_case=True)}


def test_a_holder_on_a_closed_referral_a_person_places_goes_on_a_new_draft(session, world):
    """Routed again from the review list: a new draft to the country's agency, which may be the
    one that closed the case; the closed referral stays closed and keeps the holder in its
    history."""
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    closed = _closed(session, world, sent.id)
    run_import(session, world, tip(account(7, email="p@example.org")), file_name="later.csv")
    decision = holder_service.set_jurisdiction(session, world.actor("c_liaison"), holder.subject_id, "AU",
                                               "New accounts after the closed case: refer again.")
    assert (decision.moved, decision.stays_sent) == (True, None)
    session.expire_all()
    routed = session.get(Holder, holder.id)
    draft = session.get(Referral, routed.referral_id)
    assert (draft.status, draft.receiver_agency_id, draft.jurisdiction, routed.needs_review) == (
        Status.DRAFT, world.agencies["b"].id, "AU", False)
    assert draft.id != closed.id and draft.events[0].action == "create"
    assert session.get(Referral, closed.id).status is Status.CLOSED
    on_closed = session.scalars(select(referral_subjects.c.subject_id).where(
        referral_subjects.c.referral_id == closed.id)).all()
    assert holder.subject_id in on_closed
    assert holder_service.review_list(session, world.users["c_liaison"], holder_service.HolderFilters()).total == 0


def test_a_holder_left_with_its_closed_case_leaves_the_review_list_until_it_gains_again(session, world):
    """The lead agency judges the new material no reason to refer again: the holder stays on
    the closed referral, off the review list, and the decision is on the audit trail. Material
    a later import brings puts it back. Only a closed case's holder can be left so."""
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    closed = _closed(session, world, sent.id)
    lead = world.actor("c_liaison")
    with pytest.raises(DomainError, match="set its jurisdiction instead"):  # not on the list yet
        holder_service.leave_with_closed_case(session, lead, holder.subject_id)
    run_import(session, world, tip(account(7, email="p@example.org")), file_name="later.csv")
    with pytest.raises(Forbidden):
        holder_service.leave_with_closed_case(session, world.actor("b_liaison"), holder.subject_id)
    with pytest.raises(Conflict):  # decided on a page older than the import
        holder_service.leave_with_closed_case(session, lead, holder.subject_id, seen_at=holder.created_at)
    holder_service.leave_with_closed_case(session, lead, holder.subject_id, "Already charged; nothing new.",
                                          seen_at=session.get(Holder, holder.id).updated_at)
    session.expire_all()
    left = session.get(Holder, holder.id)
    assert (left.referral_id, left.needs_review) == (closed.id, False)
    assert session.get(Referral, closed.id).status is Status.CLOSED
    assert holder_service.review_list(session, lead.user, holder_service.HolderFilters()).total == 0
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "tip.holder_left_closed")).one()
    assert "Already charged; nothing new." in entry.detail and "1 new account" in entry.detail
    run_import(session, world, tip(account(9, email="p@example.org")), file_name="later still.csv")
    session.expire_all()
    assert session.get(Holder, holder.id).needs_review
    why = holder_service.review_reasons(session, lead.user, [session.get(Holder, holder.id)])[holder.id]
    assert why.closed_case and why.text.startswith("2 new accounts after its referral")


@pytest.mark.parametrize("closed_part", ["older", "younger"])
def test_a_merge_with_a_holder_on_a_closed_referral_waits_on_the_review_list(session, world, closed_part):
    """The case of one part was closed; a later account shows both parts are one person. The
    merged holder waits on the closed case, on the review list, whichever part is older."""
    run_import(session, world, tip(account(1, email="left@example.org", uploads_a="12"),
                                   account(2, username="righty", uploads_b="1")))
    older, younger = holder_of(session, world, "acc1"), holder_of(session, world, "acc2")
    assert older.referral_id != younger.referral_id  # a draft of its own, and a package
    closed = _closed(session, world, (older if closed_part == "older" else younger).referral_id)
    run_import(session, world, tip(account(3, email="left@example.org", username="righty")), file_name="b.csv")
    session.expire_all()
    merged = holder_of(session, world, "acc3")
    assert (merged.id, merged.referral_id, merged.needs_review) == (older.id, closed.id, True)
    assert session.get(Referral, closed.id).status is Status.CLOSED
    lead = world.users["c_liaison"]
    assert [h.id for h in holder_service.review_list(session, lead, holder_service.HolderFilters()).items] == [
        merged.id]
    assert holder_service.review_reasons(session, lead, [merged])[merged.id].text == (
        f"1 new account and a merge with holder {younger.label} after its referral {closed.reference} was closed "
        f"by {world.agencies['b'].name}")
    # Placed by a person, it goes on a new draft, as a holder alone would.
    holder_service.set_jurisdiction(session, world.actor("c_liaison"), merged.subject_id, "AU")
    session.expire_all()
    draft = session.get(Referral, session.get(Holder, merged.id).referral_id)
    assert (draft.status, draft.receiver_agency_id) == (Status.DRAFT, world.agencies["b"].id)
    assert session.get(Referral, closed.id).status is Status.CLOSED


def test_an_agency_that_passed_a_case_on_is_no_party_to_it_but_to_what_it_records(session, world):
    """Bravo passed the package on to the Intl Bureau. What the holder holds, then or after a
    later import, meets Alpha's referral through the lead's original, whose sender is the one
    to call; Bravo neither hears of it nor reads the holder's identifiers in a hit. What Bravo
    records itself on the referral that continues the case is its own, and makes it a party."""
    holder, sent, onward = _transferred_package(session, world)
    run_import(session, world, tip(account(7, email="p@example.org", phone="+61293744000")), file_name="later.csv")
    other = known_to_alpha(session, world, "+61 2 9374 4000")
    subjects.add_subject(session, world.actor("a_liaison"), other.id, "Second", "p@example.org")
    session.flush()
    session.expire_all()
    pairs = {(h.referral_low_id, h.referral_high_id) for h in session.scalars(select(Hit))}
    assert pairs == {(sent.id, other.id)}
    bravo = world.users["b_liaison"]
    assert deconfliction.list_hits(session, bravo, deconfliction.HitFilters()).items == []
    told, _total = deconfliction.list_notifications(session, bravo, mark_seen=False)
    assert not {NotificationKind.HIT_NEW, NotificationKind.HIT_UPDATED} & {n.kind for n in told}
    found = subjects.add_subject(session, world.actor("b_liaison"), onward.id, "Found by Bravo", "+61 2 9374 4000")
    session.flush()
    [hit] = session.scalars(select(Hit).where(Hit.referral_low_id == onward.id))
    assert (hit.referral_high_id, hit.agency_low_id) == (other.id, world.agencies["b"].id)
    assert [row.value for row in session.execute(own_hit_matches(bravo, [hit.id]))] == ["+61293744000"]
    # Bravo's page of the referral: what it passed on, as it was then, and what it recorded.
    shown = {s.id: sorted(i.value for i in s.identifiers) for s in subjects.subjects_of(session, bravo, onward.id)}
    assert shown[found.id] == ["+61293744000"] and "+61293744000" not in shown[holder.subject_id]


def test_an_agency_that_passed_a_case_on_cannot_blind_check_what_later_imports_added(session, world):
    holder, sent, onward = _transferred_package(session, world)
    run_import(session, world, tip(account(7, email="p@example.org", phone="+61293744000")), file_name="later.csv")
    [bravo_line] = deconfliction.blind_check(session, world.actor("b_liaison"), "phone: +61 2 9374 4000").lines
    assert bravo_line.own_references == []  # the lead's original holds it, as any agency may learn
    # Alpha is told to call the lead, which holds the number, not Bravo, which never did.
    [alpha_line] = deconfliction.blind_check(session, world.actor("a_liaison"), "phone: +61 2 9374 4000").lines
    assert [(c.agency_name, c.reference) for c in alpha_line.contacts] == [(world.agencies["c"].name, sent.reference)]
    # Even what the holder held when Bravo passed it on: the lead's original is the contact.
    [known] = deconfliction.blind_check(session, world.actor("b_liaison"), "p@example.org").lines
    assert known.own_references == [] and [c.reference for c in known.contacts] == [sent.reference]


def test_a_transferred_referral_reached_two_ways_in_one_import_gets_one_update(session, world):
    run_import(session, world, tip(account(5, username="lefty"), account(1, email="p@example.org", uploads_a="1"),
                                   account(2, email="q@example.org", uploads_b="2")))
    package = holder_of(session, world, "acc1").referral_id
    referrals.transition(session, world.actor("c_liaison"), package, "send", None)
    onward = _passed_on(session, world, package)
    # acc7 joins a holder on the package (transferred since); acc9 merges the draft holder of
    # acc5 with the package's other holder, and the merged holder joins where the package is now.
    run_import(session, world, tip(account(7, email="p@example.org"),
                                   account(9, username="lefty", email="q@example.org")))
    session.expire_all()
    updates = [e for e in session.get(Referral, onward.id).events if e.action == "update"]
    assert len(updates) == 1
    assert "joined this referral by a merge" in updates[0].note and "1 new account of holder" in updates[0].note
    told, _total = deconfliction.list_notifications(session, world.users["i_liaison"], mark_seen=False)
    assert [n.kind for n in told].count(NotificationKind.REFERRAL_UPDATED) == 1


def test_what_a_holder_that_joined_a_case_after_its_transfer_gains_later_is_matched(session, world, match_path):
    """A holder merged onto a package after Bravo passed it on sits on the transfer's
    successor. A later account of it brings a phone Alpha's referral holds: the lead's referral
    the case came in on meets Alpha's as a hit."""
    run_import(session, world, tip(account(5, username="lefty"), account(1, email="p@example.org", uploads_b="2")))
    package = holder_of(session, world, "acc1").referral_id
    referrals.transition(session, world.actor("c_liaison"), package, "send", None)
    onward = _passed_on(session, world, package)
    run_import(session, world, tip(account(9, username="lefty", email="p@example.org")), file_name="b.csv")
    assert holder_of(session, world, "acc9").referral_id == onward.id
    alphas = known_to_alpha(session, world, "+61 2 9374 4000")
    run_import(session, world, tip(account(10, username="lefty", phone="+61293744000")), file_name="c.csv")
    hits = session.scalars(select(Hit).where(Hit.referral_low_id.in_([package, alphas.id]),
                                             Hit.referral_high_id.in_([package, alphas.id]))).all()
    assert len(hits) == 1


def test_a_merged_holder_joining_a_referral_of_another_country_goes_to_review(session, world):
    nz = {"country_hint": "NZ", "ip_country": "NZ"}
    run_import(session, world, tip(account(5, username="lefty", **nz), account(6, username="lefty", **nz),
                                   account(1, email="p@example.org", uploads_a="12")))
    left, right = holder_of(session, world, "acc5"), holder_of(session, world, "acc1")
    sent = referrals.transition(session, world.actor("c_liaison"), right.referral_id, "send", None)
    assert (sent.jurisdiction, left.jurisdiction) == ("AU", "NZ")
    run_import(session, world, tip(account(9, username="lefty", email="p@example.org", **nz)))
    session.expire_all()
    merged = session.get(Holder, left.id)
    assert (merged.referral_id, merged.jurisdiction, merged.needs_review) == (sent.id, "NZ", True)
    lead = world.users["c_liaison"]
    assert holder_service.review_reasons(session, lead, [merged])[merged.id].text == (
        f"on {sent.reference}, sent for Australia; its accounts point elsewhere")
    assert "it is now placed in New Zealand" in session.get(Referral, sent.id).events[-1].note


@pytest.mark.parametrize("declined_part", ["younger", "older"])
def test_a_merge_with_a_person_a_receiver_declined_is_held_back_from_it_whichever_part_is_older(
        session, world, declined_part):
    """Bravo declined one part; a later account shows both parts are one person. The merged
    holder is not routed back to Bravo on a new draft: it waits on the declined referral, on
    the review list, whether the part declined was the older (the survivor) or the younger."""
    run_import(session, world, tip(account(1, email="left@example.org"), account(2, username="righty", uploads_a="12")))
    part = holder_of(session, world, "acc2" if declined_part == "younger" else "acc1")
    declined = referrals.transition(session, world.actor("c_liaison"), part.referral_id, "send", None)
    referrals.transition(session, world.actor("b_liaison"), declined.id, "acknowledge", None)
    referrals.transition(session, world.actor("b_liaison"), declined.id, "decline", None, "Not ours.")
    run_import(session, world, tip(account(3, email="left@example.org", username="righty")), file_name="b.csv")
    session.expire_all()
    merged = holder_of(session, world, "acc3")
    assert (merged.referral_id, merged.needs_review) == (declined.id, True)
    drafts_with_it = session.scalars(select(Referral.reference).join(
        referral_subjects, referral_subjects.c.referral_id == Referral.id).where(
        referral_subjects.c.subject_id == merged.subject_id, Referral.status == Status.DRAFT)).all()
    assert drafts_with_it == []
    reason = holder_service.review_reasons(session, world.users["c_liaison"], [merged])[merged.id].text
    assert reason == f"{declined.reference} was declined by {world.agencies['b'].name}"


def _declined(session, world, holder: Holder, by: str) -> Referral:
    """The holder's referral sent, acknowledged and declined by agency `by`."""
    referral = referrals.transition(session, world.actor("c_liaison"), holder.referral_id, "send", None)
    referrals.transition(session, world.actor(f"{by}_liaison"), referral.id, "acknowledge", None)
    return referrals.transition(session, world.actor(f"{by}_liaison"), referral.id, "decline", None, "Not ours.")


def test_a_merged_holder_routed_past_a_part_declined_elsewhere_is_not_put_on_that_referral(session, world):
    """Bravo declined the younger part; a person placed the older one in New Zealand. Merged,
    the holder goes to New Zealand's agency: the referral Bravo declined does not gain it."""
    run_import(session, world, tip(account(1, email="left@example.org"), account(2, username="righty", uploads_a="12")))
    holder_service.set_jurisdiction(session, world.actor("c_liaison"), holder_of(session, world, "acc1").subject_id,
                                    "NZ", "Checked by hand.")
    declined = _declined(session, world, holder_of(session, world, "acc2"), "b")
    run_import(session, world, tip(account(3, email="left@example.org", username="righty")), file_name="b.csv")
    session.expire_all()
    merged = holder_of(session, world, "acc3")
    now_on = session.get(Referral, merged.referral_id)
    assert (now_on.status, now_on.receiver_agency_id, merged.needs_review) == (
        Status.DRAFT, world.agencies["a"].id, False)
    on_declined = session.scalars(select(referral_subjects.c.subject_id).where(
        referral_subjects.c.referral_id == declined.id)).all()
    assert merged.subject_id not in on_declined


def test_a_merged_holder_is_held_back_from_every_agency_that_declined_a_part(session, world):
    """Alpha declined the part a person placed in New Zealand, Bravo the other. Merged, the
    holder keeps the person's New Zealand: it waits on Alpha's declined referral for a person,
    not on a new draft back to Alpha."""
    run_import(session, world, tip(account(1, email="left@example.org"), account(2, username="righty")))
    holder_service.set_jurisdiction(session, world.actor("c_liaison"), holder_of(session, world, "acc2").subject_id,
                                    "NZ", "Checked by hand.")
    by_alpha = _declined(session, world, holder_of(session, world, "acc2"), "a")
    _declined(session, world, holder_of(session, world, "acc1"), "b")
    run_import(session, world, tip(account(3, email="left@example.org", username="righty")), file_name="b.csv")
    session.expire_all()
    merged = holder_of(session, world, "acc3")
    assert (merged.jurisdiction, merged.referral_id, merged.needs_review) == ("NZ", by_alpha.id, True)
    drafts_with_it = session.scalars(select(Referral.id).join(
        referral_subjects, referral_subjects.c.referral_id == Referral.id).where(
        referral_subjects.c.subject_id == merged.subject_id, Referral.status == Status.DRAFT)).all()
    assert drafts_with_it == []


def _merged_past_two_declines(session, world) -> tuple[Holder, Referral, Referral]:
    """Bravo declined the Australian part, Alpha the New Zealand one; a later account shows
    both are one person, placed in Australia by the evidence: (the merged holder, Alpha's
    declined referral, Bravo's)."""
    run_import(session, world, tip(account(1, email="left@example.org"),
                                   account(2, username="righty", country_hint="NZ", ip_country="NZ")))
    by_bravo = _declined(session, world, holder_of(session, world, "acc1"), "b")
    by_alpha = _declined(session, world, holder_of(session, world, "acc2"), "a")
    run_import(session, world, tip(account(3, email="left@example.org", username="righty")), file_name="b.csv")
    session.expire_all()
    merged = holder_of(session, world, "acc3")
    assert (merged.jurisdiction, merged.referral_id, merged.needs_review) == ("AU", by_bravo.id, True)
    return merged, by_alpha, by_bravo


def _drafts_holding(session, holder: Holder) -> list[int]:
    return session.scalars(select(Referral.id).join(
        referral_subjects, referral_subjects.c.referral_id == Referral.id).where(
        referral_subjects.c.subject_id == holder.subject_id, Referral.status == Status.DRAFT)).all()


def test_a_merged_holder_stays_held_back_from_a_part_s_decliner_in_later_imports(session, world):
    """Merged past two declines, the holder waits on Bravo's. Later accounts point it to New
    Zealand: it is not drafted to Alpha, which declined a part; it waits on Alpha's declined
    referral, on the review list. Still later ones point it back to Australia: it waits on
    Bravo's again."""
    merged, by_alpha, by_bravo = _merged_past_two_declines(session, world)
    run_import(session, world, tip(*(account(n, username="righty", country_hint="NZ", ip_country="NZ")
                                     for n in (4, 5, 6))), file_name="c.csv")
    session.expire_all()
    merged = session.get(Holder, merged.id)
    assert (merged.jurisdiction, merged.referral_id, merged.needs_review) == ("NZ", by_alpha.id, True)
    assert _drafts_holding(session, merged) == []
    reason = holder_service.review_reasons(session, world.users["c_liaison"], [merged])[merged.id].text
    assert reason == f"{by_alpha.reference} was declined by {world.agencies['a'].name}"

    run_import(session, world, tip(*(account(n, email="left@example.org") for n in range(7, 12))), file_name="d.csv")
    session.expire_all()
    merged = session.get(Holder, merged.id)
    assert (merged.jurisdiction, merged.referral_id, merged.needs_review) == ("AU", by_bravo.id, True)
    assert _drafts_holding(session, merged) == []


def test_a_holder_routed_away_from_its_decliner_is_held_back_when_its_evidence_points_back(session, world):
    """Bravo declined the holder; later accounts place it in New Zealand (drafted to Alpha),
    then back in Australia: it is not drafted to Bravo again but waits on Bravo's declined
    referral for a person, off Alpha's draft."""
    run_import(session, world, tip(account(1, email="left@example.org")))
    by_bravo = _declined(session, world, holder_of(session, world, "acc1"), "b")
    run_import(session, world, tip(*(account(n, email="left@example.org", country_hint="NZ", ip_country="NZ")
                                     for n in (2, 3))), file_name="b.csv")
    session.expire_all()
    holder = holder_of(session, world, "acc1")
    to_alpha = session.get(Referral, holder.referral_id)
    assert (to_alpha.status, to_alpha.receiver_agency_id) == (Status.DRAFT, world.agencies["a"].id)
    run_import(session, world, tip(*(account(n, email="left@example.org") for n in (4, 5, 6))), file_name="c.csv")
    session.expire_all()
    holder = holder_of(session, world, "acc1")
    assert (holder.jurisdiction, holder.referral_id, holder.needs_review) == ("AU", by_bravo.id, True)
    assert _drafts_holding(session, holder) == []


def test_a_person_s_decision_after_a_part_s_decline_holds_in_later_imports(session, world):
    """A person places the merged holder in New Zealand, knowing Alpha declined a part: it is
    drafted to Alpha, and a later account of it leaves it there. Once it merges with another
    holder, it is no longer the holder the person placed: it is held back from Alpha again."""
    merged, by_alpha, _by_bravo = _merged_past_two_declines(session, world)
    holder_service.set_jurisdiction(session, world.actor("c_liaison"), merged.subject_id, "NZ", "Checked by hand.")
    session.expire_all()
    draft = session.get(Holder, merged.id).referral_id
    assert session.get(Referral, draft).receiver_agency_id == world.agencies["a"].id
    run_import(session, world, tip(account(4, username="righty"), account(5, username="loner")), file_name="c.csv")
    session.expire_all()
    merged = session.get(Holder, merged.id)
    assert (merged.referral_id, merged.needs_review) == (draft, False)
    assert _drafts_holding(session, merged) == [draft]

    run_import(session, world, tip(account(6, username="righty", email="loner@example.org"),
                                   account(7, username="loner", email="loner@example.org")), file_name="d.csv")
    session.expire_all()
    merged = session.get(Holder, merged.id)
    assert holder_of(session, world, "acc5").id == merged.id  # the loner merged into it
    assert (merged.jurisdiction, merged.referral_id, merged.needs_review) == ("NZ", by_alpha.id, True)
    assert _drafts_holding(session, merged) == []


def test_a_holder_a_directory_change_holds_back_from_its_decliner_waits_on_the_review_list(session, world):
    """Bravo declined the holder; a person placed it in France (the bureau's), and a later
    merge made it another holder than the one placed. When Bravo becomes France's focal
    point, the holder is not drafted back to Bravo: it waits on Bravo's declined referral, and
    on the review list, as an import would leave it, not on no work list at all."""
    run_import(session, world, tip(account(1, email="left@example.org"),
                                   account(2, username="righty", country_hint="FR", ip_country="FR")))
    by_bravo = _declined(session, world, holder_of(session, world, "acc1"), "b")
    holder_service.set_jurisdiction(session, world.actor("c_liaison"), holder_of(session, world, "acc1").subject_id,
                                    "FR", "Checked by hand.")
    run_import(session, world, tip(account(3, email="left@example.org", username="righty")), file_name="b.csv")
    session.expire_all()
    merged = holder_of(session, world, "acc3")
    assert (merged.routing, merged.needs_review) == (HolderRouting.INTERNATIONAL, False)
    bravo = world.agencies["b"]
    directory.update_agency(session, world.actor("a_admin"), bravo.id, _agency_data(bravo, country_code="FR"))
    session.expire_all()
    merged = session.get(Holder, merged.id)
    assert (merged.referral_id, merged.needs_review) == (by_bravo.id, True)
    assert _drafts_holding(session, merged) == []
    listed = holder_service.review_list(session, world.users["c_liaison"], holder_service.HolderFilters()).items
    assert holder_service.review_reasons(session, world.users["c_liaison"], listed)[merged.id].text == (
        f"{by_bravo.reference} was declined by {bravo.name}")


def test_a_holder_a_withdrawal_holds_back_from_its_decliner_waits_on_the_review_list(session, world):
    """The same holder, sent to the bureau before Bravo became France's focal point: when the
    bureau's referral is withdrawn, the holder is routed again, held back from Bravo, and
    waits on Bravo's declined referral on the review list."""
    run_import(session, world, tip(account(1, email="left@example.org"),
                                   account(2, username="righty", country_hint="FR", ip_country="FR")))
    by_bravo = _declined(session, world, holder_of(session, world, "acc1"), "b")
    holder_service.set_jurisdiction(session, world.actor("c_liaison"), holder_of(session, world, "acc1").subject_id,
                                    "FR", "Checked by hand.")
    sent = referrals.transition(session, world.actor("c_liaison"), holder_of(session, world, "acc1").referral_id,
                                "send", None)
    run_import(session, world, tip(account(3, email="left@example.org", username="righty")), file_name="b.csv")
    bravo = world.agencies["b"]
    directory.update_agency(session, world.actor("a_admin"), bravo.id, _agency_data(bravo, country_code="FR"))
    session.expire_all()
    assert (holder_of(session, world, "acc3").referral_id, holder_of(session, world, "acc3").needs_review) == (
        sent.id, False)
    referrals.transition(session, world.actor("c_liaison"), sent.id, "withdraw", None, "Sent too early.")
    session.expire_all()
    merged = holder_of(session, world, "acc3")
    assert (merged.referral_id, merged.needs_review) == (by_bravo.id, True)
    assert _drafts_holding(session, merged) == []


def test_a_declined_holder_a_decision_routes_elsewhere_is_listed_for_its_decline_not_its_evidence(session, world):
    """Bravo declined the holder, then stopped being Australia's focal point. A decision on
    its risk flags routes it to the bureau's draft, still on the review list (no person has
    set its jurisdiction since the decline): the list says why, not that its accounts point to
    more than one country, which they do not."""
    run_import(session, world, tip(account(1, email="left@example.org")))
    by_bravo = _declined(session, world, holder_of(session, world, "acc1"), "b")
    bravo = world.agencies["b"]
    directory.update_agency(session, world.actor("a_admin"), bravo.id, _agency_data(bravo, is_focal_point=False))
    holder_service.set_risk_flags(session, world.actor("c_liaison"), holder_of(session, world, "acc1").subject_id,
                                  {"risk_previous_convictions": True})
    session.expire_all()
    holder = holder_of(session, world, "acc1")
    assert (holder.evidence, holder.receiver_agency_id, holder.needs_review) == (
        {"AU": 3}, world.agencies["i"].id, True)
    lead = world.users["c_liaison"]
    listed = holder_service.review_list(session, lead, holder_service.HolderFilters()).items
    assert holder_service.review_reasons(session, lead, listed)[holder.id].text == (
        f"{by_bravo.reference} was declined by {bravo.name}")


def _joined_after_transfer(session, world) -> tuple[Referral, Referral]:
    """acc1's package sent to Bravo and passed on to the bureau; then acc9 merges acc5's draft
    holder with acc1's, and the merged holder sits on the transfer's successor. (The package,
    the successor.)"""
    run_import(session, world, tip(account(40, email="s@example.org"), account(5, username="lefty"),
                                   account(1, email="p@example.org", uploads_b="2")))
    package = holder_of(session, world, "acc1").referral_id
    referrals.transition(session, world.actor("c_liaison"), package, "send", None)
    onward = _passed_on(session, world, package)
    run_import(session, world, tip(account(9, username="lefty", email="p@example.org")), file_name="b.csv")
    assert holder_of(session, world, "acc9").referral_id == onward.id
    referrals.transition(session, world.actor("i_liaison"), onward.id, "acknowledge", None)
    referrals.transition(session, world.actor("i_liaison"), onward.id, "decline", None, "Not ours.")
    return session.get(Referral, package), onward


def test_a_holder_that_joined_a_case_passed_on_is_held_back_from_the_agency_that_passed_it_on(session, world):
    """The bureau declined the case Bravo passed on to it, which a holder joined after the
    transfer. A later account of the holder routes it again: not back to Bravo."""
    _package, onward = _joined_after_transfer(session, world)
    run_import(session, world, tip(account(12, username="lefty")), file_name="c.csv")
    session.expire_all()
    holder = holder_of(session, world, "acc12")
    assert (holder.referral_id, holder.needs_review) == (onward.id, True)


def test_a_holder_merged_with_one_that_joined_a_case_passed_on_waits_where_the_case_came_in(session, world):
    """The older holder takes in the one on the declined successor: it waits for a person on
    the lead's referral the case came in on, where it matches, not on the successor, where
    nothing of it would."""
    package, onward = _joined_after_transfer(session, world)
    alphas = known_to_alpha(session, world, "s@example.org")
    run_import(session, world, tip(account(50, username="lefty", email="s@example.org")), file_name="c.csv")
    session.expire_all()
    merged = holder_of(session, world, "acc50")
    assert (merged.referral_id, merged.needs_review) == (package.id, True)
    pair = (min(package.id, alphas.id), max(package.id, alphas.id))
    assert session.scalar(select(Hit.id).where(Hit.referral_low_id == pair[0], Hit.referral_high_id == pair[1]))


@pytest.mark.parametrize("decided_part", ["younger", "older"])
def test_a_merged_holder_a_person_placed_elsewhere_than_its_sent_referral_goes_to_review(
        session, world, decided_part):
    """One part is on a referral sent for Australia; a person placed the other in New Zealand.
    Merged, the holder keeps the person's decision, stays on the sent referral and waits for a
    person, and the receiver is told where it is placed now: whichever part was older."""
    run_import(session, world, tip(account(1, email="left@example.org", uploads_b="1"),
                                   account(2, username="righty")))
    sent_part, decided = ((holder_of(session, world, "acc1"), holder_of(session, world, "acc2"))
                          if decided_part == "younger" else
                          (holder_of(session, world, "acc2"), holder_of(session, world, "acc1")))
    holder_service.set_jurisdiction(session, world.actor("c_liaison"), decided.subject_id, "NZ", "Checked by hand.")
    sent = referrals.transition(session, world.actor("c_liaison"), sent_part.referral_id, "send", None)
    assert sent.jurisdiction == "AU"
    run_import(session, world, tip(account(3, email="left@example.org", username="righty")), file_name="b.csv")
    session.expire_all()
    merged = holder_of(session, world, "acc3")
    assert (merged.referral_id, merged.jurisdiction, merged.needs_review) == (sent.id, "NZ", True)
    assert "it is now placed in New Zealand" in session.get(Referral, sent.id).events[-1].note


def test_a_merged_holder_stays_on_the_open_referral_of_a_part_rather_than_its_own_closed_one(session, world):
    """The older part's case is closed; the younger part's referral is still open with Bravo.
    The merged person's new material goes to the open case, which is raised and told."""
    run_import(session, world, tip(account(1, email="left@example.org", uploads_a="12"),
                                   account(2, username="righty", uploads_b="1")))
    bravo = world.actor("b_liaison")
    closed = referrals.transition(session, world.actor("c_liaison"), holder_of(session, world, "acc1").referral_id,
                                  "send", None)
    for action in ("acknowledge", "accept"):
        referrals.transition(session, bravo, closed.id, action, None)
    referrals.record_outcome(session, bravo, closed.id, referrals.OutcomeData(occurred_on=utcnow().date(), arrests=1))
    referrals.transition(session, bravo, closed.id, "close", None)
    open_ = referrals.transition(session, world.actor("c_liaison"), holder_of(session, world, "acc2").referral_id,
                                 "send", None)
    assert (closed.status, open_.priority) == (Status.CLOSED, Priority.P3)
    run_import(session, world, tip(account(3, email="left@example.org", username="righty", uploads_a="50")),
               file_name="b.csv")
    session.expire_all()
    merged = holder_of(session, world, "acc3")
    assert merged.referral_id == open_.id
    again = session.get(Referral, open_.id)
    assert again.priority is Priority.P2
    assert any("joined this referral by a merge" in e.note for e in again.events if e.action == "update")


def test_a_holder_waiting_for_review_stays_on_the_list_through_later_imports(session, world):
    """A person set the holder's country; a merge then put it on a sent referral of another
    country. Only a person takes it off the review list: an import that merely adds an account
    to it leaves it there."""
    nz = {"country_hint": "NZ", "ip_country": "NZ"}
    run_import(session, world, tip(account(5, username="lefty", **nz), account(1, email="p@example.org", uploads_a="12")))
    left, right = holder_of(session, world, "acc5"), holder_of(session, world, "acc1")
    holder_service.set_jurisdiction(session, world.actor("c_liaison"), left.subject_id, "NZ", "Checked by hand.")
    sent = referrals.transition(session, world.actor("c_liaison"), right.referral_id, "send", None)
    run_import(session, world, tip(account(9, username="lefty", email="p@example.org", **nz)), file_name="b.csv")
    session.expire_all()
    assert (session.get(Holder, left.id).referral_id, session.get(Holder, left.id).needs_review) == (sent.id, True)
    run_import(session, world, tip(account(10, email="p@example.org", **nz)), file_name="c.csv")
    session.expire_all()
    merged = session.get(Holder, left.id)
    assert (merged.accounts, merged.jurisdiction_source.value, merged.needs_review) == (4, "manual", True)
    holder_service.set_jurisdiction(session, world.actor("c_liaison"), merged.subject_id, "AU", "Agreed with Bravo.")
    run_import(session, world, tip(account(11, email="p@example.org", **nz)), file_name="d.csv")
    session.expire_all()
    assert session.get(Holder, left.id).needs_review is False


def _merged_into_a_transferred_referral(session, world, **lefty) -> tuple[Holder, int, Referral]:
    """Lefty's package holder, merged by a later account with a P2 holder whose referral Bravo
    transferred on to the Intl Bureau: (Lefty, its package draft's id, the onward referral)."""
    run_import(session, world, tip(account(5, username="lefty", **lefty),
                                   account(1, email="p@example.org", uploads_a="12")))
    left, right = holder_of(session, world, "acc5"), holder_of(session, world, "acc1")
    package = left.referral_id
    assert package != right.referral_id  # a package, and a P2 holder's own referral
    sent = referrals.transition(session, world.actor("c_liaison"), right.referral_id, "send", None)
    referrals.transition(session, world.actor("b_liaison"), sent.id, "acknowledge", None)
    referrals.grant_transfer_consent(session, world.actor("c_liaison"), sent.id, None)
    onward = referrals.transition(session, world.actor("b_liaison"), sent.id, "transfer", None,
                                  transfer_to_agency_id=world.agencies["i"].id)
    run_import(session, world, tip(account(9, username="lefty", email="p@example.org")))
    session.expire_all()
    return left, package, onward


def test_a_holder_merged_onto_a_case_passed_on_is_not_shown_to_the_agency_that_passed_it(session, world):
    """Lefty was on a draft never sent; a merge puts it on the referral that continues the case
    Bravo passed on. Bravo sent that referral, but never had Lefty: it neither reads Lefty there
    nor becomes a party to Lefty's hits."""
    alpha = known_to_alpha(session, world, "shared@example.org")
    left, _package, onward = _merged_into_a_transferred_referral(session, world, email="shared@example.org")
    bravo = world.users["b_liaison"]
    assert deconfliction.list_hits(session, bravo, deconfliction.HitFilters()).items == []
    told, _total = deconfliction.list_notifications(session, bravo, mark_seen=False)
    assert not {NotificationKind.HIT_NEW, NotificationKind.HIT_UPDATED} & {n.kind for n in told}
    shown = {i.value for s in subjects.subjects_of(session, bravo, onward.id) for i in s.identifiers}
    assert shown == {"acc1", "p@example.org"}
    # The Intl Bureau, which has the case now, reads Lefty on it.
    bureau = {i.value for s in subjects.subjects_of(session, world.users["i_liaison"], onward.id) for i in s.identifiers}
    assert {"lefty", "shared@example.org"} <= bureau
    # Lefty matches where the case came in: Alpha's referral meets the lead's original, and a
    # blind check of Lefty's handle is answered with the lead as the contact.
    original = session.get(Referral, onward.transferred_from_id)
    [hit] = session.scalars(select(Hit))
    assert {(hit.referral_low_id, hit.agency_low_id), (hit.referral_high_id, hit.agency_high_id)} == {
        (original.id, world.agencies["c"].id), (alpha.id, world.agencies["a"].id)}
    [line] = deconfliction.blind_check(session, world.actor("a_liaison"), "lefty", kind=IdentifierKind.USERNAME,
                                       platform="discord").lines
    assert [(c.agency_name, c.reference) for c in line.contacts] == [(world.agencies["c"].name, original.reference)]
    # Bravo, the original's receiver, let it go when it passed the case on: it does not read Lefty there.
    assert "lefty" not in {i.value for s in subjects.subjects_of(session, bravo, original.id) for i in s.identifiers}


def test_a_holder_merged_with_one_that_followed_a_transfer_matches_where_the_case_came_in(session, world, match_path):
    """Oldie (oldest, on a draft) merges with Lefty, who an earlier merge put on the onward
    referral (Lefty.referral_id is the successor). Oldie should match through the lead's
    original referral, as Lefty does; it is linked only to the successor, where nothing matches."""
    alpha = known_to_alpha(session, world, "o@example.org")
    run_import(session, world, tip(account(0, email="o@example.org"), account(5, username="lefty"),
                                   account(1, email="p@example.org", uploads_a="12")))
    oldie, right = holder_of(session, world, "acc0"), holder_of(session, world, "acc1")
    sent = referrals.transition(session, world.actor("c_liaison"), right.referral_id, "send", None)
    referrals.transition(session, world.actor("b_liaison"), sent.id, "acknowledge", None)
    referrals.grant_transfer_consent(session, world.actor("c_liaison"), sent.id, None)
    onward = referrals.transition(session, world.actor("b_liaison"), sent.id, "transfer", None,
                                  transfer_to_agency_id=world.agencies["i"].id)
    run_import(session, world, tip(account(9, username="lefty", email="p@example.org")), file_name="b.csv")
    session.expire_all()
    assert holder_of(session, world, "acc5").referral_id == onward.id
    run_import(session, world, tip(account(10, username="lefty", email="o@example.org")), file_name="c.csv")
    session.expire_all()
    merged = session.get(Holder, oldie.id)
    assert merged.merged_into_id is None and merged.referral_id == onward.id
    linked = set(session.scalars(select(referral_subjects.c.referral_id)
                                 .where(referral_subjects.c.subject_id == merged.subject_id)))
    hits = {(h.referral_low_id, h.referral_high_id) for h in session.scalars(select(Hit))}
    assert tuple(sorted((sent.id, alpha.id))) in hits, (hits, linked)


def test_a_merged_holder_joins_a_transferred_referral_where_it_is_now(session, world):
    left, _package, onward = _merged_into_a_transferred_referral(session, world)
    merged = session.get(Holder, left.id)
    assert (merged.referral_id, merged.receiver_agency_id) == (onward.id, world.agencies["i"].id)
    assert session.scalar(select(func.count()).select_from(referral_subjects).where(
        referral_subjects.c.referral_id == onward.id, referral_subjects.c.subject_id == merged.subject_id)) == 1
    assert session.get(Referral, onward.id).events[-1].action == "update"
    told, _total = deconfliction.list_notifications(session, world.users["i_liaison"], mark_seen=False)
    assert (NotificationKind.REFERRAL_UPDATED, onward.id) in {(n.kind, n.referral_id) for n in told}


def test_a_merge_of_two_holders_on_two_sent_referrals_tells_the_absorbed_holders_receiver(session, world):
    nz = {"country_hint": "NZ", "ip_country": "NZ"}
    run_import(session, world, tip(account(1, email="p@example.org", uploads_b="1"),
                                   account(2, username="kiwi", uploads_b="1", **nz)))
    left, right = holder_of(session, world, "acc1"), holder_of(session, world, "acc2")
    to_b = referrals.transition(session, world.actor("c_liaison"), left.referral_id, "send", None)
    to_a = referrals.transition(session, world.actor("c_liaison"), right.referral_id, "send", None)
    assert (to_b.receiver_agency_id, to_a.receiver_agency_id) == (world.agencies["b"].id, world.agencies["a"].id)
    result = run_import(session, world, tip(account(3, email="p@example.org", username="kiwi")), file_name="later.csv")
    assert result.merges == [(left.id, [right.id])]
    session.expire_all()
    update = session.get(Referral, to_a.id).events[-1]
    assert update.action == "update" and update.note == (
        f"Tip later.csv (import {result.tip.id}): holder {right.label} turned out to be the same person as another "
        "holder of the operation, which took in its accounts; the sending agency follows them up there.")
    told, _total = deconfliction.list_notifications(session, world.users["a_liaison"], mark_seen=False)
    assert (NotificationKind.REFERRAL_UPDATED, to_a.id) in {(n.kind, n.referral_id) for n in told}
    # The survivor's own referral is told it took the accounts in.
    assert "took in the accounts of holder" in session.get(Referral, to_b.id).events[-1].note
    # Each receiver's funnel counts the person once: Alpha sees only the holder on its referral.
    from app.services import stats

    for user, accounts in (("c_liaison", 3), ("b_liaison", 3), ("a_liaison", 1)):
        funnel = stats.operation_dashboard(session, world.users[user], stats.Filters(operation_id=world.operation.id))
        assert (funnel.total.holders, funnel.total.accounts) == (1, accounts), user


def test_an_agreed_lead_survives_a_merge_that_empties_its_draft(session, world):
    """Alpha and the lead agency agreed on a hit about a package draft; a later merge moves the
    draft's holder to another draft and discards the package: the hit, agreement and all, moves
    with the holder."""
    from app.models import HitStatus

    other = known_to_alpha(session, world, "shared@example.org")
    run_import(session, world, tip(account(0, username="lefty", uploads_a="12"),
                                   account(1, email="shared@example.org")))
    older, younger = holder_of(session, world, "acc0"), holder_of(session, world, "acc1")
    hit = session.scalars(select(Hit)).one()
    assert younger.referral_id in (hit.referral_low_id, hit.referral_high_id)
    deconfliction.resolve(session, world.actor("a_liaison"), hit.id, None, world.agencies["a"].id,
                          "Agreed by phone: Alpha leads.")
    session.flush()
    package = younger.referral_id
    result = run_import(session, world, tip(account(9, username="lefty", email="shared@example.org")))
    assert result.merges == [(older.id, [younger.id])] and package in result.routing.discarded
    session.expire_all()
    kept = session.scalars(select(Hit)).one()
    carrier = session.get(Holder, older.id).referral_id
    assert (kept.id, kept.status, kept.lead_agency_id, kept.resolution_note) == (
        hit.id, HitStatus.RESOLVED, world.agencies["a"].id, "Agreed by phone: Alpha leads.")
    assert {kept.referral_low_id, kept.referral_high_id} == {carrier, other.id}
    sides = {kept.referral_low_id: kept.agency_low_id, kept.referral_high_id: kept.agency_high_id}
    assert sides == {carrier: world.agencies["c"].id, other.id: world.agencies["a"].id}
    alphas = set(session.scalars(select(Identifier.id).join(
        referral_subjects, referral_subjects.c.subject_id == Identifier.subject_id).where(
        referral_subjects.c.referral_id == other.id)))
    assert {m.side for m in kept.matches if m.identifier_id in alphas} == {
        HitSide.LOW if kept.referral_low_id == other.id else HitSide.HIGH}
    assert session.scalars(select(AuditEntry).where(AuditEntry.action == "hit.move")).one().object_id == str(hit.id)
    assert audit.verify(session).ok


def test_a_hit_moving_off_a_discarded_draft_keeps_each_agencys_side(session, world):
    """The holder leaves its package for a P1 draft of its own, made after the other agency's
    referral: the pair's order turns, and each agency keeps its acknowledgement and matches."""
    run_import(session, world, tip(account(1, email="shared@example.org")))
    holder = holder_of(session, world, "acc1")
    package = holder.referral_id
    other = known_to_alpha(session, world, "shared@example.org")
    hit = session.scalars(select(Hit)).one()
    assert (hit.referral_low_id, hit.referral_high_id) == (package, other.id)
    deconfliction.acknowledge(session, world.actor("a_liaison"), hit.id, None)
    session.flush()
    acknowledged_at = hit.acknowledged_high_at
    decision = holder_service.set_risk_flags(session, world.actor("c_liaison"), holder.subject_id,
                                             {"risk_plans_to_meet": True})
    session.expire_all()
    own = decision.holder.referral_id
    assert own > other.id and session.get(Referral, package) is None
    kept = session.get(Hit, hit.id)
    assert (kept.referral_low_id, kept.agency_low_id, kept.referral_high_id, kept.agency_high_id) == (
        other.id, world.agencies["a"].id, own, world.agencies["c"].id)
    assert (kept.acknowledged_low_at, kept.acknowledged_high_at) == (acknowledged_at, None)
    alphas = set(session.scalars(select(Identifier.id).join(
        referral_subjects, referral_subjects.c.subject_id == Identifier.subject_id).where(
        referral_subjects.c.referral_id == other.id)))
    assert sorted((m.identifier_id in alphas, m.side) for m in kept.matches) == [(False, HitSide.HIGH),
                                                                                (True, HitSide.LOW)]


def test_a_hit_matching_one_holder_on_both_its_referrals_moves_with_its_sides_turned(session, world):
    """A holder on a declined referral (with the part it absorbed) and on the draft a person's
    decision made: their hit matches its identifiers on both sides. A merge then takes it onto
    an older sent referral: the hit moves there with the pair's order turned, and the import
    goes through (turning the sides row by row ran into the twin of each shared match)."""
    run_import(session, world, tip(account(1, username="righty", country_hint="NZ", ip_country="NZ")))
    older = referrals.transition(session, world.actor("c_liaison"), holder_of(session, world, "acc1").referral_id,
                                 "send", None)
    run_import(session, world, tip(account(2, email="left@example.org"), account(3, username="lefty")),
               file_name="b.csv")
    declined = referrals.transition(session, world.actor("c_liaison"), holder_of(session, world, "acc2").referral_id,
                                    "send", None)
    run_import(session, world, tip(account(4, email="left@example.org", username="lefty")), file_name="c.csv")
    referrals.transition(session, world.actor("b_liaison"), declined.id, "acknowledge", None)
    referrals.transition(session, world.actor("b_liaison"), declined.id, "decline", None, "Not ours.")
    holder = holder_of(session, world, "acc2")
    holder_service.set_jurisdiction(session, world.actor("c_liaison"), holder.subject_id, "FR", "Checked by hand.")
    session.expire_all()
    draft = holder_of(session, world, "acc2").referral_id
    hit = session.scalars(select(Hit)).one()
    assert (hit.referral_low_id, hit.referral_high_id) == (declined.id, draft)
    shared = {m.identifier_id for m in hit.matches if m.side is HitSide.LOW} & {
        m.identifier_id for m in hit.matches if m.side is HitSide.HIGH}
    assert shared  # the holder's own identifiers, on both sides
    before = sorted((m.identifier_id, m.side.value) for m in hit.matches)
    run_import(session, world, tip(account(5, email="left@example.org", username="righty")), file_name="d.csv")
    session.expire_all()
    assert holder_of(session, world, "acc5").referral_id == older.id and session.get(Referral, draft) is None
    moved = session.get(Hit, hit.id)
    assert (moved.referral_low_id, moved.referral_high_id) == (older.id, declined.id)
    turned = {HitSide.LOW.value: HitSide.HIGH.value, HitSide.HIGH.value: HitSide.LOW.value}
    assert {(identifier, turned[side]) for identifier, side in before} <= {  # and what the import matched
        (m.identifier_id, m.side.value) for m in moved.matches}


def test_a_hit_on_a_discarded_package_does_not_move_to_a_holder_that_matches_nothing(session, world):
    """Only the first holder of a package shares an identifier with Alpha's referral. It leaves
    for a draft of its own (matched anew there), then the second does: the package's old hit
    goes with the package, not onto the second holder's draft, which shares nothing."""
    run_import(session, world, tip(account(1, email="shared@example.org"), account(2, email="own@example.org")))
    first, second = holder_of(session, world, "acc1"), holder_of(session, world, "acc2")
    assert first.referral_id == second.referral_id
    other = known_to_alpha(session, world, "shared@example.org")
    lead = world.actor("c_liaison")
    moved = holder_service.set_risk_flags(session, lead, first.subject_id, {"risk_plans_to_meet": True})
    decision = holder_service.set_risk_flags(session, lead, second.subject_id, {"risk_plans_to_meet": True})
    session.expire_all()
    pairs = {frozenset((h.referral_low_id, h.referral_high_id)) for h in session.scalars(select(Hit))}
    assert pairs == {frozenset((moved.holder.referral_id, other.id))}
    assert decision.holder.referral_id not in {r for pair in pairs for r in pair}


def test_a_hit_follows_its_holder_off_a_package_that_stays(session, world):
    """Alpha and the lead agreed who leads on a hit about one holder of a package; a re-import
    makes that holder P2, so it leaves for a draft of its own while the package keeps its other
    holder: the hit, agreement and all, follows the holder; nothing is raised twice."""
    from app.models import HitStatus

    other = known_to_alpha(session, world, "shared@example.org")
    run_import(session, world, tip(account(1, email="shared@example.org"), account(2, email="own@example.org")))
    first, second = holder_of(session, world, "acc1"), holder_of(session, world, "acc2")
    package = first.referral_id
    hit = session.scalars(select(Hit)).one()
    deconfliction.resolve(session, world.actor("a_liaison"), hit.id, None, world.agencies["a"].id, "Alpha leads.")
    session.flush()
    told_before = count(session, Notification)
    run_import(session, world, tip(account(3, email="shared@example.org", uploads_a="10")))
    session.expire_all()
    own = session.get(Holder, first.id).referral_id
    assert own != package and session.get(Holder, second.id).referral_id == package  # the package stays
    kept = session.scalars(select(Hit)).one()
    assert (kept.id, kept.status, kept.lead_agency_id) == (hit.id, HitStatus.RESOLVED, world.agencies["a"].id)
    assert {kept.referral_low_id, kept.referral_high_id} == {own, other.id}
    assert count(session, Notification) == told_before  # no second "deconfliction hit" for the same person
    moved = session.scalars(select(AuditEntry).where(AuditEntry.action == "hit.move")).one()
    assert json.loads(moved.detail)["reason"] == "the holders it matched left their draft"


def test_a_merge_within_one_package_keeps_the_agreed_hit(session, world):
    """The holder a hit is about merges into another holder of the same package: the person has
    not left the package, and the agreement stays."""
    from app.models import HitStatus

    known_to_alpha(session, world, "shared@example.org")
    run_import(session, world, tip(account(1, username="solo"), account(2, email="shared@example.org")))
    survivor, absorbed = holder_of(session, world, "acc1"), holder_of(session, world, "acc2")
    assert survivor.referral_id == absorbed.referral_id
    hit = session.scalars(select(Hit)).one()
    deconfliction.resolve(session, world.actor("a_liaison"), hit.id, None, world.agencies["a"].id, "Alpha leads.")
    session.flush()
    run_import(session, world, tip(account(3, username="solo", email="shared@example.org")), file_name="m.csv")
    session.expire_all()
    assert session.get(Holder, absorbed.id).merged_into_id == survivor.id
    assert [(h.id, h.status) for h in session.scalars(select(Hit))] == [(hit.id, HitStatus.RESOLVED)]
    assert session.scalar(select(func.count()).select_from(Notification).where(  # no second "new hit"
        Notification.kind == NotificationKind.HIT_NEW)) == 2


def test_a_hit_keeps_the_holders_that_stay_and_drops_the_matches_of_those_that_left(session, world):
    other = known_to_alpha(session, world, "one@example.org\ntwo@example.org")
    run_import(session, world, tip(account(1, email="one@example.org"), account(2, email="two@example.org")))
    first, second = holder_of(session, world, "acc1"), holder_of(session, world, "acc2")
    package = first.referral_id
    hit = session.scalars(select(Hit)).one()
    holder_service.set_risk_flags(session, world.actor("c_liaison"), first.subject_id, {"risk_plans_to_meet": True})
    session.expire_all()
    own = session.get(Holder, first.id).referral_id
    pairs = {frozenset((h.referral_low_id, h.referral_high_id)): h for h in session.scalars(select(Hit))}
    assert set(pairs) == {frozenset((package, other.id)), frozenset((own, other.id))}
    stayed = pairs[frozenset((package, other.id))]
    assert stayed.id == hit.id
    package_side = HitSide.LOW if stayed.referral_low_id == package else HitSide.HIGH
    on_package = {session.get(Identifier, m.identifier_id).subject_id for m in stayed.matches if m.side == package_side}
    assert on_package == {second.subject_id}  # not the holder that left
    # Alpha's side keeps the key the package still shares, not the one only the leaver shared.
    assert {session.get(Identifier, m.identifier_id).value for m in stayed.matches
            if m.side != package_side} == {"two@example.org"}


def test_a_hit_moves_only_to_a_referral_of_the_same_sender(session, world):
    """A merge makes Lefty join the referral Bravo transferred on (Bravo sends that successor):
    the hit Lefty's package had with Alpha's referral goes with the package, and is not moved
    onto a referral of another sender."""
    known_to_alpha(session, world, "shared@example.org")
    left, package, onward = _merged_into_a_transferred_referral(session, world, email="shared@example.org")
    assert session.get(Holder, left.id).referral_id == onward.id and session.get(Referral, package) is None
    for hit in session.scalars(select(Hit)):
        senders = tuple(session.get(Referral, r).sender_agency_id for r in (hit.referral_low_id, hit.referral_high_id))
        assert (hit.agency_low_id, hit.agency_high_id) == senders and onward.id not in (hit.referral_low_id,
                                                                                      hit.referral_high_id)


def test_a_sent_referral_is_never_lowered_and_drafts_are_routed_not_escalated(session, world):
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    actor = world.actor("c_liaison")
    holder_service.set_risk_flags(session, actor, holder.subject_id, {"risk_position_of_authority": True})
    assert session.get(Referral, sent.id).priority is Priority.P2
    holder_service.set_risk_flags(session, actor, holder.subject_id, {})  # back to P3: the referral stays P2
    session.expire_all()
    assert session.get(Referral, sent.id).priority is Priority.P2
    assert [e.action for e in session.get(Referral, sent.id).events].count("escalate") == 1
    # A draft is not escalated: the holder is routed to a referral of its own instead.
    run_import(session, world, tip(account(3, email="r@example.org", uploads_a="1")))
    draft_holder = holder_of(session, world, "acc3")
    package = session.get(Referral, draft_holder.referral_id)
    decision = holder_service.set_risk_flags(session, actor, draft_holder.subject_id, {"risk_contact_offending": True})
    assert decision.holder.referral_id != package.id
    assert "escalate" not in [e.action for e in package.events]


def test_flags_recorded_in_a_batch_escalate_each_sent_referral_once(session, world):
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    other = holder_of(session, world, "acc2")
    holder_service.record_risk_flags_batch(session, world.actor("c_liaison"), world.operation.id, {
        other.id: {"risk_access_to_children": True},  # P2 (no category A material)
        holder.id: {"risk_contact_offending": True},  # P1: the referral follows the most urgent
    })
    session.expire_all()
    escalated = session.get(Referral, sent.id)
    assert escalated.priority is Priority.P1
    events = [e for e in escalated.events if e.action == "escalate"]
    assert len(events) == 1 and "contact offending" in events[0].note
    notices, _total = deconfliction.list_notifications(session, world.users["b_liaison"], mark_seen=False)
    assert [n.referral_id for n in notices if n.kind is NotificationKind.PRIORITY_RAISED] == [sent.id]
    # The other holder's flags, which did not raise it, reach the receiver as news.
    assert [e.note for e in escalated.events if e.action == "update"] == [
        f"holder {other.label}: the lead agency recorded {holder_service._flags_named({'risk_access_to_children': True})}."]
    assert [n.referral_id for n in notices if n.kind is NotificationKind.REFERRAL_UPDATED] == [sent.id]


def test_flags_raising_a_holder_only_to_its_referrals_priority_reach_the_receiver(session, world):
    """The referral is P2 already: nothing to escalate, so the flags are news."""
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    c_liaison = world.actor("c_liaison")
    authority = {"risk_position_of_authority": True}
    holder_service.set_risk_flags(session, c_liaison, holder.subject_id, authority)  # P3 -> P2: raised
    holder_service.set_risk_flags(session, c_liaison, holder.subject_id, {})  # back to P3: news
    decision = holder_service.set_risk_flags(session, c_liaison, holder.subject_id, authority)  # P2 again
    assert decision.holder.priority is Priority.P2
    session.expire_all()
    seen = referrals.view(session, world.actor("b_liaison"), sent.id)
    assert seen.priority is Priority.P2 and [e.action for e in seen.events].count("escalate") == 1
    assert [e.note for e in seen.events if e.action == "update"] == [
        f"holder {holder.label}: the lead agency recorded {holder_service._flags_named({})}.",
        f"holder {holder.label}: the lead agency recorded {holder_service._flags_named(authority)}."]
    told, _total = deconfliction.list_notifications(session, world.users["b_liaison"], mark_seen=False)
    assert [n.kind for n in told].count(NotificationKind.REFERRAL_UPDATED) == 2


def test_new_accounts_making_a_sent_holder_more_urgent_escalate_its_referral(session, world):
    holder, sent = _sent_package(session, world, datetime.now(timezone.utc))
    # Imported from the command line (no signed-in user): the escalation is the lead agency's.
    import_tip(session, Actor(None, "cli"), world.operation.id, tip(
        account(1, email="p@example.org", uploads_a="1"), account(9, email="p@example.org", uploads_a="12")),
        "more.csv")
    session.expire_all()
    assert session.get(Holder, holder.id).priority is Priority.P2  # 13 category A items
    escalated = session.get(Referral, sent.id)
    assert (escalated.priority, escalated.status) == (Priority.P2, Status.SENT)
    event, update = escalated.events[-2:]
    assert (event.action, event.agency_id, event.user_id) == ("escalate", world.agencies["c"].id, None)
    assert "P3 -> P2 with the accounts of tip more.csv" in event.note
    assert (update.action, update.agency_id) == ("update", world.agencies["c"].id)
    assert "1 new account of holder" in update.note


# --- access ------------------------------------------------------------------------------------

def test_only_the_lead_agency_and_the_receivers_see_holders_and_tips(session, world):
    run_import(session, world, tip(account(1, email="seen@example.org")))
    holder = holder_of(session, world, "acc1")  # AU: a draft to agency b
    assert get_visible_holder(session, world.users["c_viewer"], holder.subject_id).id == holder.id
    with pytest.raises(NotFound):  # b sees nothing of a draft until it is sent
        get_visible_holder(session, world.users["b_viewer"], holder.subject_id)
    draft = session.get(Referral, holder.referral_id)
    referrals.transition(session, world.actor("c_liaison"), draft.id, "send", draft.version, None)
    assert get_visible_holder(session, world.users["b_viewer"], holder.subject_id).id == holder.id
    with pytest.raises(NotFound):
        get_visible_holder(session, world.users["a_manager"], holder.subject_id)
    assert session.scalars(visible_holders(world.users["a_admin"])).all() == []
    assert session.scalars(visible_tips(world.users["b_manager"])).all() == []
    assert len(session.scalars(visible_tips(world.users["c_viewer"])).all()) == 1
    with pytest.raises(Forbidden):  # b sees the holder, but only the lead agency decides
        holder_service.set_jurisdiction(session, world.actor("b_liaison"), holder.subject_id, "NZ")
    with pytest.raises(Forbidden):  # the receiving agency cannot import into another's operation
        import_tip(session, world.actor("b_liaison"), world.operation.id, tip(account(2)), "t.csv")
    with pytest.raises(NotFound):  # an agency with nothing in the operation does not learn it exists
        import_tip(session, world.actor("a_liaison"), world.operation.id, tip(account(2)), "t.csv")
    with pytest.raises(Forbidden):  # the lead agency's viewers read, they do not import
        import_tip(session, world.actor("c_viewer"), world.operation.id, tip(account(2)), "t.csv")


# --- the scenario ------------------------------------------------------------------------------

def _scenario_facts(session) -> tuple:
    """Everything the scenario's data says, the basic demo under it included: referrals with
    their history and outcomes, holders, subjects and identifiers, hits and notifications
    (not the records of loading it: the audit trail, accounts and their password salts), and the
    desks' time zones."""
    def rows(*columns, order_by):
        return tuple(tuple(row) for row in session.execute(select(*columns).order_by(*order_by)).all())

    return (
        rows(Referral.reference, Referral.status, Referral.priority, Referral.jurisdiction, Referral.created_at,
             Referral.sent_at, Referral.acknowledged_at, Referral.accepted_at, Referral.declined_at,
             Referral.transferred_at, Referral.withdrawn_at, Referral.closed_at, Referral.operation_id,
             Referral.updated_at, order_by=[Referral.id]),
        rows(referral_subjects.c.referral_id, referral_subjects.c.subject_id, referral_subjects.c.added_at,
             order_by=[referral_subjects.c.referral_id, referral_subjects.c.subject_id]),
        rows(ReferralEvent.referral_id, ReferralEvent.action, ReferralEvent.at, ReferralEvent.note,
             order_by=[ReferralEvent.id]),
        rows(Outcome.referral_id, Outcome.occurred_on, Outcome.arrests, Outcome.recorded_at, order_by=[Outcome.id]),
        rows(Holder.number, Holder.jurisdiction, Holder.priority, Holder.routing, order_by=[Holder.number]),
        rows(Subject.id, Subject.label, Subject.created_at, order_by=[Subject.id]),
        rows(Identifier.subject_id, Identifier.value, Identifier.created_at, order_by=[Identifier.id]),
        rows(Hit.referral_low_id, Hit.referral_high_id, Hit.status, Hit.created_at, Hit.acknowledged_low_at,
             Hit.acknowledged_high_at, Hit.resolved_at, Hit.lead_agency_id, order_by=[Hit.id]),
        rows(Notification.agency_id, Notification.kind, Notification.message, Notification.created_at,
             order_by=[Notification.id]),
        rows(Agency.name, Agency.timezone, order_by=[Agency.name]),
    )


def test_operation_h_at_a_small_scale_is_proportional_and_deterministic(any_app, session):
    from app.demo import operation_h
    from tests.conftest import _empty_all_tables

    passwords = any_app.extensions["handoff_passwords"]
    now = datetime(2026, 11, 1, tzinfo=timezone.utc)
    summary = operation_h.load_scenario(session, passwords, scale=0.01, seed=11, now=now)
    session.commit()
    assert summary.accounts == 1530
    assert 800 <= summary.holders <= 1000  # about 90,000 x 0.01
    # The lead country's accounts are its own holders' only (no other holder's IPs place one there).
    assert summary.lead_accounts == round(operation_h.LEAD_ACCOUNTS * 0.01)
    assert summary.lead_holders == round(operation_h.LEAD_HOLDERS * 0.01)
    assert summary.holder_countries >= 120 and summary.receiving_countries >= 100  # 130 in the tip
    assert summary.investigations == round(836 * 0.01)
    assert summary.children_safeguarded == round(146 * 0.01)
    assert summary.referrals.get("draft", 0) < sum(summary.referrals.values()) / 10
    assert {"sent", "acknowledged", "accepted", "declined"} <= set(summary.referrals)
    operation = session.scalars(select(Operation).where(Operation.code == operation_h.OPERATION_CODE)).one()
    # What the summary says of countries without a focal point is what the lead's unrouted list shows.
    lead = session.scalar(select(User).where(User.agency_id == operation.lead_agency_id, User.role == Role.LIAISON))
    listed, _ = holder_service.unrouted(session, lead, holder_service.HolderFilters(operation_id=operation.id))
    assert summary.unrouted_countries == len(listed) > 0
    assert summary.unrouted_holders == sum(country.holders for country in listed)
    in_scenario = select(Referral).where(Referral.operation_id == operation.id)
    sent = session.scalars(in_scenario.where(Referral.sent_at.is_not(None))).all()
    assert sent and all(now - timedelta(days=731) <= r.sent_at <= now for r in sent)
    for r in session.scalars(in_scenario.where(Referral.accepted_at.is_not(None))):
        assert r.created_at <= r.sent_at < r.acknowledged_at < r.accepted_at
        assert [e.action for e in r.events if e.action != "edit"][:4] == ["create", "send", "acknowledge", "accept"]
    # Most partner desks work what they get: declines are a minority, and an agency a referral
    # was transferred to works it too.
    assert summary.referrals["declined"] < len(sent) / 4
    onward = session.scalars(in_scenario.where(Referral.transferred_from_id.is_not(None),
                                               Referral.sent_at < now - timedelta(days=60))).all()
    assert onward and sum(r.status is not Status.SENT for r in onward) > len(onward) / 2
    assert all(r.acknowledged_at is None or r.sent_at < r.acknowledged_at <= now for r in onward)
    # The holders of a declined referral, or of one transferred on to a decliner, wait for review.
    declined = session.scalars(in_scenario.where(Referral.status == Status.DECLINED)).all()
    declined_ids = {r.id for r in declined} | {r.transferred_from_id for r in declined if r.transferred_from_id}
    waiting = session.execute(select(Holder.needs_review).where(Holder.referral_id.in_(declined_ids))).scalars().all()
    assert waiting and all(waiting)
    # Each history runs in the order it was written (no send before the triage edit it
    # follows), ends in the referral's status, and the last change is its updated_at.
    for r in session.scalars(in_scenario):
        assert [e.id for e in sorted(r.events, key=lambda e: (e.at, e.id))] == [e.id for e in r.events], r.reference
        assert [e.to_status for e in r.events][-1] == r.status.value and r.updated_at == r.events[-1].at, r.reference
    # Nothing withdrawn keeps holders off every work list: they were routed again.
    stranded = select(func.count()).select_from(Holder).join(Referral, Referral.id == Holder.referral_id).where(
        Referral.status == Status.WITHDRAWN, Holder.merged_into_id.is_(None))
    assert summary.referrals.get("withdrawn") and session.scalar(stranded) == 0
    # The two years run up to now: referrals are still being sent in the last months.
    assert max(r.sent_at for r in sent) > now - timedelta(days=120)
    # Partner desks referred some holders on their own: each meets the lead's referral of the
    # holder as a hit between the two agencies, found when the second of the pair held it.
    assert summary.partner_leads >= 1 and summary.hits >= summary.partner_leads
    for hit in session.scalars(select(Hit).where(Hit.referral_low_id.in_(in_scenario.with_only_columns(Referral.id))
                                                 | Hit.referral_high_id.in_(in_scenario.with_only_columns(Referral.id)))):
        pair = [session.get(Referral, hit.referral_low_id), session.get(Referral, hit.referral_high_id)]
        assert hit.created_at >= max(r.created_at for r in pair) and hit.agency_low_id != hit.agency_high_id
    assert audit.verify(session).ok
    # The demo's subjects are dated with their referrals: an agency that declined one still
    # reads the identifiers it was sent.
    for declined_referral in declined + session.scalars(select(Referral).where(
            Referral.status == Status.DECLINED, Referral.operation_id != operation.id)).all():
        reader_user = session.scalars(select(User).where(User.agency_id == declined_referral.receiver_agency_id)).first()
        shown = subjects.subjects_of(session, reader_user, declined_referral.id)
        assert shown and all(subject.identifiers for subject in shown), declined_referral.reference
    facts = _scenario_facts(session)
    session.close()
    _empty_all_tables(session.get_bind())
    operation_h.load_scenario(session, passwords, scale=0.01, seed=11, now=now)
    session.commit()
    assert _scenario_facts(session) == facts


def test_operation_h_places_the_real_figures_in_the_lead_country_whatever_the_seed():
    """At full scale the tip holds the real operation's 125 accounts of 71 holders in New
    Zealand, and the import places every one of them there, though some were seen from abroad."""
    from itertools import islice

    from app.demo import operation_h
    from app.services import countries
    from app.services.tips import jurisdiction

    for seed in (7, 2019, 0, 1, 2):  # the review's seed, the default, a few more
        evidence: dict[str, list] = {}  # holder (the prefix of its IPs) -> (hint, IP country) per account
        # The tip starts with the lead country's holders; one more row begins the next holder.
        for row in islice(operation_h.generate(1.0, seed), operation_h.LEAD_ACCOUNTS + 1):
            hint = row["country_hint"] and countries.lookup(row["country_hint"])
            evidence.setdefault(row["ip_addresses"].split("::")[0], []).append((hint, row["ip_country"]))
        lead = [jurisdiction.place(accounts) for accounts in list(evidence.values())[:-1]]
        assert len(lead) == operation_h.LEAD_HOLDERS, seed
        assert {placement.country for placement in lead} == {operation_h.LEAD_COUNTRY}, seed
        assert any(placement.needs_review for placement in lead), seed
        assert jurisdiction.place(list(evidence.values())[-1]).country != operation_h.LEAD_COUNTRY


# A small scenario dated just after a new year: the basic demo's referrals start in the old
# one, and neither is the year the tests run in.
SCENARIO_NOW = datetime(2025, 1, 20, tzinfo=timezone.utc)


def _small_scenario(any_app, session) -> None:
    from app.demo import operation_h

    operation_h.load_scenario(session, any_app.extensions["handoff_passwords"], scale=0.01, seed=4,
                              now=SCENARIO_NOW)
    session.commit()


def test_operation_h_numbers_each_referral_in_the_year_it_was_created(any_app, session):
    _small_scenario(any_app, session)
    created = session.execute(select(Referral.reference, Referral.created_at)).all()
    assert {at.year for _, at in created} == {2023, 2024, 2025}
    assert [(reference, at) for reference, at in created if not reference.startswith(f"HND-{at.year}-")] == []


def test_operation_h_passes_cases_on_to_the_international_body_or_a_desk_of_their_country(any_app, session):
    _small_scenario(any_app, session)
    onward = session.scalars(select(Referral).where(Referral.transferred_from_id.is_not(None))).all()
    assert len(onward) > 10
    elsewhere = [(r.reference, r.jurisdiction, r.receiver.name) for r in onward
                 if r.receiver.kind is not AgencyKind.INTERNATIONAL and r.receiver.country_code != r.jurisdiction]
    assert elsewhere == []


def test_operation_h_desk_phones_are_neither_a_suspects_nor_another_desks(any_app, session):
    import phonenumbers

    _small_scenario(any_app, session)
    desks = [phonenumbers.format_number(phonenumbers.parse(phone), phonenumbers.PhoneNumberFormat.E164)
             for phone in session.scalars(select(Agency.desk_phone))]
    suspects = set(session.scalars(select(Identifier.value).where(Identifier.kind == IdentifierKind.PHONE)))
    assert len(desks) > 100 and len(suspects) > 500
    assert len(set(desks)) == len(desks)
    assert set(desks) & suspects == set()


def test_operation_h_spreads_two_years_of_handoffs_and_works_its_hits(any_app, session):
    """Referrals go out in waves over the two years and are mostly acknowledged within the clock;
    decisions and outcomes follow over the months after, and at the end only a few recent
    referrals wait. The parties acknowledge their hits, and agree a lead on some."""
    from collections import Counter

    from app.demo import operation_h
    from app.models import HitStatus

    _small_scenario(any_app, session)
    now = SCENARIO_NOW
    start = now - timedelta(days=operation_h.SIMULATED_DAYS)

    def quarter(at: datetime) -> int:
        return int((at - start) / (now - start) * 8)

    operation = session.scalars(select(Operation).where(Operation.code == operation_h.OPERATION_CODE)).one()
    sent = session.scalars(select(Referral).where(Referral.operation_id == operation.id,
                                                  Referral.sent_at.is_not(None))).all()
    assert sorted({quarter(r.sent_at) for r in sent}) == list(range(8))
    for priority in (Priority.P2, Priority.P3, Priority.P4):  # P1 referrals go at once
        sends = Counter(quarter(r.sent_at) for r in sent if r.priority is priority)
        assert len(sends) >= 6 and max(sends.values()) < sum(sends.values()) / 2, (priority, sends)
    acknowledged = [r for r in sent if r.acknowledged_at]
    late = [r for r in acknowledged if r.acknowledged_at - r.sent_at > r.priority.acknowledge_within]
    assert 0 < len(late) < len(acknowledged) / 4
    waiting = [r for r in sent if r.status is Status.SENT]
    assert len(waiting) < len(sent) / 20 and all(r.sent_at > now - timedelta(days=60) for r in waiting)
    decisions = Counter(quarter(at) for r in sent if (at := r.accepted_at or r.declined_at or r.transferred_at))
    assert len(decisions) >= 6, decisions
    outcomes = session.execute(select(Outcome.recorded_at, Referral.accepted_at).join(Referral).where(
        Referral.operation_id == operation.id)).all()
    assert outcomes and all(accepted < recorded <= now for recorded, accepted in outcomes)

    hits = session.scalars(select(Hit)).all()
    assert sum(hit.status is not HitStatus.NEW for hit in hits) > len(hits) / 2
    assert any(hit.status is HitStatus.RESOLVED for hit in hits)
    for hit in hits:
        assert hit.status is not HitStatus.NEW or hit.created_at > now - timedelta(days=30)
        stamps = [at for at in (hit.acknowledged_low_at, hit.acknowledged_high_at) if at]
        assert all(hit.created_at < at <= now for at in stamps)
        if hit.status is HitStatus.RESOLVED:
            assert len(stamps) == 2 and max(stamps) < hit.resolved_at == hit.updated_at <= now
    told = session.execute(select(Notification.created_at, Hit.created_at).join(Hit, Hit.id == Notification.hit_id)).all()
    assert all(found <= at <= now for at, found in told)


def test_operation_h_desks_show_times_in_their_countrys_time_zone(any_app, session):
    from app.demo.time_zones import country_zones

    _small_scenario(any_app, session)
    desks = session.scalars(select(Agency).where(Agency.country_code.is_not(None))).all()
    assert len(desks) > 100
    assert [(a.name, a.timezone) for a in desks if a.timezone not in country_zones()[a.country_code]] == []
    partners = session.scalars(select(User).where(User.email.like("%@partners.example.org"))).all()
    assert len(partners) > 100 and [u.email for u in partners if u.display_timezone in ("UTC", None)] == []


def test_a_country_with_several_time_zones_gets_its_capitals():
    from app.demo.time_zones import time_zone

    assert [time_zone(code) for code in ("NZ", "US", "AU", "BR", "CA", "RU", "ES", "ID", "JP", "LI")] == [
        "Pacific/Auckland", "America/New_York", "Australia/Sydney", "America/Sao_Paulo", "America/Toronto",
        "Europe/Moscow", "Europe/Madrid", "Asia/Jakarta", "Asia/Tokyo", "Europe/Vaduz"]


def test_operation_h_dates_an_outcome_on_the_day_of_the_desk_that_recorded_it(any_app, session, monkeypatch):
    from zoneinfo import ZoneInfo

    from sqlalchemy import update

    from app.demo import operation_h

    simulate, kiritimati = operation_h.simulate, ZoneInfo("Pacific/Kiritimati")

    def far_east(session, *args, **kwargs):  # the desks' staff work 14 hours ahead of UTC
        session.execute(update(User).values(timezone=kiritimati.key))
        return simulate(session, *args, **kwargs)

    monkeypatch.setattr(operation_h, "simulate", far_east)
    _small_scenario(any_app, session)
    recorded = session.execute(select(Outcome.occurred_on, Outcome.recorded_at).join(Referral).join(Operation).where(
        Operation.code == operation_h.OPERATION_CODE)).all()
    assert any(at.date() != at.astimezone(kiritimati).date() for _, at in recorded)  # past 10:00 UTC
    assert [(day, at) for day, at in recorded if day != at.astimezone(kiritimati).date()] == []


def _committed_review_holder(pg_app):
    """A world with one holder on the review list, committed: (world, holder id, subject id)."""
    from tests.factories import build_world

    with pg_app.extensions["handoff_db"]["sessionmaker"]() as setup:
        world = build_world(setup, pg_app.extensions["handoff_passwords"])
        run_import(setup, world, tip(account(1, email="x@example.org", country_hint="AU", ip_country="NZ")))
        setup.commit()
        holder = holder_of(setup, world, "acc1")
        assert holder.needs_review
        return world, holder.id, holder.subject_id


def test_a_withdrawal_and_an_edit_of_a_draft_it_reroutes_into_do_not_deadlock(pg_app, monkeypatch):
    """PostgreSQL: withdrawing a sent package routes its holders onto a package draft someone is
    editing just then. The withdrawal takes its row locks before the audit chain's head, as an
    edit does: one waits for the other, neither is broken off."""
    import threading

    from tests.factories import build_world

    make_session = pg_app.extensions["handoff_db"]["sessionmaker"]
    with make_session() as setup:
        world = build_world(setup, pg_app.extensions["handoff_passwords"])
        _holder, sent = _sent_package(setup, world, datetime.now(timezone.utc))
        run_import(setup, world, tip(account(3, email="r@example.org", uploads_b="1")), file_name="b.csv")
        draft = _draft_of(setup, world, "acc3")
        setup.commit()
        sent_id, draft_id, lead_id = sent.id, draft.id, world.users["c_liaison"].id
    editing, release = threading.Event(), threading.Event()
    checked = referrals._keep_routing

    def held_after_locking_the_draft(session, referral, data):
        editing.set()
        release.wait(10)
        return checked(session, referral, data)

    monkeypatch.setattr(referrals, "_keep_routing", held_after_locking_the_draft)
    errors = []

    def run(step):
        def target():
            with make_session() as session:
                try:
                    step(session, Actor(session.get(User, lead_id), "127.0.0.1"))
                    session.commit()
                except Exception as exc:  # what the test reports
                    errors.append(repr(exc))
        thread = threading.Thread(target=target)
        thread.start()
        return thread

    def edit(session, actor):
        data = referrals.ReferralData.from_referral(session.get(Referral, draft_id))
        data.summary = "Edited by hand."
        referrals.update_draft(session, actor, draft_id, None, data)

    def withdraw(session, actor):
        referrals.transition(session, actor, sent_id, "withdraw", None, "Sent by mistake.")

    first = run(edit)
    assert editing.wait(10)
    second = run(withdraw)
    second.join(1.5)  # the withdrawal waits for the draft the edit holds
    release.set()
    first.join(30)
    second.join(30)
    assert errors == []
    with make_session() as check:
        assert check.get(Referral, sent_id).status is Status.WITHDRAWN
        assert check.get(Referral, draft_id).summary == "Edited by hand."


@pytest.mark.parametrize("step", ["acknowledge", "resolve"])
def test_a_withdrawal_that_matches_a_hit_being_acknowledged_does_not_deadlock(pg_app, monkeypatch, step):
    """PostgreSQL: Alpha acknowledges (or resolves) a hit on a draft while a withdrawal routes
    holders onto that draft and matches them, which updates the hit after writing its own audit
    entries: Alpha's step takes the audit chain before the hit, so one waits for the other."""
    import threading
    import time

    from tests.factories import build_world

    make_session = pg_app.extensions["handoff_db"]["sessionmaker"]
    with make_session() as setup:
        world = build_world(setup, pg_app.extensions["handoff_passwords"])
        known_to_alpha(setup, world, "e1@example.org\ne2@example.org")
        run_import(setup, world, tip(account(1, email="e2@example.org", uploads_a="1")))
        sent = referrals.transition(setup, world.actor("c_liaison"), _draft_of(setup, world, "acc1").id, "send", None)
        run_import(setup, world, tip(account(2, email="e1@example.org", uploads_a="1")), file_name="b.csv")
        draft = _draft_of(setup, world, "acc2")
        hit_id = setup.scalar(select(Hit.id).where((Hit.referral_low_id == draft.id) | (Hit.referral_high_id == draft.id)))
        setup.commit()
        sent_id, lead_id, alpha_id = sent.id, world.users["c_liaison"].id, world.users["a_liaison"].id
        alpha_agency = world.agencies["a"].id
    errors, holding = [], threading.Event()
    checked = deconfliction.require_worker

    def held_after_its_locks(actor, *message):
        if actor.user_id == alpha_id:
            holding.set()
            time.sleep(1.0)  # the withdrawal runs meanwhile
        return checked(actor, *message)

    monkeypatch.setattr(deconfliction, "require_worker", held_after_its_locks)

    def alpha_steps():
        with make_session() as session:
            try:
                alpha = Actor(session.get(User, alpha_id), "127.0.0.1")
                if step == "acknowledge":
                    deconfliction.acknowledge(session, alpha, hit_id, None)
                else:
                    deconfliction.resolve(session, alpha, hit_id, None, alpha_agency, "Alpha leads.")
                session.commit()
            except Exception as exc:  # what the test reports
                errors.append(repr(exc))

    def withdraw():
        with make_session() as session:
            try:
                referrals.transition(session, Actor(session.get(User, lead_id), "127.0.0.1"), sent_id, "withdraw",
                                     None, "Sent by mistake.")
                session.commit()
            except Exception as exc:
                errors.append(repr(exc))

    first = threading.Thread(target=alpha_steps)
    first.start()
    assert holding.wait(10)
    second = threading.Thread(target=withdraw)
    second.start()
    first.join(30)
    second.join(30)
    assert errors == []
    with make_session() as check:
        assert check.get(Referral, sent_id).status is Status.WITHDRAWN


def test_a_decision_while_an_import_writes_is_told_to_wait_not_deadlocked(pg_app):
    """PostgreSQL: an import holds its operation's row lock while it writes; a decision on one
    of its holders does not wait for it (nor lock the holder first, which deadlocked the import)."""
    make_session = pg_app.extensions["handoff_db"]["sessionmaker"]
    world, holder_id, subject_id = _committed_review_holder(pg_app)
    with make_session() as importing, make_session() as deciding:
        importing.execute(select(Operation.id).where(Operation.id == world.operation.id).with_for_update())
        lead = Actor(deciding.get(User, world.users["c_liaison"].id), "t")
        with pytest.raises(Conflict, match="holders are being changed just now"):
            holder_service.set_jurisdiction(deciding, lead, subject_id, "GB")
        deciding.rollback()
        importing.rollback()  # the import has ended
        deciding.execute(text("SET LOCAL lock_timeout = '7s'"))  # a setting of the role's, say
        holder_service.set_jurisdiction(deciding, lead, subject_id, "GB")
        assert deciding.scalar(text("SELECT current_setting('lock_timeout')")) == "7s"  # given back
        deciding.commit()
        assert deciding.get(Holder, holder_id).jurisdiction == "GB"


def test_two_people_deciding_on_two_holders_at_once_both_decide(pg_app):
    """PostgreSQL: the first decision holds the operation's lock until its request commits; a
    colleague's decision meanwhile waits for it, and is not told an import runs."""
    import threading

    make_session = pg_app.extensions["handoff_db"]["sessionmaker"]
    world, _holder_id, first = _committed_review_holder(pg_app)
    with make_session() as setup:
        run_import(setup, world, tip(account(2, email="y@example.org", country_hint="AU", ip_country="NZ")),
                   file_name="second.csv")
        setup.commit()
        second = holder_of(setup, world, "acc2").subject_id
    with make_session() as one, make_session() as two:
        holder_service.set_jurisdiction(one, Actor(one.get(User, world.users["c_liaison"].id), "t"), first, "GB")
        committed = threading.Timer(0.5, one.commit)  # the first request ends while the second waits
        committed.start()
        holder_service.set_jurisdiction(two, Actor(two.get(User, world.users["c_liaison"].id), "t"), second, "GB")
        two.commit()
        committed.join()


def test_a_directory_edit_while_an_import_writes_waits_for_it_without_deadlock(pg_app):
    """PostgreSQL: the edit locks the operations before it writes its audit entry; the import,
    which holds its operation and audits at the end, finishes first, then the edit reroutes."""
    import threading

    make_session = pg_app.extensions["handoff_db"]["sessionmaker"]
    world, _holder_id, _subject_id = _committed_review_holder(pg_app)
    errors: list[Exception] = []
    with make_session() as importing, make_session() as editing:
        importing.execute(select(Operation.id).where(Operation.id == world.operation.id).with_for_update())

        def edit():
            try:
                bravo = editing.get(Agency, world.agencies["b"].id)
                directory.update_agency(editing, Actor(editing.get(User, world.users["a_admin"].id), "t"), bravo.id,
                                        _agency_data(bravo, is_focal_point=False))
                editing.commit()
            except Exception as exc:  # noqa: BLE001 - the test reports it
                errors.append(exc)
                editing.rollback()

        thread = threading.Thread(target=edit)
        thread.start()
        thread.join(1.0)  # the edit waits for the operation's lock
        try:
            audit.record(importing, Actor(importing.get(User, world.users["c_liaison"].id), "t"), "tip.import",
                         "tip", 1)
            importing.commit()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
            importing.rollback()
        thread.join(30)
    assert errors == [] and not thread.is_alive()


def test_a_decision_made_while_an_import_runs_neither_fails_it_nor_is_lost(pg_app, monkeypatch):
    import threading


    make_session = pg_app.extensions["handoff_db"]["sessionmaker"]
    world, holder_id, subject_id = _committed_review_holder(pg_app)
    outcome: dict[str, object] = {}

    def decide():
        with make_session() as other:
            try:
                holder_service.set_jurisdiction(other, Actor(other.get(User, world.users["c_liaison"].id), "t"),
                                                subject_id, "GB")
                other.commit()
                outcome["decision"] = "ok"
            except Exception as exc:  # noqa: BLE001 - the test reports what happened
                other.rollback()
                outcome["decision"] = exc

    place = importer.jurisdiction.place
    thread = threading.Thread(target=decide)

    def place_while_a_person_decides(shape):  # the import holds the operation's lock by now
        if not thread.is_alive() and "decision" not in outcome:
            thread.start()
            thread.join(5)
        return place(shape)

    monkeypatch.setattr(importer.jurisdiction, "place", place_while_a_person_decides)
    with make_session() as importing:
        importer.import_tip(importing, Actor(importing.get(User, world.users["c_liaison"].id), "t"),
                            world.operation.id, tip(account(2, email="x@example.org", country_hint="AU",
                                                            ip_country="AU")), "later.csv")
        importing.commit()
    thread.join(30)
    assert isinstance(outcome["decision"], Conflict), outcome["decision"]


# --- the commands -------------------------------------------------------------------------------

def test_import_tip_command_reports_rows_and_writes_the_reject_file(app, web_world, tmp_path):
    runner = app.test_cli_runner()
    path = tmp_path / "tip.csv"
    path.write_bytes(tip(account(1, email="cli@example.org"), account(2, email="broken"), account(3)))
    refused = runner.invoke(args=["import-tip", str(path), "--operation", "lantern"])
    assert refused.exit_code != 0
    assert "line 3: email: not a valid e-mail address" in refused.output and "Nothing was imported" in refused.output
    nowhere = runner.invoke(args=["import-tip", str(path), "--operation", "LANTERN", "--skip-invalid",
                                  "--reject-file", str(tmp_path / "no-such-folder" / "rejects.csv")])
    assert nowhere.exit_code != 0 and "--reject-file" in nowhere.output and "cannot write a file" in nowhere.output
    with app.app_context():  # refused before anything was written
        from app.extensions import db

        assert db.session.scalar(select(func.count()).select_from(TipAccount)) == 0
    rejects = tmp_path / "rejects.csv"
    done = runner.invoke(args=["import-tip", str(path), "--operation", "LANTERN", "--skip-invalid",
                               "--reject-file", str(rejects), "--as", "liaison.c@example.org"])
    assert done.exit_code == 0, done.output
    assert "Validating rows" in done.output and "2 new accounts" in done.output and "1 rejected" in done.output
    assert rejects.read_bytes().startswith(b"\xef\xbb\xbf")  # a spreadsheet reads it as UTF-8
    assert [r["line"] for r in csv.DictReader(rejects.open(encoding="utf-8-sig"))] == ["3"]
    other = runner.invoke(args=["import-tip", str(path), "--operation", "LANTERN", "--as", "liaison.b@example.org"])
    assert other.exit_code != 0 and "is not of LANTERN's lead agency (Charlie Customs)" in other.output
    assert "No such operation" not in other.output  # the command has named it already
    itself = runner.invoke(args=["import-tip", str(path), "--operation", "LANTERN", "--skip-invalid",
                                 "--reject-file", str(path)])
    assert itself.exit_code != 0 and "is the tip itself" in itself.output
    assert path.read_bytes() == tip(account(1, email="cli@example.org"), account(2, email="broken"), account(3))
    missing = runner.invoke(args=["import-tip", str(path), "--operation", "NOPE"])
    assert missing.exit_code != 0 and "No operation" in missing.output
    with app.app_context():
        from app.extensions import db

        entries = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "tip.import")
                                     .order_by(AuditEntry.seq)).all()
        # The refusal (bad rows: nothing written, yet the attempt is on record), the import, then
        # the refusal of another agency's officer.
        assert [(e.outcome, e.user_id) for e in entries] == [("failure", None),
                                                             ("success", web_world.users["c_liaison"].id),
                                                             ("failure", web_world.users["b_liaison"].id)]
        assert json.loads(entries[0].detail) | {"reason": "-"} == {
            "operation": "LANTERN", "file": "tip.csv", "rows": 3, "problems": 1, "reason": "-"}
    extra = tmp_path / "extra.csv"
    extra.write_bytes(b"platform,account_id,E-mail\ninstagram,77,x@example.org\n")
    warned = runner.invoke(args=["import-tip", str(extra), "--operation", "LANTERN"])
    assert warned.exit_code == 0 and "Columns not read, as they are no tip field: E-mail." in warned.output


def test_the_reject_file_writes_over_nothing_but_an_earlier_reject_file(app, web_world, tmp_path):
    runner = app.test_cli_runner()
    path = tmp_path / "tip.csv"
    path.write_bytes(tip(account(1, email="cli@example.org"), account(2, email="broken")))
    database = tmp_path / "handoff.db"
    database.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    refused = runner.invoke(args=["import-tip", str(path), "--operation", "LANTERN", "--skip-invalid",
                                  "--reject-file", str(database)])
    assert refused.exit_code != 0 and "is neither empty nor a reject file" in refused.output
    assert database.read_bytes() == b"SQLite format 3\x00" + b"\x00" * 100
    rejects = tmp_path / "rejects.csv"
    rejects.touch()  # mktemp's, say
    done = runner.invoke(args=["import-tip", str(path), "--operation", "LANTERN", "--skip-invalid",
                               "--reject-file", str(rejects)])
    assert done.exit_code == 0, done.output
    assert [r["line"] for r in csv.DictReader(rejects.open(encoding="utf-8"))] == ["3"]
    # The next import has no bad row: the reject file says so, not the last one's rows.
    path.write_bytes(tip(account(3, email="three@example.org")))
    clean = runner.invoke(args=["import-tip", str(path), "--operation", "LANTERN", "--reject-file", str(rejects)])
    assert clean.exit_code == 0, clean.output
    assert list(csv.DictReader(rejects.open(encoding="utf-8"))) == []
    # A file refused whole leaves no reject file: none of the last one's rows look like its own.
    path.write_bytes(tip(account(4, email="broken"), account(5, username="data:image/png;base64,iVBO")))
    runner.invoke(args=["import-tip", str(path), "--operation", "LANTERN", "--reject-file", str(rejects)])
    assert not rejects.exists()


def test_skipping_bad_rows_when_every_row_is_bad_imports_nothing(app, web_world, tmp_path):
    path = tmp_path / "tip.csv"
    path.write_bytes(tip(account(1, email="broken"), account(2, uploads_a="-1")))
    result = app.test_cli_runner().invoke(args=["import-tip", str(path), "--operation", "LANTERN", "--skip-invalid"])
    assert result.exit_code != 0 and "Nothing was imported: all 2 rows are invalid" in result.output
    with app.app_context():
        from app.extensions import db

        assert db.session.scalar(select(func.count()).select_from(Tip)) == 0


def test_an_import_broken_off_on_the_command_line_is_on_the_audit_trail(app, web_world, tmp_path, monkeypatch):

    def broken(*_args, **_kwargs):
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(importer, "import_tip", broken)
    path = tmp_path / "tip.csv"
    path.write_bytes(tip(account(1)))
    result = app.test_cli_runner().invoke(args=["import-tip", str(path), "--operation", "LANTERN"])
    assert result.exit_code != 0 and isinstance(result.exception, RuntimeError)
    with app.app_context():
        from app.extensions import db

        entry = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "tip.import")).one()
        assert (entry.outcome, json.loads(entry.detail)["reason"]) == ("failure", "broke off")


def test_demo_command_loads_the_operation_h_scenario(app):
    result = app.test_cli_runner().invoke(args=["demo", "--scenario", "operation-h", "--scale", "0.01", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "Operation H scenario loaded (scale 0.01, seed 3)" in result.output
    assert "1,530 accounts" in result.output and "liaison.nz@handoff.example" in result.output


@pytest.mark.parametrize("scale", ["0", "-1", "11", "nan", "-nan", "inf"])
def test_demo_command_refuses_a_scale_out_of_range_or_not_a_number(app, scale):
    result = app.test_cli_runner().invoke(args=["demo", "--scenario", "operation-h", "--scale", scale])
    assert result.exit_code == 2 and "--scale" in result.output, result.output


def test_demo_command_refuses_a_negative_seed(app):
    """Python's random takes -7 for 7: a negative seed would give another seed's data."""
    result = app.test_cli_runner().invoke(args=["demo", "--scenario", "operation-h", "--scale", "0.01", "--seed", "-7"])
    assert result.exit_code == 2 and "--seed" in result.output, result.output


def test_demo_command_says_scale_and_seed_are_the_scenarios_only(app):
    result = app.test_cli_runner().invoke(args=["demo", "--scale", "0.5", "--seed", "3"])
    assert result.exit_code == 2 and "--scale and --seed only apply to --scenario operation-h" in result.output
    with app.app_context():
        from app.extensions import db

        assert db.session.scalar(select(func.count()).select_from(Agency)) == 0


def test_bulk_constants_are_stored_as_the_same_values_bound_in_every_row(session):
    """The import writes a column that holds one value in every row once, as a literal on
    SQLite: what lands must be exactly what binding it in each row stores."""
    from sqlalchemy import text

    from app.services.tips import bulk

    session.execute(text("CREATE TEMPORARY TABLE bulk_probe (n INTEGER, label TEXT, flag BOOLEAN, count BIGINT, "
                         "note TEXT)"))
    values = ("O'Brien's \"desk\" -- ; DROP", True, -2**63, None)
    connection = session.connection()
    bulk.write_raw(connection, "bulk_probe", ("n", "label", "flag", "count", "note"), [(1, *values)])
    bulk.write_raw(connection, "bulk_probe", ("n",), [(2,), (3,)],
                   constants=dict(zip(("label", "flag", "count", "note"), values)))
    stored = session.execute(text("SELECT n, label, flag, count, note FROM bulk_probe ORDER BY n")).all()
    assert [row[0] for row in stored] == [1, 2, 3]
    assert stored[1][1:] == stored[2][1:] == stored[0][1:]
    assert stored[0][1] == values[0] and stored[0][3] == -2**63 and stored[0][4] is None
    session.rollback()
