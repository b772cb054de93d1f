"""The pure steps of the tip pipeline: reading and validating rows, clustering accounts into
holders, placing holders in a jurisdiction, and the triage rule."""

from __future__ import annotations

import io
import json

import pytest

from app.models import Priority
from app.services.tips import clustering, jurisdiction, reader
from app.services.triage import RiskProfile, priority

HEADER = ",".join(reader.FIELDS)
SECRET = b"test match-key secret"


def _csv(*rows: str, bom: bool = False, crlf: bool = False) -> io.BytesIO:
    newline = "\r\n" if crlf else "\n"
    text = newline.join([HEADER, *rows]) + newline
    return io.BytesIO((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


GOOD = "instagram,1001,alice.w,alice@example.org,+64 21 555 0101,192.0.2.1;2001:db8::1,New Zealand,NZ,1,2,3,2020-01-05,2020-03-01T10:00:00Z"


@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("crlf", [False, True])
def test_reads_csv_with_or_without_bom_and_crlf(bom, crlf):
    result = reader.read(_csv(GOOD, bom=bom, crlf=crlf), "csv", SECRET)
    assert result.errors == [] and len(result.accounts) == 1
    account = result.accounts[0]
    assert account.platform == "instagram" and account.country_hint == "NZ"
    assert (account.uploads_a, account.uploads_b, account.uploads_c) == (1, 2, 3)
    assert [i[reader.I_KIND] for i in account.identifiers] == ["account_id", "username", "email", "phone", "ip", "ip"]
    assert account.phone == account.identifiers[3][reader.I_VALUE] == "+64215550101"
    assert account.identifiers[3][reader.I_RAW] == "+64 21 555 0101"
    assert account.last_seen.isoformat() == "2020-03-01T10:00:00+00:00"


def test_reads_json_lines_with_the_same_fields():
    record = dict(zip(reader.FIELDS, GOOD.split(",")))
    record["ip_addresses"] = ["192.0.2.1", "2001:db8::1"]
    record["uploads_a"] = 1
    result = reader.read(io.BytesIO((json.dumps(record) + "\n\n").encode()), "jsonl", SECRET)
    assert result.errors == [] and result.accounts[0].ips == ("192.0.2.1", "2001:db8::1")


@pytest.mark.parametrize("row, field, reason", [
    (",1002,,,,,,,,,,,", "platform", "missing"),
    ("myspace-ish,1002,,,,,,,,,,,", "platform", "unknown platform"),
    ("instagram,,,,,,,,,,,,", "account_id", "missing"),
    ("instagram,1002,,,,,Atlantis,,,,,,", "country_hint", "unknown country"),
    ("instagram,1002,,,,,,XX,,,,,", "ip_country", "unknown country code"),
    ("instagram,1002,,not-an-email,,,,,,,,,", "email", "e-mail"),
    ("instagram,1002,,,call me,,NZ,,,,,,", "phone", ""),
    ("instagram,1002,,,,999.1.1.1,,,,,,,", "ip_addresses", ""),
    ("instagram,1002,,,,,,,-1,,,,", "uploads_a", "negative"),
    ("instagram,1002,,,,,,,,two,,,", "uploads_b", "whole number"),
    ("instagram,1002,,,,,,,,,99999999999999999999,,", "uploads_c", "more than 1,000,000"),
    ("instagram,1002,,,,,,,,,,yesterday,", "first_seen", "ISO 8601"),
    ("instagram,1002,,,,,,,,,,2021-01-01,2020-01-01", "last_seen", "earlier"),
])
def test_every_bad_row_names_line_field_and_reason(row, field, reason):
    result = reader.read(_csv(GOOD, row), "csv", SECRET)
    assert len(result.accounts) == 1
    assert [(e.line, e.field) for e in result.errors] == [(3, field)]
    assert reason.lower() in result.errors[0].reason.lower()


def test_every_problem_of_a_row_is_reported_at_once():
    result = reader.read(_csv("instagram,1002,,bad@@x,,999.1.1.1,Atlantis,,-1,,,2020-99-01,"), "csv", SECRET)
    assert [(e.line, e.field) for e in result.errors] == [
        (2, "country_hint"), (2, "uploads_a"), (2, "first_seen"), (2, "email"), (2, "ip_addresses")]


def test_duplicate_account_in_the_file_is_reported():
    result = reader.read(_csv(GOOD, GOOD.replace("1001", " 1001 ")), "csv", SECRET)
    assert [(e.line, e.field) for e in result.errors] == [(3, "account_id")]
    assert "line 2" in result.errors[0].reason


def test_a_column_named_twice_is_reported():
    result = reader.read(io.BytesIO(b"platform,account_id,Email,email\ninstagram,1,a@example.org,b@example.org\n"),
                         "csv", SECRET)
    assert [(e.line, e.field, e.reason) for e in result.errors] == [(1, "email", "column named twice in the header")]
    assert result.accounts == []


def test_a_row_repeating_the_account_of_a_bad_row_is_a_duplicate_too():
    """Else --skip-invalid would import the second copy, and the first, corrected from the
    reject file, would then be skipped as known."""
    result = reader.read(_csv("instagram,X1,,bad-email,,,,,,,,,", "instagram,x1,,good@example.org,,,,,,,,,"),
                         "csv", SECRET)
    assert [(e.line, e.field) for e in result.errors] == [(2, "email"), (3, "account_id")]
    assert "duplicate of line 2" in result.errors[1].reason and result.accounts == []


def test_missing_header_column_is_reported():
    result = reader.read(io.BytesIO(b"username,email\nx,y@example.org\n"), "csv", SECRET)
    assert result.errors[0].field == "platform,account_id" and result.accounts == []


def test_bad_json_line_is_reported_and_the_rest_read():
    good = json.dumps(dict(zip(reader.FIELDS, GOOD.split(","))))
    result = reader.read(io.BytesIO(f"{good}\n{{broken\n[1,2]\n".encode()), "jsonl", SECRET)
    assert len(result.accounts) == 1 and [e.line for e in result.errors] == [2, 3]


@pytest.mark.parametrize("hint, ip_code, expected", [
    ("UK", "uk", ("GB", "GB")), ("Russia", "RU", ("RU", "RU")), ("turkey", "tr", ("TR", "TR")),
    ("Ivory  Coast", "", ("CI", None)), ("New Zealand", " nz ", ("NZ", "NZ")), ("Burma", "", ("MM", None)),
])
def test_countries_are_read_by_code_name_or_common_alias(hint, ip_code, expected):
    row = f"instagram,1002,,,,,{hint},{ip_code},,,,,"
    result = reader.read(_csv(row), "csv", SECRET)
    assert result.errors == []
    assert (result.accounts[0].country_hint, result.accounts[0].ip_country) == expected


@pytest.mark.parametrize("field, value, reason", [
    ("account_id", True, "a text, a number or null"),
    ("username", ["a", "b"], "a text, a number or null"),
    ("email", {"nested": {"x": 1}}, "a text, a number or null"),
    ("ip_addresses", ["192.0.2.1", 7], "a list of texts"),
])
def test_json_values_no_field_takes_are_reported_not_turned_into_text(field, value, reason):
    record = dict(zip(reader.FIELDS, GOOD.split(",")))
    record[field] = value
    result = reader.read(io.BytesIO(json.dumps(record).encode()), "jsonl", SECRET)
    assert result.accounts == []
    assert [(e.line, e.field) for e in result.errors] == [(1, field)]
    assert reason in result.errors[0].reason


def test_json_numbers_are_read_as_their_text():
    record = dict(zip(reader.FIELDS, GOOD.split(",")), account_id=2002, uploads_a=2.0, uploads_b=None)
    result = reader.read(io.BytesIO(json.dumps(record).encode()), "jsonl", SECRET)
    assert result.errors == []
    account = result.accounts[0]
    assert (account.account_id, account.uploads_a, account.uploads_b) == ("2002", 2, 0)


def test_column_names_are_matched_without_case_or_surrounding_spaces_and_unknown_ones_ignored():
    header = " Platform,ACCOUNT_ID, Email ,notes"
    data = f"{header}\ninstagram,1001,alice@example.org,{'x' * 3000}\n".encode()
    result = reader.read(io.BytesIO(data), "csv", SECRET)
    assert result.errors == []
    assert (result.accounts[0].account_key, result.accounts[0].email) == ("1001", "alice@example.org")


def test_a_record_spanning_lines_is_numbered_by_its_first_line():
    data = _csv('"instagram",1002,"two\nlines",,,,,,,,,,', GOOD, "instagram,1003,,,,,,,-1,,,,")
    result = reader.read(data, "csv", SECRET)
    assert [account.line for account in result.accounts] == [4]
    assert [(e.line, e.field) for e in result.errors] == [(2, "username"), (5, "uploads_a")]


def test_a_record_after_blank_lines_is_numbered_by_its_own_line():
    data = _csv(GOOD, "", "", "instagram,1003,,,,,,,-1,,,,", "", GOOD.replace("1001", "1004"))
    result = reader.read(data, "csv", SECRET)
    assert [(e.line, e.field) for e in result.errors] == [(5, "uploads_a")]
    assert [account.line for account in result.accounts] == [2, 7]


def test_a_row_the_csv_module_cannot_read_is_reported_and_the_rest_read():
    huge = "x" * 200_000  # beyond the csv module's field limit
    data = _csv(GOOD, f'instagram,1002,"{huge}",,,,,,,,,,', GOOD.replace("1001", "1003"))
    result = reader.read(data, "csv", SECRET)
    assert [(e.line, e.field) for e in result.errors] == [(3, "-")]
    assert "not readable as CSV" in result.errors[0].reason
    assert [account.account_id for account in result.accounts] == ["1001", "1003"]


def test_an_over_long_field_is_reported_and_the_row_keeps_its_account():
    """A later copy of the account is a duplicate: else --skip-invalid would import it, and the
    first row, corrected from the reject file, would be skipped as known."""
    long_name = "n" * 3000
    data = _csv(f"instagram,1002,{long_name},,,,,,,,,,", "instagram,1002,,,,,,,,,,,", "instagram,,,,,,,,,,,,")
    result = reader.read(data, "csv", SECRET)
    assert [(e.line, e.field) for e in result.errors] == [(2, "username"), (3, "account_id"), (4, "account_id")]
    assert "longer than 2000" in result.errors[0].reason and "duplicate of line 2" in result.errors[1].reason
    long_id = reader.read(_csv(f"instagram,{'9' * 3000},,,,,,,,,,,"), "csv", SECRET)
    assert [(e.field, e.reason) for e in long_id.errors] == [("account_id", "longer than 2000 characters")]


def test_a_national_phone_number_is_not_blamed_for_a_bad_country():
    result = reader.read(_csv("instagram,1002,,,021 555 0101,,Atlantis,,,,,,"), "csv", SECRET)
    assert [e.field for e in result.errors] == ["country_hint"]
    fixed = reader.read(_csv("instagram,1002,,,021 555 0101,,New Zealand,,,,,,"), "csv", SECRET)
    assert fixed.errors == [] and fixed.accounts[0].phone == "+64215550101"
    no_country = reader.read(_csv("instagram,1002,,,021 555 0101,,,,,,,,"), "csv", SECRET)
    assert [e.field for e in no_country.errors] == ["phone"]


def test_json_keys_that_are_no_field_are_ignored_whatever_they_hold_and_named():
    record = dict(zip(reader.FIELDS, GOOD.split(",")))
    record.update({"verified": True, "Meta": {"source": "x"}, "tags": ["a", 1]})
    result = reader.read(io.BytesIO(json.dumps(record).encode()), "jsonl", SECRET)
    assert result.errors == [] and len(result.accounts) == 1
    assert result.ignored_columns == ["verified", "Meta", "tags"]


def test_a_json_row_with_a_wrong_kind_value_reports_all_its_problems_and_keeps_its_account():
    record = dict(zip(reader.FIELDS, GOOD.split(",")), username=True, uploads_a=-1)
    again = dict(zip(reader.FIELDS, GOOD.split(",")))
    data = "\n".join(json.dumps(r) for r in (record, again)).encode()
    result = reader.read(io.BytesIO(data), "jsonl", SECRET)
    assert [(e.line, e.field) for e in result.errors] == [(1, "username"), (1, "uploads_a"), (2, "account_id")]
    assert "duplicate of line 1" in result.errors[2].reason and result.accounts == []


@pytest.mark.parametrize("second", ["Email", "email"])
def test_a_json_field_named_twice_in_a_record_is_refused(second):
    data = f'{{"platform": "instagram", "account_id": "1", "email": "a@example.org", "{second}": "b@example.org"}}'
    result = reader.read(io.BytesIO(data.encode()), "jsonl", SECRET)
    assert [(e.field, e.reason) for e in result.errors] == [("email", "named twice in this record")]


@pytest.mark.parametrize("field, value", [("account_id", '"\\ud800"'), ("username", '"a\\udfff"'),
                                          ("ip_addresses", '["\\ud800"]')])
def test_a_json_text_that_is_not_unicode_is_a_bad_value_not_a_crash(field, value):
    members = {"platform": '"instagram"', "account_id": '"1"', field: value, "n\\ud800": "1"}
    data = ("{" + ", ".join(f'"{name}": {text}' for name, text in members.items()) + "}").encode()
    result = reader.read(io.BytesIO(data), "jsonl", SECRET)
    assert [(e.field, e.reason) for e in result.errors] == [
        (field, "not valid Unicode (a lone surrogate escape such as \\ud800)")]
    assert result.ignored_columns == ["n\\ud800"]


def test_a_json_field_given_twice_is_reported_whatever_the_first_holds():
    data = b'{"platform": true, "platform": "instagram", "account_id": "1"}'
    result = reader.read(io.BytesIO(data), "jsonl", SECRET)
    assert [(e.field, e.reason) for e in result.errors] == [
        ("platform", "must be a text, a number or null"), ("platform", "named twice in this record")]


@pytest.mark.parametrize("line", [b'{"platform": "instagram", "account_id": ' + b"9" * 5000 + b"}", b"[" * 100_000])
def test_a_json_line_too_large_to_read_is_a_bad_row_and_the_rest_is_read(line):
    good = json.dumps(dict(zip(reader.FIELDS, GOOD.split(",")))).encode()
    result = reader.read(io.BytesIO(line + b"\n" + good + b"\n"), "jsonl", SECRET)
    assert [(e.line, e.field) for e in result.errors] == [(1, "-")] and len(result.accounts) == 1


def test_synthetic_phone_numbers_are_in_ranges_nobody_holds_and_the_reader_takes_them():
    import phonenumbers

    from app.demo import SHARED_IDENTIFIERS, operation_h

    data = operation_h.tip_csv(0.01, 5)
    result = reader.read(io.BytesIO(data), "csv", SECRET)
    assert result.errors == [] and len(result.accounts) == 1530
    drama = "+44 20 7946 0999"  # the UK's range for fiction, assignable otherwise
    numbers = {account.phone for account in result.accounts if account.phone} - {"+442079460999"}
    numbers |= {SHARED_IDENTIFIERS[1], operation_h.INTERNATIONAL_BODY[2]}
    assert len(numbers) > 500 and drama in operation_h.SHARED_NUMBERS
    for number in numbers:
        parsed = phonenumbers.parse(number)
        assert phonenumbers.is_possible_number(parsed) and not phonenumbers.is_valid_number(parsed), number


def test_each_country_has_a_free_range_of_its_own():
    import phonenumbers
    from phonenumbers import PhoneNumberType

    from app.demo import phones

    planned = [region for region in sorted(phonenumbers.SUPPORTED_REGIONS)
               if phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE) is not None]
    firsts = {region: phones.unassigned(region, 0) for region in planned}
    assert len(set(firsts.values())) == len(planned)  # +1, +7, +44 ... share a code, not a range
    assert min(phones.capacity(region) for region in planned) >= 1000
    with pytest.raises(ValueError):
        phones.unassigned("TK", phones.capacity("TK"))


def test_no_two_synthetic_holders_share_a_phone_number():
    from app.demo import operation_h

    holders_of: dict[str, set[str]] = {}
    for row in operation_h.generate(0.01, 5):
        if row["phone"] and row["phone"] not in operation_h.SHARED_NUMBERS and row["email"]:
            holders_of.setdefault(row["phone"], set()).add(row["email"].split(".")[0])
    assert holders_of and all(len(holders) == 1 for holders in holders_of.values())


# --- clustering --------------------------------------------------------------------------

def test_chains_of_shared_identifiers_make_one_holder():
    # 0-1 share an e-mail, 1-2 a phone, 2-3 a username: one holder; 4 is alone.
    keys = [{"e1"}, {"e1", "p1"}, {"p1", "u1"}, {"u1"}, {"e9"}]
    assert clustering.cluster(keys) == [0, 0, 0, 0, 4]


def test_common_identifiers_do_not_join_holders():
    keys = [{"shared-test-number", "e1"}, {"shared-test-number", "e2"}, {"e2"}]
    assert clustering.cluster(keys, common={"shared-test-number"}) == [0, 1, 1]
    assert clustering.cluster(keys) == [0, 0, 0]


def test_clustering_does_not_depend_on_order_beyond_labels():
    keys = [{"a"}, {"b"}, {"a", "b"}, {"c"}]
    labels = clustering.cluster(keys)
    assert labels[0] == labels[1] == labels[2] != labels[3]


# --- jurisdiction ------------------------------------------------------------------------

def test_agreeing_evidence_gives_full_confidence():
    placement = jurisdiction.place([("NZ", "NZ"), (None, "NZ")])
    assert (placement.country, placement.confidence, placement.needs_review) == ("NZ", 1.0, False)


def test_conflicting_evidence_is_weighed_and_listed_for_review():
    placement = jurisdiction.place([("AU", "NZ"), (None, "NZ"), (None, "NZ")])
    # AU: one hint (2); NZ: three IPs (3)
    assert placement.country == "NZ" and placement.confidence == 0.6 and placement.needs_review
    assert placement.evidence == {"AU": 2, "NZ": 3}


def test_ties_are_broken_the_same_way_every_time():
    assert jurisdiction.place([("GB", None), ("FR", None)]).country == "FR"
    assert jurisdiction.place([("FR", None), ("GB", None)]).country == "FR"


def test_no_evidence_means_no_jurisdiction_and_review():
    placement = jurisdiction.place([(None, None)])
    assert placement.country is None and placement.needs_review


# --- triage ------------------------------------------------------------------------------

@pytest.mark.parametrize("profile, expected", [
    (RiskProfile(plans_to_meet=True), Priority.P1),
    (RiskProfile(contact_offending=True), Priority.P1),
    (RiskProfile(access_to_children=True, grade_a=1), Priority.P1),
    (RiskProfile(access_to_children=True), Priority.P2),
    (RiskProfile(position_of_authority=True), Priority.P2),
    (RiskProfile(previous_convictions=True, grade_c=3), Priority.P2),
    (RiskProfile(grade_a=10), Priority.P2),
    (RiskProfile(grade_a=9), Priority.P3),
    (RiskProfile(grade_b=1), Priority.P3),
    (RiskProfile(grade_c=50), Priority.P3),
    (RiskProfile(grade_c=49), Priority.P4),
    (RiskProfile(), Priority.P4),
])
def test_triage_rule(profile, expected):
    assert priority(profile) is expected


def test_the_scenarios_summary_counts_in_words_that_agree_with_their_numbers():
    from app.demo.operation_h import ScenarioSummary

    report = ScenarioSummary(0.0001, 7, accounts=2, holders=1, holder_countries=1, lead_accounts=1, lead_holders=1,
                             unrouted_holders=0, unrouted_countries=0, hits=1, receiving_countries=12_000).report()
    assert "tip: 2 accounts, 1 account holder in 1 country (1 account, 1 holder in NZ)" in report
    assert "0 holders in 0 countries of the tip's without a focal point" in report
    assert "1 hit with" in report and "sent to 12,000 countries" in report
