"""Validating a whole tip file, in parallel when it is large.

`reader.read` does the checking (docs/tip-format.md) and computes each identifier's match key;
normalising identifiers is pure Python (email-validator, phonenumbers, ipaddress) and costs
about 50 µs a row, so a 153,000-row tip is cut into chunks at record boundaries and the chunks
are read by worker processes. The result is the same as one `reader.read` of the whole file:
the same accounts in the same order, the same errors with the same line numbers, duplicates
across chunks included.

What crosses back from a worker is compact (`Account` tuples), and the raw record of a bad
row only, for the reject file.
"""

from __future__ import annotations

import csv
import functools
import gc
import io
import math
import multiprocessing
import os
import re
import signal
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import chain

import phonenumbers
from phonenumbers.phonemetadata import PhoneMetadata

from app.services.tips import reader
from app.services.tips.reader import Account

# Below this size a file is read in the calling process (a pool costs more than it saves).
PARALLEL_MIN_BYTES = 2_000_000
CHUNK_BYTES = 1_500_000


@dataclass
class Validation:
    fmt: str
    rows: int = 0
    accounts: list[Account] = field(default_factory=list)
    errors: list[reader.RowError] = field(default_factory=list)
    # line -> the bad row as read (column -> text), for the reject file
    bad_records: dict[int, dict[str, str]] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)  # the file's columns (CSV header), for the reject file
    header_error: bool = False
    seen: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)  # natural key -> line
    # Columns or JSON keys that are no tip field (an `E-mail` column is not `email`), as keys of
    # a dict: in the order first met, each once.
    ignored: dict[str, None] = field(default_factory=dict, repr=False)

    @property
    def ignored_columns(self) -> list[str]:
        """Columns or JSON keys that are no tip field, in the order first met."""
        return list(self.ignored)

    @property
    def bad_lines(self) -> list[int]:
        return sorted({e.line for e in self.errors})


Progress = Callable[[str, int, int], None]


def validate(data: bytes, fmt: str, secret: bytes, *, workers: int | None = None,
             progress: Progress | None = None, chunk_bytes: int = CHUNK_BYTES) -> Validation:
    """Read and check every row of `data` (UTF-8 bytes of a CSV or JSON Lines tip)."""
    result = Validation(fmt=fmt)
    header, body, body_first_line = _split_header(data, fmt)
    if fmt == "csv":
        result.columns = _header_columns(header)
        # Without a mark: the file's own is off already, and a second one would be read into
        # the chunks' first column.
        check = reader.read(io.BytesIO(header), fmt, secret, bom=False)
        result.ignored.update(dict.fromkeys(check.ignored_columns))
        if check.errors:  # a column is missing: no row can be read
            result.errors = check.errors
            result.header_error = True
            return result
    else:
        misnamed = reader.csv_named_jsonl(body)
        if misnamed is not None:
            result.errors = [misnamed]
            result.header_error = True
            return result
    chunks = _chunks(body, fmt, chunk_bytes)
    total = len(body)
    if workers is None:
        workers = default_workers()
    tasks = []
    line = body_first_line
    # Each chunk is read after the header: a header ending in a lone CR would make a CRLF of a
    # chunk's leading LF (one line end instead of two).
    chunk_header = header[:-1] + b"\n" if header.endswith(b"\r") else header
    for start, end in chunks:
        tasks.append((fmt, chunk_header, body[start:end], line, secret))
        line += reader.line_ends(body, start, end)
    parallel = workers > 1 and len(tasks) > 1 and len(data) >= PARALLEL_MIN_BYTES
    done = 0
    if progress:
        progress("validate", 0, total)
    if parallel:
        _load_phone_metadata()  # once here, not once per worker: forked workers share it
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        # An executor, not multiprocessing.Pool: a Pool left early (a bad chunk raised, a stop)
        # is terminated, and its terminate can wait for ever on a queue lock; a worker ended
        # from outside leaves a Pool waiting too, where an executor says it broke.
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context, initializer=_start_worker) as pool:
            futures = [pool.submit(_read_chunk, task) for task in tasks]
            try:
                for future, task in zip(futures, tasks):
                    while True:
                        try:
                            part = future.result(timeout=PROGRESS_EVERY)
                            break
                        except TimeoutError:
                            # Said again while a chunk is read, so that the caller may stop here
                            # (the command line, on Ctrl-C).
                            if progress:
                                progress("validate", done, total)
                    _merge(result, part, task)
                    done += len(task[2])
                    if progress:
                        progress("validate", done, total)
            except BrokenProcessPool:
                # The workers were ended from outside: a stop the caller noted says so first.
                if progress:
                    progress("validate", done, total)
                raise
            finally:
                pool.shutdown(cancel_futures=True)  # left early: the chunks not started are not read
    else:
        for task in tasks:
            _merge(result, _read_chunk(task), task)
            done += len(task[2])
            if progress:
                progress("validate", done, total)
    return result


