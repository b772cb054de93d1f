"""Spreadsheet-safe CSV: cells that a spreadsheet would run as a formula are neutralised."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

# OWASP CSV injection: =, +, -, @, and tab / carriage return that some programs strip first.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_NEUTRALISED = tuple("'" + start for start in FORMULA_PREFIXES)


def neutralise(value: object) -> object:
    """A cell a spreadsheet would run as a formula, behind an apostrophe, which makes it text."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def restore_cell(value: str) -> str:
    """A cell as it was before `neutralise`: the tip reader gives back the values of a reject
    file (a CSV Handoff wrote), corrected and imported again, as they were."""
    return value[1:] if value.startswith(_NEUTRALISED) else value


def to_csv(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([neutralise(h) for h in headers])
    for row in rows:
        writer.writerow(["" if v is None else neutralise(v) for v in row])
    return buffer.getvalue()
