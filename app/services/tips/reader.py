"""Reading and validating a tip file (CSV or JSON Lines; docs/tip-format.md).

Every row is checked and every problem reported with its line, field and reason; the
importer writes nothing unless all rows are good (or the caller skips the bad ones).
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO

from app.services import countries
from app.services.identifiers import (
    PLATFORMS,
    IdentifierKind,
    InvalidIdentifier,
    NormalisedIdentifier,
    normalise,
)

FIELDS = ("platform", "account_id", "username", "email", "phone", "ip_addresses", "country_hint",
          "ip_country", "uploads_a", "uploads_b", "uploads_c", "first_seen", "last_seen")
MAX_FIELD = 2000


@dataclass
class RowError:
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


@dataclass
class TipAccount:
    line: int
    platform: str
    account_id: str
    username: str | None
    email: str | None
    phone: str | None
    ip_addresses: list[str]
    country_hint: str | None
    ip_country: str | None
    uploads_a: int
    uploads_b: int
    uploads_c: int
    first_seen: datetime | None
    last_seen: datetime | None
    # Normalised identifiers: the account id itself first, then the others.
    identifiers: list[NormalisedIdentifier] = field(default_factory=list)

    @property
    def natural_key(self) -> tuple[str, str]:
        return self.platform, self.identifiers[0].value


@dataclass
class ReadResult:
    accounts: list[TipAccount]
    errors: list[RowError]
    rows: int


def detect_format(name: str, head: bytes) -> str:
    lowered = name.lower()
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lowered.endswith(".csv"):
        return "csv"
    stripped = head.lstrip(codecs.BOM_UTF8).lstrip()
    return "jsonl" if stripped.startswith(b"{") else "csv"


def _records(stream: IO[bytes], fmt: str) -> Iterator[tuple[int, dict[str, str] | RowError]]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    if fmt == "jsonl":
        for number, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, RowError(number, "-", f"not valid JSON ({exc.msg})")
                continue
            if not isinstance(record, dict):
                yield number, RowError(number, "-", "each line must be a JSON object")
                continue
            yield number, {k: _as_text(v) for k, v in record.items()}
        return
    reader = csv.DictReader(text, restval="")  # a short row's missing fields read as empty
    missing = [f for f in ("platform", "account_id") if f not in (reader.fieldnames or [])]
    if missing:
        yield 1, RowError(1, ",".join(missing), "missing column in the header")
        return
    for record in reader:
        record.pop(None, None)  # the fields of a long row beyond the header
        yield reader.line_num, record


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return str(value)


def read(stream: IO[bytes], fmt: str) -> ReadResult:
    """Parse and validate every row. Raises UnicodeDecodeError for a file that is not UTF-8."""
    accounts: list[TipAccount] = []
    errors: list[RowError] = []
    seen: dict[tuple[str, str], int] = {}
    rows = 0
    for number, record in _records(stream, fmt):
        rows += 1
        if isinstance(record, RowError):
            errors.append(record)
            continue
        row_errors: list[RowError] = []
        account = _validate(number, record, row_errors)
        if account is not None and not row_errors:
            key = account.natural_key
            if key in seen:
                row_errors.append(RowError(number, "account_id",
                                           f"duplicate of line {seen[key]} (same platform and account id)"))
            else:
                seen[key] = number
        if row_errors:
            errors.extend(row_errors)
        elif account is not None:
            accounts.append(account)
    return ReadResult(accounts, errors, rows)


def _count(value: str, name: str, line: int, errors: list[RowError]) -> int:
    value = value.strip()
    if not value:
        return 0
    try:
        number = int(value)
    except ValueError:
        errors.append(RowError(line, name, f"not a whole number: {value[:40]!r}"))
        return 0
    if number < 0:
        errors.append(RowError(line, name, "cannot be negative"))
    return number


def _when(value: str, name: str, line: int, errors: list[RowError]) -> datetime | None:
    value = value.strip()
    if not value:
        return None
    try:
        return _utc_datetime(value)
    except ValueError:
        errors.append(RowError(line, name, f"not an ISO 8601 date or time: {value[:40]!r}"))
        return None


@functools.lru_cache(maxsize=4096)
def _utc_datetime(value: str) -> datetime:
    """A tip's dates repeat (often to the day): each spelling is parsed once."""
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


# Plain globals for _validate: on Python 3.11 each `IdentifierKind.X` is a descriptor call.
_ACCOUNT_ID, _USERNAME, _EMAIL, _PHONE, _IP = (
    IdentifierKind.ACCOUNT_ID, IdentifierKind.USERNAME, IdentifierKind.EMAIL, IdentifierKind.PHONE, IdentifierKind.IP)


def _validate(line: int, record: dict[str, str], errors: list[RowError]) -> TipAccount | None:
    for name, value in record.items():
        if len(value) > MAX_FIELD:
            errors.append(RowError(line, name, f"longer than {MAX_FIELD} characters"))
            return None
    # Each field stripped once; absent columns read as empty.
    platform, account_id, username, email, phone, ip_addresses, hint, ip_code, *rest = (
        record.get(name, "").strip() for name in FIELDS)
    platform = platform.lower()
    if not platform:
        errors.append(RowError(line, "platform", "missing"))
    elif platform not in PLATFORMS:
        errors.append(RowError(line, "platform", f"unknown platform {platform[:40]!r}"))
    if not account_id:
        errors.append(RowError(line, "account_id", "missing"))
    country_hint = None
    if hint:
        country_hint = countries.lookup(hint)
        if country_hint is None:
            errors.append(RowError(line, "country_hint", f"unknown country {hint[:40]!r}"))
    ip_country = None
    if ip_code:
        code = ip_code.upper()
        if countries.is_valid(code):
            ip_country = code
        else:
            errors.append(RowError(line, "ip_country", f"unknown country code {ip_code[:10]!r}"))
    uploads_a, uploads_b, uploads_c, first, last = rest
    counts = {"uploads_a": _count(uploads_a, "uploads_a", line, errors),
              "uploads_b": _count(uploads_b, "uploads_b", line, errors),
              "uploads_c": _count(uploads_c, "uploads_c", line, errors)}
    first_seen = _when(first, "first_seen", line, errors)
    last_seen = _when(last, "last_seen", line, errors)
    if first_seen and last_seen and first_seen > last_seen:
        errors.append(RowError(line, "last_seen", "earlier than first_seen"))
    if errors:
        return None

    identifiers: list[NormalisedIdentifier] = []

    def add(kind: IdentifierKind, field_name: str, value: str, platform: str | None = None,
            region: str | None = None) -> None:
        try:
            identifiers.append(normalise(kind, value, platform=platform, region=region))
        except InvalidIdentifier as exc:
            errors.append(RowError(line, field_name, exc.reason))

    add(_ACCOUNT_ID, "account_id", account_id, platform)
    if username:
        add(_USERNAME, "username", username, platform)
    if email:
        add(_EMAIL, "email", email)
    if phone:
        add(_PHONE, "phone", phone, region=country_hint or ip_country)
    addresses = [address for address in map(str.strip, ip_addresses.split(";")) if address]
    for address in addresses:
        add(_IP, "ip_addresses", address)
    if errors:
        return None
    return TipAccount(
        line=line, platform=platform, account_id=account_id, username=username or None,
        email=email or None, phone=phone or None, ip_addresses=addresses,
        country_hint=country_hint, ip_country=ip_country, first_seen=first_seen, last_seen=last_seen,
        identifiers=identifiers, **counts,
    )