# Seconds between progress reports while the workers read.
PROGRESS_EVERY = 0.5


def _start_worker() -> None:
    # Workers are short-lived and build millions of small acyclic objects: the cyclic garbage
    # collector only slows them down.
    gc.disable()
    # A SIGTERM (a broken pool's end, or a service manager's to the whole process group) ends a
    # worker, whatever the importing process does on one (the command line stops the import at
    # its next step); and Ctrl-C, which reaches every process of the terminal's group, is the
    # importing process's to act on.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _load_phone_metadata() -> None:
    """phonenumbers loads each region's numbering plan on first use, which costs a worker about
    a third of its time on a tip spanning a hundred countries."""
    for region in phonenumbers.SUPPORTED_REGIONS:
        PhoneMetadata.metadata_for_region(region)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


# --- splitting ------------------------------------------------------------------------------

def _split_header(data: bytes, fmt: str) -> tuple[bytes, bytes, int]:
    """(header, body, number of the body's first line). JSON Lines has no header; a CSV's is
    its first record, as the csv module reads it."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    if fmt != "csv":
        return b"", data, 1
    start = end = 0
    for end in _record_ends(data, read_again=False):  # blank lines (or of separators only) before the header go with it
        if not _blank_line(data[start:end]):
            break
        start = end
    else:
        end = len(data)
    header = data[:end]
    return header, data[end:], reader.line_ends(header) + 1


def _chunks(body: bytes, fmt: str, chunk_bytes: int) -> list[tuple[int, int]]:
    """(start, end) of chunks of about `chunk_bytes`, each cut where a record ends."""
    if fmt == "csv" and b'"' in body:
        return _quoted_csv_chunks(body, chunk_bytes)
    # Without quotes every newline ends a record (as in JSON Lines).
    chunks = []
    start = 0
    while start < len(body):
        newline = body.find(b"\n", start + chunk_bytes)
        end = len(body) if newline < 0 else newline + 1
        chunks.append((start, end))
        start = end
    return chunks


def _quoted_csv_chunks(body: bytes, chunk_bytes: int) -> list[tuple[int, int]]:
    """Chunks cut where the csv module itself ends a record: a quote opens a quoted field only
    at the start of a field, so counting quotes would cut inside a field after a stray one
    (`o"brien`)."""
    chunks = []
    start = 0
    for end in _record_ends(body):
        if end - start >= chunk_bytes and end < len(body):
            chunks.append((start, end))
            start = end
    if start < len(body):
        chunks.append((start, len(body)))
    return chunks


# Where a line ends within a line of bytes.readline(): after a CR that no LF follows (the
# split leaves an empty piece after a CR that ends the data).
_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")


def _record_ends(data: bytes, *, read_again: bool = True) -> Iterator[int]:
    """The offset just after each CSV record of `data`, reading it line by line as a chunk's
    reader will (a lone CR ends a line, as in the reader's text stream). A record the csv
    module cannot read is its first line alone, as in the reader, which reports it and reads
    the lines after it again: no record ends before those are read (a chunk cut among them
    would read them otherwise). `read_again` off: as the reader reads the header, which it
    does not read beyond when it cannot."""
    sizes: deque[int] = deque()  # the bytes of each line read and not yet in a record

    def lines():
        for line in io.BytesIO(data):
            for part in filter(None, _LONE_CR.split(line)) if b"\r" in line else (line,):
                sizes.append(len(part))
                yield part.decode("utf-8", errors="replace")

    source = reader.RecordLines(lines())
    records = reader.csv_rows(source)
    end = 0
    while True:
        try:
            next(records)
        except StopIteration:
            return
        except csv.Error:
            if read_again:
                source.end_unreadable_record()
                taken = 1
            else:
                taken = source.end_record()
        else:
            taken = source.end_record()
        for _line in range(taken):
            end += sizes.popleft()
        if not source.reading_again:
            yield end


def _header_columns(header: bytes) -> list[str]:
    text = header.decode("utf-8", errors="replace")
    try:
        return next((row for row in reader.csv_rows(io.StringIO(text, newline="")) if not reader.blank_row(row)), [])
    except csv.Error:  # a header the reader refuses too, saying why
        return []


def _blank_line(line: bytes) -> bool:
    """Whether a line before a CSV's header is blank, as the reader judges it."""
    try:
        return reader.blank_row(next(reader.csv_rows(io.StringIO(line.decode("utf-8", errors="replace"))), []))
    except csv.Error:
        return False


# --- the worker -----------------------------------------------------------------------------

def _read_chunk(task) -> tuple[int, list[tuple], list[tuple[int, str, str]], dict[int, dict[str, str]],
                             list[tuple[int, tuple[str, str]]], list[str]]:
    """(rows, accounts as plain tuples, errors, bad rows' records, bad rows' keys, ignored
    columns) of one chunk."""
    fmt, header, body, _first_line, secret = task
    # Duplicates are found as the chunks are merged in file order, so that each names the
    # same first line as one reader of the whole file would.
    result = reader.read(io.BytesIO(header + body), fmt, secret, line_offset=_line_offset(task), duplicates=False,
                         bom=False)  # the file's own mark is off its header already
    # Accounts as plain tuples: they pickle and unpickle far faster than named ones.
    accounts = [tuple(account) for account in result.accounts]
    errors = [(e.line, e.field, e.reason) for e in result.errors]
    bad = {e.line for e in result.errors}
    return (result.rows, accounts, errors, _records_at(task, bad) if bad else {}, result.bad_keys,
            result.ignored_columns)


def _line_offset(task) -> int:
    """What to add to a line number within the chunk (counted from the header, line 1, or for
    JSON Lines from 1) to make it the file's."""
    fmt, header, _body, first_line, _secret = task
    return first_line - (reader.line_ends(header) + 1 if fmt == "csv" else 1)


def _records_at(task, lines: set[int]) -> dict[int, dict[str, str]]:
    """The chunk's records at these lines of the file, as read (column -> text), for the
    reject file."""
    fmt, header, body, _first_line, _secret = task
    offset = _line_offset(task)
    return {number + offset: record
            for number, record, _problems in reader._records(io.BytesIO(header + body), fmt, bom=False)
            if number + offset in lines}


# A worker's plain tuple as an Account, without `Account._make`'s classmethod call (a third of
# the cost, for 153,000 accounts).
_as_account = functools.partial(tuple.__new__, Account)


def _merge(result: Validation, part, task) -> None:
    """Add a chunk's result in file order; an account that came earlier, in this chunk or
    an earlier one, is an error (a bad row's account too: it came first all the same)."""
    rows, accounts, errors, records, bad_keys, ignored = part
    result.rows += rows
    result.ignored.update(dict.fromkeys(ignored))
    result.errors.extend(reader.RowError(*e) for e in errors)
    result.bad_records.update(records)
    seen = result.seen
    duplicates = []
    pending = iter(bad_keys)  # (line, natural key) of the chunk's bad rows, met in line order
    bad = next(pending, None)
    for account in chain(map(_as_account, accounts), [None]):
        line = account.line if account is not None else math.inf
        while bad is not None and bad[0] < line:
            bad_line, key = bad
            first = reader.first_line(seen, key, bad_line)
            if first is not None:
                result.errors.append(reader.duplicate(bad_line, first))
            bad = next(pending, None)
        if account is None:
            break
        first = reader.first_line(seen, account.natural_key, line)
        if first is None:
            result.accounts.append(account)
        else:
            result.errors.append(reader.duplicate(line, first))
            duplicates.append(line)
    if duplicates:
        # The raw record of a row that only turned bad here, read again from its chunk.
        result.bad_records.update(_records_at(task, set(duplicates)))
    result.errors.sort(key=lambda e: e.line)
