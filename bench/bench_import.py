"""Importing the Operation H tip at full scale: 153,000 accounts (times --scale) through the
whole pipeline (parse, validate and normalise in worker processes, cluster, place, triage,
route into draft referrals, write, deconfliction matching, commit), beside two baselines
measured in the same run, both written raw (`executemany` on SQLite, `COPY` through psycopg on
PostgreSQL):
- the tip's rows, unvalidated, into one table of the same database (the issue's baseline);
- every row the import wrote (accounts, holders, subjects, identifiers, referrals, links,
  history, audit), into a fresh database of the same schema, foreign keys checked as the
  import checks them (once per value on PostgreSQL, app/services/tips/bulk.py): what the
  database alone costs for the import's output, so the ratio to it is the pipeline's own
  overhead.

    python -m bench.bench_import --engine sqlite|postgresql|both [--scale 1.0] [--workers N] [--runs 3]

After the baselines, a follow-up tip of 100 accounts goes into the operation just imported, as
a provider's later, small tip would: its time is what a follow-up costs once the operation is
full (it reads and matches what it touches, not the whole operation).

Each run prints the wall time of each stage, the ratios to the baselines, the peak resident
memory (ru_maxrss) of the importing process and of the worker processes, and the machine's
load around it; after the runs of an engine, their median and spread. The machine is shared,
and one run can be a second or two off another: the median of several, each in a fresh
database and process, is the figure. Targets: within 15 s and within 3x the first baseline,
under 1 GB.

SQLite runs on a temporary file. PostgreSQL runs in a fresh database created on the server
named by BENCH_DATABASE_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres)
and dropped afterwards. All data is synthetic (app/demo/operation_h.py).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import date
from statistics import median

from sqlalchemy import func, select

from app.services.tips.bulk import write_checked, write_raw
from bench.bench_matching import _server_reachable, database

SEED = 2019


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def _seed_directory(session, places: list[str]):
    """The lead agency (NZ), a focal point for nine in ten of the tip's countries, an international
    body, the lead's liaison officer and the operation."""
    from app.db import utcnow
    from app.models import Agency, AgencyKind, Operation, Role, User

    now = utcnow()
    lead = Agency(name="Bench Lead Unit", kind=AgencyKind.POLICE, country_code="NZ", desk_email="lead@bench.example.org",
                  desk_phone="+64 4 555 0100", is_focal_point=True, created_at=now)
    session.add(lead)
    for index, code in enumerate(places[1:]):
        if index % 10 == 9:
            continue  # no focal point: the international body, and the unrouted list
        session.add(Agency(name=f"Bench Focal {code}", kind=AgencyKind.POLICE, country_code=code,
                           desk_email=f"focal.{code.lower()}@bench.example.org", desk_phone="+64 4 555 0101",
                           is_focal_point=True, created_at=now))
    session.add(Agency(name="Bench International Body", kind=AgencyKind.INTERNATIONAL, country_code=None,
                       desk_email="intl@bench.example.org", desk_phone="+33 4 55 50 01 06", is_focal_point=True,
                       created_at=now))
    session.flush()
    user = User(email="liaison@bench.example.org", name="Bench Liaison", password_hash="-", role=Role.LIAISON,
                agency_id=lead.id, created_at=now)
    operation = Operation(code="BENCH-H", lead_agency_id=lead.id, opened_on=date(2019, 1, 1))
    session.add_all([user, operation])
    session.commit()
    return user, operation


def _baseline(engine, data: bytes) -> tuple[float, int]:
    """The tip's rows, parsed by the csv module and written raw into one table in one
    transaction: executemany on SQLite, COPY on PostgreSQL."""
    from app.services.tips.reader import FIELDS

    columns = ", ".join(f"{name} TEXT" for name in FIELDS)
    key = "id SERIAL PRIMARY KEY" if engine.dialect.name == "postgresql" else "id INTEGER PRIMARY KEY"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE bench_raw_tip ({key}, {columns})")
    started = time.perf_counter()
    rows = [tuple(row) for row in csv.reader(io.StringIO(data.decode("utf-8")))][1:]
    with engine.begin() as conn:
        write_raw(conn, "bench_raw_tip", FIELDS, rows)
    elapsed = time.perf_counter() - started
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE bench_raw_tip")
    return elapsed, len(rows)


