"""Reading and validating a tip file (CSV or JSON Lines; docs/tip-format.md).

Every row is checked and every problem reported with its line, field and reason; the
importer writes nothing unless all rows are good (or the caller skips the bad ones). A good
row becomes an `Account`: its canonical values and its identifiers, each with its match key.
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import IO, NamedTuple

from app.services import countries
from app.services.exports import restore_cell
from app.services.identifiers import PLATFORMS, IdentifierKind, InvalidIdentifier, match_key, normalise

FIELDS = ("platform", "account_id", "username", "email", "phone", "ip_addresses", "country_hint",
          "ip_country", "uploads_a", "uploads_b", "uploads_c", "first_seen", "last_seen")
MAX_FIELD = 2000
# A count above this is a mistake in the file. (A holder's or a package's sums of counts are
# 64-bit columns: 2,148 accounts at this count pass 2^31.)
MAX_COUNT = 1_000_000

# An identifier of an account: a plain tuple (kind value, platform, raw, value, match key), the
# columns of an identifier row in their order. Raw is the value itself (the same object, which
# pickle carries once) when the two are equal. Plain tuples cross process boundaries five times
# faster than named ones.
Ident = tuple[str, str | None, str, str, str]
I_KIND, I_PLATFORM, I_RAW, I_VALUE, I_KEY = range(5)


@dataclass
class RowError:
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


class Account(NamedTuple):
    """A good row."""

    line: int
    platform: str
    account_id: str  # as given
    account_key: str  # canonical
    username: str | None  # canonical forms
    email: str | None
    phone: str | None
    ips: tuple[str, ...]
    country_hint: str | None
    ip_country: str | None
    uploads_a: int
    uploads_b: int
    uploads_c: int
    first_seen: datetime | None
    last_seen: datetime | None
    identifiers: tuple[Ident, ...]  # the account id, username, e-mail, phone, then the IPs

    @property
    def natural_key(self) -> tuple[str, str]:
        return self.platform, self.account_key


@dataclass
class ReadResult:
    accounts: list[Account]
    errors: list[RowError]
    rows: int
    # (line, natural key) of each bad row whose platform and account id are good: a later row
    # of the same account is a duplicate all the same.
    bad_keys: list[tuple[int, tuple[str, str]]]
    # Columns (JSON keys) of the file that are no tip field, as written, in the order first met.
    ignored_columns: list[str]


# The field of a problem that makes a whole record unreadable.
WHOLE_RECORD = "-"
# The columns a reject file adds after the tip's (files.reject_csv): read again, corrected, they
# are neither read nor named as unknown columns.
REJECT_COLUMNS = ("line", "field", "reason")
_NO_PROBLEMS: tuple[RowError, ...] = ()

# An image, video or audio file carried inside a text file, as a data: URL (a provider's
# thumbnail, say). files.check_content looks for it in the bytes; a JSON Lines value can spell
# it with escapes (\u0064ata:, image\/png) that only reading the JSON undoes.
MEDIA_URL = r"data:\s*(?:image|video|audio)/[\w.+-]+\s*[;,]"
_MEDIA_URL_TEXT = re.compile(r"(?<![A-Za-z0-9_-])" + MEDIA_URL, re.IGNORECASE)


class MediaInTip(Exception):
    """A JSON Lines value is a data: URL of an image, video or audio file once its escapes are
    read: the whole file is refused (files.media_refusal), as for one in its bytes."""

    def __init__(self, line: int):
        super().__init__(line)
        self.line = line


def _holds_media_url(record: object) -> bool:
    """Whether any text of a JSON value, at any depth, keys too, is a data: URL of a medium."""
    pending: list = [record]
    while pending:  # without recursing: an object may nest as deep as JSON lets it
        value = pending.pop()
        if isinstance(value, str):
            if _MEDIA_URL_TEXT.search(value):
                return True
        elif isinstance(value, dict):
            pending.extend(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def detect_format(name: str, head: bytes) -> str:
    lowered = name.lower()
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lowered.endswith(".csv"):
        return "csv"
    stripped = head.lstrip(codecs.BOM_UTF8).lstrip()
    return "jsonl" if stripped.startswith(b"{") else "csv"


def csv_rows(lines: Iterable[str]):
    """The csv module's reader as every reading of a tip's CSV uses it: strict, so that a
    quote inside a quoted value that is not doubled, or a quote never closed, is an error
    (`_unreadable`) instead of a value quietly read otherwise than written."""
    return csv.reader(lines, strict=True)


# The most lines one record may span (no tip field holds a line break; a column the import
# does not read may).
RECORD_LINES_MAX = 100


RECORD_TOO_LONG = (f"a quote opened on this line is not closed on it, nor in the {RECORD_LINES_MAX - 1} lines after "
                   "it (no tip field holds a line break)")


class RecordLines:
    """The lines of a CSV text for the csv module, those of the record being read kept, so
    that a record it cannot read can be its first line alone: a quote left open there ran
    into the lines after it, which are then read again as rows of their own instead of lost
    with it (up to the csv module's field limit, thousands of good rows)."""

    def __init__(self, lines: Iterable[str]):
        self._lines = iter(lines)
        self._again: list[str] = []  # lines to read again, the next one last
        self._record: list[str] = []  # the lines of the record being read

    def __iter__(self) -> RecordLines:
        return self

    def __next__(self) -> str:
        if len(self._record) == RECORD_LINES_MAX:
            # A quote left open reads no further: otherwise every line of a file of such lines
            # would be read again to its end, and reading it would take the square of its length.
            raise csv.Error(RECORD_TOO_LONG)
        line = self._again.pop() if self._again else next(self._lines)
        self._record.append(line)
        return line

    def end_record(self) -> int:
        """The record read is done: how many lines it took."""
        taken = len(self._record)
        self._record.clear()
        return taken

    def end_unreadable_record(self) -> int:
        """The record read is its first line alone: the lines after it are read again. How
        many they are."""
        after = self._record[1:]
        self._again.extend(reversed(after))
        self._record.clear()
        return len(after)

    @property
    def reading_again(self) -> bool:
        """Whether lines an unreadable record ran into are still to be read again."""
        return bool(self._again)


# A CSV of empty rows only (blank lines, or separators: a spreadsheet's empty sheet).
NO_HEADER = ("no header: the file holds only empty rows, and a tip's first row names its columns "
             "(platform and account_id at least)")

# What a person does about a header a spreadsheet saved with another separator.
_SAVE_WITH_COMMAS = "in a spreadsheet, save as CSV UTF-8, comma delimited"

# What the csv module's errors mean to the person who wrote the file.
_CSV_ERRORS = {
    "',' expected after '\"'": "a quote inside a quoted value is written twice (\"\"), and a quoted value ends "
                                "where its closing quote is followed by a comma",
    "unexpected end of data": "a quote opened on this line is never closed",
}


def _unreadable(exc: csv.Error, lines_after: int) -> str:
    """Why a record is unreadable; `lines_after`: how many lines after its first the csv module
    read into it before giving up (a quote left open), which are read again."""
    if not lines_after:
        return f"not readable as CSV: {_CSV_ERRORS.get(str(exc), str(exc))}"
    if str(exc) == RECORD_TOO_LONG:
        return f"not readable as CSV: {RECORD_TOO_LONG}; the lines after it are read as rows of their own"
    closed = "is never closed" if str(exc) == "unexpected end of data" else "is not closed on it"
    return (f"not readable as CSV: a quote opened on this line {closed} (no tip field holds a line break); "
            "the lines after it are read as rows of their own")


def _header_unreadable(exc: csv.Error) -> str:
    if str(exc) == "',' expected after '\"'":  # `"platform";"account_id"`, or `{"platform":"discord"}`
        return ("the header is not readable as CSV: a quoted name is followed by something other than a comma. "
                f"A header separated by semicolons reads so ({_SAVE_WITH_COMMAS}), and so does JSON Lines "
                "named .csv (name it .jsonl)")
    return f"the header is not readable as CSV ({_CSV_ERRORS.get(str(exc), str(exc))})"


def _missing_columns(line: int, header: list[str], missing: list[str]) -> RowError:
    """The header names no platform or account_id: said as a person can act on it when a
    spreadsheet saved the CSV with semicolons or tabs, or a JSON Lines file is named .csv."""
    written = ",".join(header)
    if written.lstrip().startswith("{"):
        return RowError(line, WHOLE_RECORD, "the file looks like JSON Lines, not CSV: name it .jsonl")
    for separator, name in ((";", "semicolons"), ("\t", "tabs")):
        if separator in written:
            return RowError(line, WHOLE_RECORD, f"the header's columns are separated by {name}; a tip's CSV "
                                                f"separates them with commas ({_SAVE_WITH_COMMAS})")
    return RowError(line, ",".join(missing), "missing column in the header")


def csv_named_jsonl(body: bytes) -> RowError | None:
    """A JSON Lines file's first line that is a tip CSV's header (a CSV named .jsonl): said as
    a person can act on it, instead of every line being no JSON."""
    lines = body[:65_536].splitlines()  # a header is far shorter; the file may be 100 MB
    number, first = next(((n, line) for n, line in enumerate(lines, start=1) if line.strip()), (1, b""))
    text = first.decode("utf-8", errors="replace")
    if text.lstrip().startswith("{"):
        return None
    try:
        names = {column_key(name) for name in next(csv_rows([text]), [])}
    except csv.Error:
        return None
    if {"platform", "account_id"} <= names:
        return RowError(number, WHOLE_RECORD, "the file looks like CSV, not JSON Lines: name it .csv")
    return None


Records = Iterator[tuple[int, dict[str, str], "list[RowError] | tuple[RowError, ...]"]]


def _records(stream: IO[bytes], fmt: str, ignored: dict[str, None] | None = None, *, bom: bool = True) -> Records:
    """(line, record, problems) for each record of the file: the record's fields as text, keyed
    as `record_keys` says, and what makes the record (field `WHOLE_RECORD`) or some of its fields
    unreadable; the record then holds what could be read, for the reject file. A record is
    numbered by the line it starts on (a quoted CSV field may hold line breaks). Columns that
    are no tip field are added to `ignored`. `bom`: the stream is a whole file, which may start
    with a byte-order mark (a chunk cut from a file's middle starts with a line of it)."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig" if bom else "utf-8", newline="")
    if fmt == "jsonl":
        yield from _json_records(text, {} if ignored is None else ignored)
        return
    lines = RecordLines(text)
    rows = csv_rows(lines)
    line = 1  # the header's: blank lines before it are no header
    try:
        for header in rows:
            if not blank_row(header):
                break
            line += lines.end_record()
        else:
            yield 1, {}, [RowError(1, WHOLE_RECORD, NO_HEADER)]
            return
    except csv.Error as exc:
        yield line, {}, [RowError(line, WHOLE_RECORD, _header_unreadable(exc))]
        return
    keys = record_keys(header)
    missing = [f for f in ("platform", "account_id") if f not in keys]
    if missing:
        yield line, {}, [_missing_columns(line, header, missing)]
        return
    twice = sorted({key for key in keys if key in FIELDS and keys.count(key) > 1})
    if twice:
        yield line, {}, [RowError(line, ",".join(twice), "column named twice in the header")]
        return
    if ignored is not None:
        added = tuple(name.strip().lower() for name in header[-len(REJECT_COLUMNS):]) == REJECT_COLUMNS
        own = len(header) - len(REJECT_COLUMNS) if added else None
        ignored.update((name, None) for name, key in zip(header[:own], keys[:own]) if key not in FIELDS and name.strip())
    width = len(keys)
    # Unnamed columns after the last named one (a header ending in a comma): a value there is
    # one too many, as past the header. (An unnamed column before, a spreadsheet's or pandas'
    # row index, is one more column the import does not read.)
    unnamed = range(max(index for index, name in enumerate(header) if name.strip()) + 1, width)
    start = line + lines.end_record()
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:  # the next record starts on the next line, whatever the csv module read
            yield start, {}, [RowError(start, WHOLE_RECORD, _unreadable(exc, lines.end_unreadable_record()))]
            start += 1
            continue
        taken = lines.end_record()
        if not blank_row(row):  # a blank line, or one of separators only, is no record
            if "'" in "".join(row):
                row = list(map(restore_cell, row))
            problems = _NO_PROBLEMS
            if len(row) < width:
                row += [""] * (width - len(row))  # a short row's missing fields read as empty
            elif len(row) > width and any(cell.strip() for cell in row[width:]):
                # An unquoted comma ("1,500") would shift a value into the next column.
                problems = [RowError(start, WHOLE_RECORD, f"{len(row)} fields where the header names {width} "
                                                          f"(a value with a comma in it is written in quotes): "
                                                          f"{_as_read(row)}")]
            if unnamed and any(row[index].strip() for index in unnamed) and not problems:
                problems = [RowError(start, WHOLE_RECORD, "a value past the header's last named column "
                                                          f"(a value with a comma in it is written in quotes): "
                                                          f"{_as_read(row)}")]
            record = dict(zip(keys, row))
            if taken > 1 and not problems:
                # No tip field holds a line break: a quote left open swallowed the lines after it.
                later = "1 line" if taken == 2 else f"{taken - 1:,} lines"
                problems = [RowError(start, key, f"a quote opened on this line is closed only {later} later: "
                                                 "the lines in between were read as this value")
                            for key in FIELDS if "\n" in record.get(key, "") or "\r" in record.get(key, "")]
                problems = problems or _NO_PROBLEMS
            yield start, record, problems
        start += taken


def _as_read(row: list[str], limit: int = 1000) -> str:
    """A row whose fields do not line up with the header, as the reader split it, for its
    problem: the reject file cannot put its values under their columns."""
    text = " | ".join(row)
    return text if len(text) <= limit else text[:limit] + "…"


def line_ends(data: bytes, start: int = 0, end: int | None = None) -> int:
    """Line ends as the reader counts them: LF, CRLF, and a lone CR."""
    end = len(data) if end is None else end
    return data.count(b"\n", start, end) + data.count(b"\r", start, end) - data.count(b"\r\n", start, end)


def blank_row(row: list[str]) -> bool:
    """A row with nothing in it: no fields, or empty ones (a spreadsheet's empty row, ",,,")."""
    return not any(cell.strip() for cell in row)


def _json_records(text: IO[str], ignored: dict[str, None]) -> Records:
    for number, line in enumerate(text, start=1):
        if not line.strip():
            continue
        try:
            # Numbers as decimals: an id written as a number must not lose digits to a float.
            record = json.loads(line, object_pairs_hook=_JSONObject.of, parse_float=Decimal,
                                parse_constant=_no_json_number)
        except json.JSONDecodeError as exc:
            yield number, {}, [RowError(number, WHOLE_RECORD, f"not valid JSON ({exc.msg})")]
            continue
        except _NoJSONNumber as exc:
            yield number, {}, [RowError(number, WHOLE_RECORD, f"not valid JSON ({exc} is no JSON number)")]
            continue
        except (ValueError, RecursionError, ArithmeticError):  # over 4,300 digits; nesting too deep; 1e99999999999999999999
            yield number, {}, [RowError(number, WHOLE_RECORD,
                                        "not valid JSON (a value too large, or nested too deeply, to read)")]
            continue
        if "\\" in line and _holds_media_url(record):  # without an escape the bytes were checked
            raise MediaInTip(number)
        if not isinstance(record, dict):
            yield number, {}, [RowError(number, WHOLE_RECORD, "each line must be a JSON object")]
            continue
        fields: dict[str, str] = {}
        problems: list[RowError] = []
        twice: set[str] = set()
        for name, value in record.pairs:
            key = column_key(name)
            if key not in FIELDS:
                ignored.setdefault(name if _text_problem(name) is None else json.dumps(name)[1:-1])
                continue
            if key in fields:
                if key not in twice:
                    twice.add(key)
                    problems.append(RowError(number, key, "named twice in this record"))
                continue
            fields[key], problem = _json_text(key, value)
            if problem:
                problems.append(RowError(number, key, problem))
        yield number, fields, problems or _NO_PROBLEMS


class _JSONObject(dict):
    """A JSON object that keeps its pairs as written: a key given twice is the file's mistake,
    not the last value's win."""

    pairs: list[tuple[str, object]]

    @classmethod
    def of(cls, pairs: list[tuple[str, object]]) -> _JSONObject:
        obj = cls(pairs)
        obj.pairs = pairs
        return obj


def column_key(name: str) -> str:
    """A column's name as the reader matches it: ` Account_ID` is `account_id`."""
    return name.strip().lower()


def record_keys(columns: list[str]) -> list[str]:
    """The key of each CSV column in a record: a tip field's `column_key`; any other column's
    name as written, made unique by its position when repeated, so that the reject file gives
    every column back as it was."""
    keys: list[str] = []
    for position, name in enumerate(columns):
        key = column_key(name)
        if key not in FIELDS:
            key = name if name not in keys else f"{name}\x00{position}"
        keys.append(key)
    return keys


NOT_UNICODE = "not valid Unicode (a lone surrogate escape such as \\ud800)"
CONTROL_CHARACTER = "holds a control character (an escape such as \\u0000), which no text field may hold"
# Control characters a text tip never holds (tab, LF, CR and form feed are fine): a file
# holding one as a byte is refused (app/services/tips/files.py); JSON's \uXXXX escapes could
# still put one in a value.
CONTROL_CHARACTERS = "".join(chr(code) for code in [*range(32), 127] if code not in (9, 10, 12, 13))
_CONTROL = re.compile(f"[{re.escape(CONTROL_CHARACTERS)}]")


class _NoJSONNumber(ValueError):
    """NaN or Infinity, which Python's json reads and JSON has not."""


def _no_json_number(name: str):
    raise _NoJSONNumber(name)


def _json_text(name: str, value) -> tuple[str, str | None]:
    """A JSON value as the text a CSV cell would hold, and why no field takes it, if none does:
    true, an object, a list other than of addresses, a text that is not Unicode (the text is
    then the value's JSON, for the reject file)."""
    if value is None:
        return "", None
    if isinstance(value, str):
        problem = _text_problem(value)
        return (json.dumps(value), problem) if problem else (value, None)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), None
    if isinstance(value, Decimal):  # exact: 12345678901234567890.0 is that whole number
        if value.adjusted() >= MAX_FIELD:
            return str(value), f"a number of more than {MAX_FIELD} digits"
        return (str(int(value)) if value == value.to_integral_value() else str(value)), None
    if name == "ip_addresses" and isinstance(value, list) and all(isinstance(item, str) for item in value):
        problem = next(filter(None, map(_text_problem, value)), None)
        return (json.dumps(value), problem) if problem else (";".join(value), None)
    return json.dumps(value), ("must be a list of texts, a text or null" if name == "ip_addresses"
                               else "must be a text, a number or null")


def _text_problem(text: str) -> str | None:
    """Why a JSON text cannot be a field's value, if it cannot: JSON's \\uXXXX escapes can
    make text that no tip file holds as bytes, and that a database refuses (PostgreSQL: NUL)."""
    if _CONTROL.search(text):
        return CONTROL_CHARACTER
    return None if _is_unicode(text) else NOT_UNICODE


def _is_unicode(text: str) -> bool:
    """False for a text holding a lone surrogate, which no UTF-8 file, database or page can hold."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read(stream: IO[bytes], fmt: str, secret: bytes, *, line_offset: int = 0, duplicates: bool = True,
         bom: bool = True) -> ReadResult:
    """Parse and validate every row, computing match keys under `secret`; lines are reported
    `line_offset` further on (the stream being a chunk of a larger file, `bom` off). A good row
    whose account came earlier is an error, unless `duplicates` is off (a chunk's caller checks
    across chunks). Raises UnicodeDecodeError for a file that is not UTF-8, MediaInTip for one
    carrying an image."""
    accounts: list[Account] = []
    errors: list[RowError] = []
    bad_keys: list[tuple[int, tuple[str, str]]] = []
    ignored: dict[str, None] = {}
    seen: dict[tuple[str, str], int] = {}
    rows = 0
    checker = _RowChecker(secret)
    records = _records(stream, fmt, ignored, bom=bom)
    while True:
        try:
            number, record, problems = next(records)
        except StopIteration:
            break
        except MediaInTip as found:
            raise MediaInTip(found.line + line_offset) from None
        rows += 1
        number += line_offset
        for problem in problems:
            problem.line = number
        if problems and not record:  # nothing of it could be read (or the header is bad)
            errors.extend(problems)
            continue
        row_errors = list(problems)
        # A field that could not be read is checked as if empty: its own problem is reported.
        account = checker.account(number, record, row_errors, unread={p.field for p in problems})
        key = checker.key
        if duplicates and key is not None:
            first = first_line(seen, key, number)
            if first is not None:
                row_errors.append(duplicate(number, first))
        if row_errors:
            errors.extend(row_errors)
            if key is not None:
                bad_keys.append((number, key))
        elif account is not None:
            accounts.append(account)
    return ReadResult(accounts, errors, rows, bad_keys, list(ignored))


def first_line(seen: dict[tuple[str, str], int], key: tuple[str, str], line: int) -> int | None:
    """The line an account came on first, if it came before; else `line` is remembered as it."""
    first = seen.setdefault(key, line)
    return first if first != line else None


def duplicate(line: int, first: int) -> RowError:
    return RowError(line, "account_id", f"duplicate of line {first} (same platform and account id)")


def _count(value: str, name: str, line: int, errors: list[RowError]) -> int:
    value = value.strip()
    if not value:
        return 0
    digits = value[1:] if value[0] in "+-" else value
    if not (digits.isascii() and digits.isdigit()):  # int() would take 1_000 and other scripts' digits too
        errors.append(RowError(line, name, f"not a whole number: {value[:40]!r}"))
        return 0
    number = int(value)
    if number < 0:
        errors.append(RowError(line, name, "cannot be negative"))
    elif number > MAX_COUNT:
        errors.append(RowError(line, name, f"more than {MAX_COUNT:,}"))
        return 0
    return number


def _when(value: str, name: str, line: int, errors: list[RowError]) -> datetime | None:
    value = value.strip()
    if not value:
        return None
    try:
        return _utc_datetime(value)
    except ValueError:
        errors.append(RowError(line, name, f"not an ISO 8601 date or time: {value[:40]!r}"))
    except OverflowError:  # year 1 or 9999 with an offset that takes it out of range in UTC
        errors.append(RowError(line, name, f"out of the range of dates: {value[:40]!r}"))
    return None


@functools.lru_cache(maxsize=4096)
def _utc_datetime(value: str) -> datetime:
    """A tip's dates repeat (often to the day): each spelling is parsed once."""
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


# Where phonenumbers starts reading a number: at its first plus sign or digit (what comes
# before, a bracket, `tel:` or a direction mark, it passes over).
_PHONE_START = re.compile(r"[+\d]")


def _has_country_code(phone: str) -> bool:
    """Whether a phone number carries its country code as the identifier normaliser reads it
    (identifiers._canonical_phone): in NFKC (a full-width plus is a plus), behind a leading
    "00", behind a plus where phonenumbers starts reading (`(+64) 21 555 0101` too), or in an
    RFC 3966 context (`tel:021-555-0101;phone-context=+64`)."""
    text = unicodedata.normalize("NFKC", phone)
    if text.startswith("00") or ";phone-context=+" in text:
        return True
    start = _PHONE_START.search(text)
    return start is not None and start.group() == "+"


# The kinds as plain globals and their values as plain strings: on Python 3.11 each
# `IdentifierKind.X` and `.value` is a descriptor call, and the checker needs them for every
# identifier of every row.
_ACCOUNT_ID, _USERNAME, _EMAIL, _PHONE, _IP = (
    IdentifierKind.ACCOUNT_ID, IdentifierKind.USERNAME, IdentifierKind.EMAIL, IdentifierKind.PHONE, IdentifierKind.IP)
_KIND_VALUES = {kind: kind.value for kind in IdentifierKind}


class _RowChecker:
    """Checks rows of one file (or chunk), remembering each identifier it has normalised: a
    holder's e-mail recurs on all their accounts. Repeated values (the platform, a country)
    are kept as one object each, which pickle then carries once."""

    def __init__(self, secret: bytes):
        self.secret = secret
        self.identifiers: dict[tuple, Ident] = {}  # (kind, text, platform, region) -> identifier
        self.repeated: dict[str, str] = {}
        self.key: tuple[str, str] | None = None  # the last row's natural key, if it has one

    def identifier(self, kind: IdentifierKind, field_name: str, text: str, platform: str | None,
                   region: str | None, line: int, errors: list[RowError]) -> Ident | None:
        memo = (kind, text, platform, region)
        ident = self.identifiers.get(memo)
        if ident is None:
            try:
                normalised = normalise(kind, text, platform=platform, region=region)
            except InvalidIdentifier as exc:
                # An IP field holds several addresses: the reason names the one that is wrong.
                reason = f"{exc.reason}: {text[:60]!r}" if kind is _IP else exc.reason
                errors.append(RowError(line, field_name, reason))
                return None
            value = normalised.value
            raw = value if normalised.raw == value else normalised.raw
            ident = self.identifiers[memo] = (_KIND_VALUES[kind], normalised.platform, raw, value,
                                              match_key(self.secret, normalised))
        return ident

    def account(self, line: int, record: dict[str, str], errors: list[RowError],
                unread: set[str] | frozenset[str] = frozenset()) -> Account | None:
        """The row as an Account, or None with its problems added to `errors`. The fields in
        `unread` could not be read (their problem is reported already) and are checked as if
        empty, as is a field too long to check."""
        self.key = None
        too_long = [name for name in FIELDS  # unknown columns are not read
                    if name not in unread and len(record.get(name, "")) > MAX_FIELD]
        if too_long:
            errors.extend(RowError(line, name, f"longer than {MAX_FIELD} characters") for name in too_long)
            unread = {*unread, *too_long}
        if unread:
            record = {**record, **dict.fromkeys(unread, "")}
        # Each field stripped once; absent columns read as empty.
        platform, account_id, username, email, phone, ip_addresses, hint, ip_code, *rest = (
            record.get(name, "").strip() for name in FIELDS)
        one = self.repeated.setdefault
        platform = one(platform.lower(), platform.lower())
        if not platform:
            if "platform" not in unread:
                errors.append(RowError(line, "platform", "missing"))
        elif platform not in PLATFORMS:
            errors.append(RowError(line, "platform", f"unknown platform {platform[:40]!r}"))
        if not account_id and "account_id" not in unread:
            errors.append(RowError(line, "account_id", "missing"))
        country_hint = None
        if hint:
            country_hint = countries.lookup(hint)
            if country_hint is None:
                errors.append(RowError(line, "country_hint", f"unknown country {hint[:40]!r}"))
        ip_country = None
        if ip_code:
            code = countries.code(ip_code)
            if code:
                ip_country = one(code, code)
            else:
                errors.append(RowError(line, "ip_country", f"unknown country code {ip_code[:10]!r}"))
        uploads_a, uploads_b, uploads_c, first, last = rest
        uploads_a = _count(uploads_a, "uploads_a", line, errors)
        uploads_b = _count(uploads_b, "uploads_b", line, errors)
        uploads_c = _count(uploads_c, "uploads_c", line, errors)
        first_seen = _when(first, "first_seen", line, errors)
        last_seen = _when(last, "last_seen", line, errors)
        if first_seen and last_seen and first_seen > last_seen:
            errors.append(RowError(line, "last_seen", "earlier than first_seen"))

        # The identifiers are checked on a bad row too, so that all its problems are reported
        # at once (those read on the platform only when it is a known one).
        identifier = self.identifier
        known_platform = platform in PLATFORMS
        account_ident = (identifier(_ACCOUNT_ID, "account_id", account_id, platform, None, line, errors)
                         if known_platform and account_id else None)
        username_ident = (identifier(_USERNAME, "username", username, platform, None, line, errors)
                          if known_platform and username else None)
        if account_ident is not None:
            self.key = (platform, account_ident[I_VALUE])
        email_ident = identifier(_EMAIL, "email", email, None, None, line, errors) if email else None
        phone_ident = None
        if phone:
            # A national number is read in the row's country, its hint first. Without one it
            # cannot be judged: if the row's country is wrong, that is its problem, reported
            # already; if it has none, the number needs its country code. One with it can.
            region = country_hint if hint else ip_country
            if region is not None or _has_country_code(phone):
                phone_ident = identifier(_PHONE, "phone", phone, None, region, line, errors)
            elif not (hint or ip_code):
                errors.append(RowError(line, "phone", "no country code: write it with +<country code>, "
                                                      "or give the row's country_hint"))
        ip_idents = [identifier(_IP, "ip_addresses", address, None, None, line, errors)
                     for address in map(str.strip, ip_addresses.split(";")) if address]
        if errors:
            return None
        named = (account_ident, username_ident, email_ident, phone_ident)
        return Account(
            line, platform, account_id, account_ident[I_VALUE], username_ident and username_ident[I_VALUE],
            email_ident and email_ident[I_VALUE], phone_ident and phone_ident[I_VALUE],
            tuple(ident[I_VALUE] for ident in ip_idents), country_hint, ip_country, uploads_a, uploads_b, uploads_c,
            first_seen, last_seen, (*(ident for ident in named if ident is not None), *ip_idents),
        )
