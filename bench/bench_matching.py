"""Deconfliction matching at the scale of one large operation.

Seeds 1,000,000 stored identifiers (times --scale) on subjects of 100,000 referrals from 40
agencies, a few of them common (VPN-like addresses), then measures:

* ``match_batch`` of 153,000 keys (about 100,000 held, the rest unknown) through the
  service as the tip import's ``refresh_hits`` calls it, beside a raw SQL join of the same
  keys loaded into a temporary table (baseline);
* the p50/p95/p99 latency of 1,000 blind checks of 10 identifiers through the service,
  each committed (the check writes its audit entry).

    python -m bench.bench_matching --engine sqlite|postgresql|both [--scale 1.0]

SQLite runs on a temporary file. PostgreSQL runs in a fresh database created on the server
named by BENCH_DATABASE_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres)
and dropped afterwards. All data is synthetic: example.org addresses, 2001:db8:: and
192.0.2.x addresses, invented handles.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SECRET = "bench-match-key"
FULL_IDENTIFIERS = 1_000_000
BATCH = 153_000
BATCH_HELD = 100_000
CHECKS = 1_000
CHECK_SIZE = 10
AGENCIES = 40
IDENTIFIERS_PER_SUBJECT = 4
SUBJECTS_PER_REFERRAL = 2.5
COMMON_KEYS = 20
COMMON_HOLDERS = 50  # referrals per common key, over the threshold of 20
CHUNK = 20_000

KINDS = [("email", None, 50), ("phone", None, 15), ("username", "discord", 20), ("account_id", "steam", 10),
         ("ip", None, 5)]


def synthetic(kind: str, n: int) -> str:
    """The canonical (already normalised) form of synthetic identifier number n."""
    if kind == "email":
        return f"holder{n}@example.org"
    if kind == "phone":
        return f"+6421{n:08d}"
    if kind == "username":
        return f"handle_{n}"
    if kind == "account_id":
        return f"7656{n:09d}"
    return f"2001:db8::{n >> 16:x}:{n & 0xFFFF:x}"


def key_of(secret: bytes, kind: str, platform: str | None, value: str) -> str:
    from app.services.identifiers import NormalisedIdentifier, match_key

    return match_key(secret, NormalisedIdentifier(kind=kind, platform=platform, raw=value, value=value))


# --- databases --------------------------------------------------------------------------------

@contextmanager
def database(engine_name: str):
    if engine_name == "sqlite":
        with tempfile.TemporaryDirectory(prefix="handoff-bench-") as folder:
            yield "sqlite:///" + os.path.join(folder, "bench.db")
        return
    server = os.environ.get("BENCH_DATABASE_URL", DEFAULT_PG)
    name = f"handoff_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def session_for(engine) -> Session:
    config = {"MATCH_KEY_SECRET": SECRET, "COMMON_IDENTIFIER_THRESHOLD": 20, "BLIND_CHECK_LIMIT": 10_000}
    return Session(bind=engine, info={"config": config}, expire_on_commit=False)


# --- seeding ----------------------------------------------------------------------------------

def seed(engine, n_identifiers: int, rng: random.Random) -> dict:
    from app.db import utcnow
    from app.models import Agency, AgencyKind, Identifier, Referral, Role, Subject, User, referral_subjects

    secret = SECRET.encode()
    now = utcnow()
    n_subjects = max(10, n_identifiers // IDENTIFIERS_PER_SUBJECT)
    n_referrals = max(5, int(n_subjects / SUBJECTS_PER_REFERRAL))
    # Values come from a pool a little smaller than the number of identifiers, so that some
    # are held by several subjects (cross-agency hits and duplicates), as in real tips.
    pool = max(10, int(n_identifiers * 0.9))
    weights = [w for _, _, w in KINDS]
    started = time.perf_counter()

    with engine.begin() as conn:
        conn.execute(insert(Agency.__table__), [
            {"name": f"Bench Agency {a:02d}", "kind": AgencyKind.POLICE, "country_code": "NZ",
             "desk_email": f"desk{a}@bench.example.org", "desk_phone": f"+64 21 555 01{a:02d}",
             "timezone": "UTC", "is_focal_point": False, "created_at": now}
            for a in range(1, AGENCIES + 1)
        ])
        conn.execute(insert(User.__table__).values(
            email="liaison@bench.example.org", name="Bench Liaison", password_hash="-", role=Role.LIAISON,
            agency_id=1, is_active=True, created_at=now,
        ))
        senders = []
        for start in range(0, n_referrals, CHUNK):
            rows = []
            for r in range(start, min(n_referrals, start + CHUNK)):
                sender = r % AGENCIES + 1
                senders.append(sender)
                rows.append({
                    "reference": f"HND-2026-{r + 1:06d}", "sender_agency_id": sender,
                    "receiver_agency_id": sender % AGENCIES + 1, "jurisdiction": "NZ", "priority": "P3",
                    "status": "sent", "summary": "Synthetic bench referral.", "sent_at": now,
                    "created_at": now, "updated_at": now,
                })
            conn.execute(insert(Referral.__table__), rows)
        for start in range(0, n_subjects, CHUNK):
            end = min(n_subjects, start + CHUNK)
            conn.execute(insert(Subject.__table__), [
                {"agency_id": senders[s % n_referrals], "label": f"Subject {s + 1}", "created_at": now}
                for s in range(start, end)
            ])
            conn.execute(insert(referral_subjects), [
                {"referral_id": s % n_referrals + 1, "subject_id": s + 1, "added_at": now} for s in range(start, end)
            ])
        held: list[tuple[str, str | None, str]] = []
        rows = []
        inserted = 0

        def flush_rows():
            nonlocal rows, inserted
            if rows:
                conn.execute(insert(Identifier.__table__), rows)
                inserted += len(rows)
                rows = []

        n_regular = n_identifiers - COMMON_KEYS * COMMON_HOLDERS
        for s in range(n_subjects):
            seen = set()
            for _ in range(IDENTIFIERS_PER_SUBJECT):
                if len(held) >= n_regular:
                    break
                kind, platform, _ = rng.choices(KINDS, weights)[0]
                value = synthetic(kind, rng.randrange(pool))
                key = key_of(secret, kind, platform, value)
                if key in seen:
                    continue
                seen.add(key)
                held.append((kind, platform, value))
                rows.append({"subject_id": s + 1, "kind": kind, "platform": platform, "raw": value, "value": value,
                             "match_key": key, "created_at": now})
            if len(rows) >= CHUNK:
                flush_rows()
        # Common keys: VPN-like addresses held by many subjects of different referrals.
        for c in range(COMMON_KEYS):
            value = f"192.0.2.{c + 1}"
            key = key_of(secret, "ip", None, value)
            for h in range(COMMON_HOLDERS):
                rows.append({"subject_id": (c * 7919 + h * 104_729) % n_subjects + 1, "kind": "ip",
                             "platform": None, "raw": value, "value": value, "match_key": key, "created_at": now})
        # (the same subject may come up twice for one common key: keep one)
        unique = {}
        for row in rows:
            unique[(row["subject_id"], row["match_key"])] = row
        rows = list(unique.values())
        flush_rows()
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    return {"identifiers": inserted, "subjects": n_subjects, "referrals": n_referrals, "held": held,
            "pool": pool, "seconds": time.perf_counter() - started}


# --- measurements -----------------------------------------------------------------------------

def batch_keys(seeded: dict, rng: random.Random) -> list[str]:
    secret = SECRET.encode()
    held = sorted(set(seeded["held"]))  # distinct identifiers
    take = min(BATCH_HELD, len(held) // 2)
    keys = [key_of(secret, *item) for item in rng.sample(held, take)]
    keys += [key_of(secret, "ip", None, f"192.0.2.{c + 1}") for c in range(COMMON_KEYS)]
    n = 0
    while len(keys) < BATCH:
        keys.append(key_of(secret, "email", None, f"unknown{n}@example.org"))
        n += 1
    rng.shuffle(keys)
    return keys


def time_match_batch(engine, keys: list[str], runs: int = 3) -> tuple[list[float], int, int]:
    """``match_batch`` as ``refresh_hits`` (and so the tip import) calls it: only the keys that
    two referrals or more hold, since the others can raise no hit."""
    from app.services.deconfliction import match_batch

    times = []
    for _ in range(runs):
        with session_for(engine) as session:
            started = time.perf_counter()
            result = match_batch(session, keys, threshold=20, shared_only=True)
            times.append(time.perf_counter() - started)
    return times, len(result.holders), len(result.common)


def time_baseline(engine, keys: list[str], runs: int = 3) -> tuple[list[float], list[float], int]:
    """Raw SQL: load the keys into a temporary table, join them to the identifiers."""
    join = text(
        "SELECT i.match_key, rs.referral_id, r.reference, r.sender_agency_id, i.subject_id, i.id "
        "FROM bench_keys k JOIN identifiers i ON i.match_key = k.match_key "
        "JOIN referral_subjects rs ON rs.subject_id = i.subject_id "
        "JOIN referrals r ON r.id = rs.referral_id"
    )
    loads, joins, rows = [], [], 0
    for _ in range(runs):
        with engine.connect() as conn:
            started = time.perf_counter()
            conn.execute(text("CREATE TEMPORARY TABLE bench_keys (match_key VARCHAR(64) PRIMARY KEY)"))
            conn.execute(text("INSERT INTO bench_keys (match_key) VALUES (:k)"), [{"k": k} for k in keys])
            conn.execute(text("ANALYZE bench_keys"))
            loaded = time.perf_counter()
            rows = len(conn.execute(join).all())
            joined = time.perf_counter()
            conn.rollback()
            conn.execute(text("DROP TABLE IF EXISTS bench_keys"))
            conn.commit()
        loads.append(loaded - started)
        joins.append(joined - loaded)
    return loads, joins, rows


def time_blind_checks(engine, seeded: dict, rng: random.Random) -> list[float]:
    from app.models import User
    from app.services.audit import Actor
    from app.services.deconfliction import blind_check

    held = seeded["held"]
    latencies = []
    with session_for(engine) as session:
        user = session.query(User).filter_by(email="liaison@bench.example.org").one()
        actor = Actor(user=user, address="bench")
        for n in range(CHECKS):
            lines = []
            for kind, platform, value in rng.sample(held, CHECK_SIZE // 2):
                lines.append(f"{kind}/{platform}: {value}" if platform else f"{kind}: {value}")
            lines += [f"nobody{n}.{k}@example.org" for k in range(CHECK_SIZE - len(lines))]
            started = time.perf_counter()
            blind_check(session, actor, "\n".join(lines))
            session.commit()
            latencies.append(time.perf_counter() - started)
    return latencies


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def run(engine_name: str, scale: float) -> None:
    from app.cli import upgrade_database
    from app.db import make_engine

    rng = random.Random(20261124)
    n_identifiers = max(1_000, int(FULL_IDENTIFIERS * scale))
    with database(engine_name) as url:
        upgrade_database(url)
        engine = make_engine(url)
        try:
            seeded = seed(engine, n_identifiers, rng)
            with engine.connect() as conn:  # server_version_info is read on connect
                version = ".".join(map(str, conn.dialect.server_version_info or ()))
            print(f"\n== {engine_name} {version} ==")
            print(f"seeded {seeded['identifiers']:,} identifiers on {seeded['subjects']:,} subjects of "
                  f"{seeded['referrals']:,} referrals in {seeded['seconds']:.1f} s")
            keys = batch_keys(seeded, rng)
            times, shared, common = time_match_batch(engine, keys)
            loads, joins, rows = time_baseline(engine, keys)
            print(f"match_batch, {len(keys):,} keys ({shared:,} held by 2 to 20 referrals, {common} common): "
                  f"best {min(times):.3f} s, runs {', '.join(f'{t:.3f}' for t in times)}")
            print(f"baseline raw join of the same keys ({rows:,} rows): join best {min(joins):.3f} s, "
                  f"load+join best {min(l + j for l, j in zip(loads, joins)):.3f} s "
                  f"(load {min(loads):.3f} s)")
            print(f"  ratio match_batch / baseline load+join: "
                  f"{min(times) / min(l + j for l, j in zip(loads, joins)):.2f}")
            latencies = time_blind_checks(engine, seeded, rng)
            print(f"blind check of {CHECK_SIZE} identifiers x {CHECKS:,} (each committed): "
                  f"p50 {percentile(latencies, 50) * 1000:.1f} ms, p95 {percentile(latencies, 95) * 1000:.1f} ms, "
                  f"p99 {percentile(latencies, 99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
        finally:
            engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 1,000,000 identifiers")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    engines = ["sqlite", "postgresql"] if args.engine == "both" else [args.engine]
    for name in engines:
        if name == "postgresql" and args.engine == "both" and not _server_reachable():
            print("\n== postgresql: skipped, no server at BENCH_DATABASE_URL ==")
            continue
        run(name, args.scale)
    return 0


def _server_reachable() -> bool:
    from sqlalchemy.exc import OperationalError

    engine = create_engine(os.environ.get("BENCH_DATABASE_URL", DEFAULT_PG))
    try:
        with engine.connect():
            return True
    except OperationalError:
        return False
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