def _new_rows(engine, before: dict[str, int]) -> list[tuple[str, list[str], list[tuple]]]:
    """Every row the import added, table by table in dependency order: rows with an id above
    the table's largest id before the import (all rows of a table without ids that was empty).
    On PostgreSQL each value is read as text, the form COPY takes."""
    from app.db import Base

    postgresql = engine.dialect.name == "postgresql"
    tables = []
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            names = [c.name for c in table.columns]
            columns = ", ".join(f'"{n}"::text' if postgresql else f'"{n}"' for n in names)
            if table.name not in before:
                continue
            where = f" WHERE id > {before[table.name]}" if "id" in table.c else ""
            rows = conn.exec_driver_sql(f"SELECT {columns} FROM {table.name}{where}").all()
            if rows:
                tables.append((table.name, names, [tuple(row) for row in rows]))
    return tables


def _largest_ids(engine) -> dict[str, int]:
    """Each table's largest id; 0 for the empty tables without ids."""
    from app.db import Base

    largest = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            if "id" in table.c:
                largest[table.name] = conn.exec_driver_sql(f"SELECT coalesce(max(id), 0) FROM {table.name}").scalar()
            elif conn.exec_driver_sql(f"SELECT count(*) FROM {table.name}").scalar() == 0:
                largest[table.name] = 0
    return largest


def _written_baseline(engine_name: str, tables) -> tuple[float, dict[str, float]]:
    """The rows the import wrote, written raw (executemany on SQLite, COPY on PostgreSQL) into a
    fresh database of the same schema (indexes, constraints and triggers) holding the same
    directory, in one transaction, commit included, foreign keys checked as the import's
    writes check them: what the database itself costs. Returns the total and each table's
    share."""
    from app.db import Base
    from app.demo.operation_h import countries
    from app.extensions import db

    with _migrated(engine_name) as (app, engine):
        with app.app_context():
            _seed_directory(db.session, countries(random.Random(SEED)))
        with engine.connect() as conn:
            if engine_name == "sqlite":
                conn.exec_driver_sql("PRAGMA cache_size = -131072")  # as the import has
                conn.commit()
            started = time.perf_counter()
            transaction = conn.begin()
            per_table = {}
            for name, columns, rows in tables:
                table_started = time.perf_counter()
                write_checked(conn, Base.metadata.tables[name], columns, rows)
                per_table[name] = time.perf_counter() - table_started
            committed = time.perf_counter()
            transaction.commit()
            per_table["commit"] = time.perf_counter() - committed
            return time.perf_counter() - started, per_table


@contextmanager
def _migrated(engine_name: str):
    """(app, engine) over a fresh database at the latest migration, dropped afterwards."""
    from app import create_app
    from app.cli import upgrade_database

    with database(engine_name) as url:
        upgrade_database(url)
        app = create_app({"DATABASE_URL": url}, config_name="testing")
        engine = app.extensions["handoff_db"]["engine"]
        try:
            yield app, engine
        finally:
            engine.dispose()


