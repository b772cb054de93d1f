"""Reading a tip's rows: a quote left open, phone numbers with their country code written in
other ways, and a file with no header; one reader and the chunked validation alike."""

from __future__ import annotations

import io
import random

import pytest

from app.services.tips import reader, validation

HEADER = "platform,account_id,username,email"


def good_rows(first: int, last: int) -> list[str]:
    return [f"instagram,UQ{n},user_uq_{n}_padding_padding_padding,uq{n}@example.org" for n in range(first, last + 1)]


def read_both(data: bytes, chunk_bytes: int, monkeypatch) -> reader.ReadResult:
    """What one reader and the chunked validation make of a file, which must be the same."""
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    single = reader.read(io.BytesIO(data), "csv", b"k")
    chunked = validation.validate(data, "csv", b"k", workers=1, chunk_bytes=chunk_bytes)
    assert [(e.line, e.field, e.reason) for e in chunked.errors] == [(e.line, e.field, e.reason) for e in single.errors]
    assert [tuple(a) for a in chunked.accounts] == [tuple(a) for a in single.accounts]
    assert chunked.rows == single.rows
    return single


@pytest.mark.parametrize("rows_after, ending", [
    (2500, "not closed on it"),  # the csv module gives up at its field limit, 1,800 lines on
    (30, "never closed"),  # the end of the file comes first
], ids=["field limit", "end of file"])
def test_a_quote_never_closed_is_a_bad_row_of_its_line_alone(monkeypatch, rows_after, ending):
    data = "\n".join([HEADER, 'instagram,UQ0,"oops,uq0@example.org', *good_rows(1, rows_after)]) + "\n"
    single = read_both(data.encode(), 20_000, monkeypatch)
    assert [(e.line, e.field) for e in single.errors] == [(2, reader.WHOLE_RECORD)]
    assert ending in single.errors[0].reason and "the lines after it are read as rows of their own" in \
        single.errors[0].reason
    assert single.rows == rows_after + 1
    assert [a.line for a in single.accounts] == list(range(3, rows_after + 3))


def test_a_quote_left_open_that_a_later_one_breaks_off_gives_the_lines_between_back(monkeypatch):
    """The quote opened on line 3 runs to the one opening line 8's value, where the csv module
    gives up: lines 4 to 8 are rows of their own, line 8's quoted value read as written."""
    lines = [HEADER, *good_rows(1, 1), 'instagram,UQ2,"John Smith,uq2@example.org', *good_rows(3, 6),
             'instagram,UQ7,"Smith, John",uq7@example.org', *good_rows(8, 9)]
    data = ("\n".join(lines) + "\n").encode()
    single = read_both(data, 40, monkeypatch)
    assert [(e.line, e.field) for e in single.errors] == [(3, reader.WHOLE_RECORD)]
    assert [a.line for a in single.accounts] == [2, *range(4, 11)]
    assert single.accounts[5].username == "smith, john"


def test_a_quote_left_open_that_a_stray_one_closes_says_how_many_lines_it_swallowed(monkeypatch):
    """The csv module reads that record whole: its value holds the lines between, and says so."""
    lines = [HEADER, 'instagram,UQ0,"oops,uq0@example.org', *good_rows(1, 3), 'instagram,UQ4,brien",uq4@example.org',
             *good_rows(5, 6)]
    single = read_both(("\n".join(lines) + "\n").encode(), 30, monkeypatch)
    assert [(e.line, e.field, e.reason) for e in single.errors] == [
        (2, "username", "a quote opened on this line is closed only 4 lines later: the lines in between were read "
                        "as this value")]
    assert [a.line for a in single.accounts] == [7, 8]


def test_a_quote_closed_on_the_next_line_says_one_line(monkeypatch):
    lines = [HEADER, 'instagram,UQ0,"multi', 'line",uq0@example.org', *good_rows(1, 2)]
    single = read_both(("\n".join(lines) + "\n").encode(), 30, monkeypatch)
    assert [(e.line, e.field, e.reason) for e in single.errors] == [
        (2, "username", "a quote opened on this line is closed only 1 line later: the lines in between were read "
                        "as this value")]


def test_chunked_validation_agrees_with_one_reader_around_quotes_left_open(monkeypatch):
    """Random files of good rows, quotes opened and never closed, quotes that close them or
    break them off, and line breaks in a column no tip field reads, cut into random chunks."""
    rng = random.Random(20261207)
    pieces = ['instagram,{n},"open,o{n}@example.org', 'instagram,{n},u{n},"e{n}@example.org"',
              'instagram,{n},o"brien,x@example.org', 'instagram,{n},brien",x@example.org', "",
              'instagram,{n},u{n},,"a note\nover lines"', "instagram,{n},u{n},{n}@example.org"]
    for _case in range(200):
        rows = [HEADER + ",notes"] + [rng.choice(pieces).format(n=n) for n in range(rng.randint(1, 25))]
        data = "".join(row + rng.choice(["\n", "\r\n", "\r"]) for row in rows).encode()
        read_both(data, rng.randint(1, 60), monkeypatch)


@pytest.mark.parametrize("phone", ["(+64) 21 555 0101", "\uff0b64 21 555 0101", "\u202a+64 21 555 0101\u202c",
                                   "tel:+64-21-555-0101", "0064 21 555 0101", "tel:21-555-0101;phone-context=+64"])
def test_a_phone_number_with_its_country_code_needs_no_country(phone):
    data = f"platform,account_id,phone\ninstagram,1,{phone}\n".encode()
    result = reader.read(io.BytesIO(data), "csv", b"k")
    assert result.errors == [] and [a.phone for a in result.accounts] == ["+64215550101"]


@pytest.mark.parametrize("phone", ["021 555 0101", "(021) 555 0101", "\u202a021 555 0101\u202c"])
def test_a_national_phone_number_without_a_country_is_told_what_to_add(phone):
    data = f"platform,account_id,phone\ninstagram,1,{phone}\n".encode()
    result = reader.read(io.BytesIO(data), "csv", b"k")
    assert [str(e) for e in result.errors] == [
        "line 2: phone: no country code: write it with +<country code>, or give the row's country_hint"]


@pytest.mark.parametrize("data", [b",,,\n,,,\n", b"\n,,\r\n \n", b"\xef\xbb\xbf,,,"])
def test_a_file_of_empty_rows_has_no_header_on_its_first_line(monkeypatch, data):
    monkeypatch.setattr(validation, "PARALLEL_MIN_BYTES", 0)
    for result in (reader.read(io.BytesIO(data), "csv", b"k"), validation.validate(data, "csv", b"k", workers=2)):
        assert [str(e) for e in result.errors] == [
            "line 1: -: no header: the file holds only empty rows, and a tip's first row names its columns "
            "(platform and account_id at least)"]


def test_a_quoted_value_may_span_at_most_a_hundred_lines(monkeypatch):
    """A value of a column the import does not read may hold line breaks, up to a hundred lines:
    past that it is a quote left open, and the lines after its first are read as rows. (Every
    line of a file of quotes left open would otherwise be read again to the file's end.)"""
    header = HEADER + ",notes"

    def tip_with_note(lines: int) -> bytes:
        note = "\n".join(f"note line {n}" for n in range(lines))
        return "\n".join([header, f'instagram,UQ0,user0,uq0@example.org,"{note}"', *good_rows(1, 3)]).encode() + b"\n"

    fits = read_both(tip_with_note(reader.RECORD_LINES_MAX), 100, monkeypatch)
    assert (fits.errors, len(fits.accounts)) == ([], 4)
    too_long = read_both(tip_with_note(reader.RECORD_LINES_MAX + 1), 100, monkeypatch)
    assert [(e.line, e.field) for e in too_long.errors][:1] == [(2, reader.WHOLE_RECORD)]
    assert "the lines after it are read as rows of their own" in too_long.errors[0].reason
    assert [a.account_id for a in too_long.accounts][-3:] == ["UQ1", "UQ2", "UQ3"]