def run(engine_name: str, scale: float, workers: int | None, data: bytes) -> dict[str, float]:
    """One import in a fresh database, its figures printed; returns the headline ones."""
    from app.demo.operation_h import countries
    from app.extensions import db
    from app.models import Holder, Identifier, Referral, TipAccount
    from app.services.audit import Actor
    from app.services.tips.importer import import_tip

    print(f"\n== {engine_name}: import of the Operation H tip, scale {scale} ({len(data) / 1e6:.1f} MB) ==", flush=True)
    load_before = os.getloadavg()[0]
    with _migrated(engine_name) as (app, engine):
        with app.app_context():
            session = db.session
            user, operation = _seed_directory(session, countries(random.Random(SEED)))
            before = _largest_ids(engine)
            started = time.perf_counter()
            result = import_tip(session, Actor(user, "bench"), operation.id, data, "operation-h.csv",
                                workers=workers)
            committed = time.perf_counter()
            session.commit()
            total = time.perf_counter() - started
            result.timings["commit"] = time.perf_counter() - committed
            counts = {name: session.scalar(select(func.count()).select_from(model)) for name, model in (
                ("accounts", TipAccount), ("holders", Holder), ("identifiers", Identifier),
                ("referrals", Referral))}
            countries_placed = session.scalar(select(func.count(func.distinct(Holder.jurisdiction))))
        peak_import = _peak_mb(resource.RUSAGE_SELF)
        baseline, rows = _baseline(engine, data)
        written = _new_rows(engine, before)
        with app.app_context():
            follow_up = _follow_up(db.session, data)
    written_baseline, per_table = _written_baseline(engine_name, written)
    written_rows = sum(len(rows) for _name, _columns, rows in written)
    written_tables = len(written)
    del written
    stages = ", ".join(f"{name} {seconds:.2f}" for name, seconds in result.timings.items() if name != "total")
    matching = result.timings.get("match", 0.0)
    print(f"  import: {total:.1f} s for {result.rows:,} rows  [{stages}]")
    print(f"  baseline ({'COPY' if engine_name == 'postgresql' else 'executemany'} of the same {rows:,} rows, "
          f"raw, into one table): {baseline:.2f} s")
    print(f"  ratio import / baseline: {total / baseline:.1f}x (target 3x); without deconfliction matching: "
          f"{(total - matching) / baseline:.1f}x; target 15 s: {'met' if total <= 15 else 'missed'}")
    print(f"  the import's own {written_rows:,} rows in {written_tables} tables, "
          f"written raw into a fresh database of the same schema (foreign keys checked as the import checks "
          f"them): {written_baseline:.2f} s; "
          f"import / that: {total / written_baseline:.1f}x")
    largest = sorted(per_table.items(), key=lambda item: -item[1])[:5]
    print("    of which " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in largest))
    print("  peak memory after each stage (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in result.peaks.items()))
    print(f"  peak memory (ru_maxrss): the import's process {peak_import:.0f} MB, "
          f"largest worker {_peak_mb(resource.RUSAGE_CHILDREN):.0f} MB (target under 1 GB)")
    print(f"  a follow-up tip of {FOLLOW_UP} accounts into the operation just imported ({FOLLOW_UP // 2} of them "
          f"joining stored holders): {follow_up.timings['total']:.2f} s  [" + ", ".join(
              f"{name} {seconds:.2f}" for name, seconds in follow_up.timings.items() if name != "total") + "]")
    print(f"  wrote {counts['accounts']:,} accounts, {counts['holders']:,} holders in {countries_placed} countries, "
          f"{counts['identifiers']:,} identifiers, {counts['referrals']:,} draft referrals "
          f"({len(result.routing.created):,} created); {result.common_identifiers} common identifiers; "
          f"{len(result.hits.created) if result.hits else 0:,} hits")
    # Other work on the machine slows the validation workers first: compare runs at like load.
    print(f"  machine load (1-minute average) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}",
          flush=True)
    return {"import": total, "baseline": baseline, "matching": matching, "written_baseline": written_baseline,
            "peak_mb": max(peak_import, _peak_mb(resource.RUSAGE_CHILDREN))}


FOLLOW_UP = 100


def _follow_up(session, data: bytes):
    """A later, small tip into the operation, committed: FOLLOW_UP new accounts of the tip's
    people, half of them sharing a stored account's e-mail, phone and username (they join its
    holder), half with identifiers of their own. What a follow-up from the provider costs once
    the operation is full."""
    from app.models import Operation, User
    from app.services.audit import Actor
    from app.services.tips.importer import import_tip

    user, operation = session.scalar(select(User)), session.scalar(select(Operation))
    header, *rows = csv.reader(io.StringIO(data.decode("utf-8")))
    columns = {name: index for index, name in enumerate(header)}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for index, row in enumerate(random.Random(SEED).sample(rows, FOLLOW_UP)):
        row[columns["account_id"]] = f"follow{index:05d}"
        if index % 2:
            row[columns["username"]], row[columns["phone"]] = f"follow_user_{index}", ""
            row[columns["email"]] = f"follow{index}@mail.example.org"
        writer.writerow(row)
    result = import_tip(session, Actor(user, "bench"), operation.id, out.getvalue().encode(), "follow-up.csv")
    session.commit()
    return result


def _summary(engine_name: str, runs: list[dict[str, float]]) -> None:
    """The median of an engine's runs, and their spread."""
    imports = [r["import"] for r in runs]
    ratios = [r["import"] / r["baseline"] for r in runs]
    written = [r["import"] / r["written_baseline"] for r in runs]
    met = sum(seconds <= 15 for seconds in imports)
    print(f"\n== {engine_name}: median of {len(runs)} run{'s' if len(runs) != 1 else ''} ==")
    print(f"  import {median(imports):.1f} s (runs: {', '.join(f'{t:.1f}' for t in imports)}); "
          f"within 15 s in {met} of {len(runs)}")
    print(f"  ratio to the raw rows of the tip: {median(ratios):.1f}x (target 3x); to the import's own rows "
          f"written raw: {median(written):.1f}x")
    print(f"  peak memory: {max(r['peak_mb'] for r in runs):.0f} MB at most (target under 1 GB)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 153,000 accounts")
    parser.add_argument("--workers", type=int, default=None, help="validation processes (default: one per core)")
    parser.add_argument("--runs", type=int, default=3, help="imports per engine, each in a fresh database and "
                        "process (default 3); the median is the figure")
    parser.add_argument("--tip-file", help=argparse.SUPPRESS)  # a run in a process of its own ...
    parser.add_argument("--figures-file", help=argparse.SUPPRESS)  # ... which appends its figures here
    args, _unknown = parser.parse_known_args(argv)  # `make bench` passes every bench the same arguments
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.tip_file:
        with open(args.tip_file, "rb") as tip_file:
            figures = run(args.engine, args.scale, args.workers, tip_file.read())
        if args.figures_file:
            with open(args.figures_file, "a", encoding="utf-8") as out:
                out.write(json.dumps(figures) + "\n")
        return 0
    from app.demo.operation_h import tip_csv

    started = time.perf_counter()
    data = tip_csv(args.scale, SEED)
    print(f"generated the tip in {time.perf_counter() - started:.1f} s (not counted)", flush=True)
    engines = ["sqlite", "postgresql"] if args.engine == "both" else [args.engine]
    with tempfile.TemporaryDirectory(prefix="handoff-bench-tip-") as folder:
        path = os.path.join(folder, "operation-h.csv")
        with open(path, "wb") as tip_file:
            tip_file.write(data)
        del data
        for name in engines:
            if name == "postgresql" and args.engine == "both" and not _server_reachable():
                print("\n== postgresql: skipped, no server at BENCH_DATABASE_URL ==")
                continue
            # Each run in a fresh process: its peak memory is the import's, not what this
            # process (or an earlier benchmark of `make bench`) once held.
            figures_path = os.path.join(folder, f"figures-{name}.jsonl")
            command = [sys.executable, "-m", "bench.bench_import", "--engine", name, "--scale", str(args.scale),
                       "--tip-file", path, "--figures-file", figures_path]
            if args.workers:
                command += ["--workers", str(args.workers)]
            for _run in range(args.runs):
                subprocess.run(command, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            with open(figures_path, encoding="utf-8") as figures:
                _summary(name, [json.loads(line) for line in figures])
    return 0


if __name__ == "__main__":
    sys.exit(main())
