"""Dashboards on 100,000 referrals: server time of the global and per-country dashboards,
each beside the bare SQL aggregate it rests on.

    .venv/bin/python -m bench.bench_dashboards [--engine sqlite|postgresql|both] [--scale 1.0]
                                              [--repeat 20] [--countries 20]

The dataset is made with bulk inserts (agencies in ~130 countries, a lead agency and its
operation, referrals with realistic status and time distributions, outcomes) in a fresh
database: a temporary SQLite file, or on PostgreSQL a new database on the server of
BENCH_DATABASE_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres), dropped
afterwards. Pages are requested through the Flask test client, signed in as a person would
be, so "server time" covers routing, the queries, the charts, the map and the template.
Targets (PostgreSQL): per-country p95 50 ms, global p95 300 ms.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import statistics
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.engine import make_url

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REFERRALS = 100_000
COUNTRIES = 130
PASSWORD = "bench-password-correct-horse-2026"
TARGETS_MS = {"global": 300, "country": 50}

# Final status of the referrals and its share.
STATUS_MIX = [("draft", .02), ("sent", .08), ("acknowledged", .12), ("accepted", .25), ("closed", .30),
              ("declined", .10), ("transferred", .05), ("withdrawn", .08)]
PRIORITY_MIX = [("P1", .10), ("P2", .30), ("P3", .40), ("P4", .20)]
ALWAYS = ["NZ", "AU", "GB", "US", "CA", "DE", "PH", "FJ", "WS", "TO", "FR", "BR", "IN", "ZA"]


# --- dataset ----------------------------------------------------------------------------------

def _pick(rng: random.Random, mix):
    return rng.choices([k for k, _ in mix], weights=[w for _, w in mix])[0]


def _hours(rng: random.Random, median: float, sigma: float) -> timedelta:
    return timedelta(hours=rng.lognormvariate(math.log(median), sigma))


def generate(app, scale: float = 1.0, seed: int = 11) -> dict:
    """Fill an empty, migrated database with the benchmark dataset (bulk inserts). Returns
    who to sign in as and the countries by size."""
    import pycountry

    from app.db import utcnow
    from app.extensions import db
    from app.models import Agency, AgencyKind, Operation, Outcome, Priority, Referral, Role, Status
    from app.services.audit import SYSTEM
    from app.services.users import create_user

    rng = random.Random(seed)
    now = utcnow()
    codes = sorted(c.alpha_2 for c in pycountry.countries)
    others = [c for c in codes if c not in ALWAYS]
    chosen = ALWAYS + rng.sample(others, COUNTRIES - len(ALWAYS))
    # Zipf-like: a few countries hold many referrals, most hold few.
    weights = [1 / (rank + 1) ** 0.9 for rank in range(len(chosen))]

    with app.app_context():
        session = db.session
        agency_rows = []
        for code in chosen:
            agency_rows.append(dict(name=f"Bench Police {code}", kind=AgencyKind.POLICE, country_code=code,
                                    desk_email=f"desk@{code.lower()}.police.example.org", desk_phone="+64 4 555 0100",
                                    timezone="UTC", is_focal_point=True, created_at=now))
        for code in chosen[:20]:
            agency_rows.append(dict(name=f"Bench Customs {code}", kind=AgencyKind.CUSTOMS, country_code=code,
                                    desk_email=f"desk@{code.lower()}.customs.example.org", desk_phone="+64 4 555 0101",
                                    timezone="UTC", is_focal_point=False, created_at=now))
        for n in range(3):
            agency_rows.append(dict(name=f"Bench Bureau {n + 1}", kind=AgencyKind.INTERNATIONAL, country_code=None,
                                    desk_email=f"desk{n}@bureau.example.org", desk_phone="+33 4 55 50 01 06",
                                    timezone="UTC", is_focal_point=False, created_at=now))
        session.execute(insert(Agency), agency_rows)
        agencies = {a.name: a for a in session.scalars(select(Agency))}
        focal = {code: agencies[f"Bench Police {code}"].id for code in chosen}
        customs = {code: agencies[f"Bench Customs {code}"].id for code in chosen[:20]}
        bureaus = [agencies[f"Bench Bureau {n + 1}"].id for n in range(3)]
        lead = focal["NZ"]
        partner = focal["AU"]

        session.add_all([
            Operation(code="BENCH-LANTERN", lead_agency_id=lead, opened_on=date.today() - timedelta(days=800)),
            Operation(code="BENCH-HARBOUR", lead_agency_id=partner, opened_on=date.today() - timedelta(days=500)),
        ])
        session.flush()
        operations = {o.code: o.id for o in session.scalars(select(Operation))}
        passwords = app.extensions["handoff_passwords"]
        for email, agency_id in (("lead.manager@bench.example.org", lead),
                                 ("partner.manager@bench.example.org", partner)):
            create_user(session, SYSTEM, passwords, email=email, name="Bench Manager", password=PASSWORD,
                        role=Role.MANAGER, agency_id=agency_id)
        session.commit()

        total = int(REFERRALS * scale)
        referral_rows = []
        for i in range(total):
            code = rng.choices(chosen, weights=weights)[0]
            status = Status(_pick(rng, STATUS_MIX))
            priority = Priority(_pick(rng, PRIORITY_MIX))
            roll = rng.random()
            if roll < .55:
                sender = lead
            elif roll < .85:
                sender = focal[rng.choice(chosen)]
            else:
                sender = rng.choice(bureaus)
            receiver = focal[code] if rng.random() < .85 or code not in customs else customs[code]
            if receiver == sender:
                receiver = customs.get(code) or rng.choice(bureaus)
            if receiver == sender:
                receiver = bureaus[0] if sender != bureaus[0] else bureaus[1]
            roll = rng.random()
            operation_id = (operations["BENCH-LANTERN"] if roll < .6
                            else operations["BENCH-HARBOUR"] if roll < .75 else None)
            row = dict(
                reference=f"BEN-{i + 1:07d}", version=1, operation_id=operation_id, sender_agency_id=sender,
                receiver_agency_id=receiver, jurisdiction=code, priority=priority, status=status,
                grade_a=rng.randint(0, 3), grade_b=rng.randint(0, 10), grade_c=rng.randint(0, 40),
                material_description="Graded material, description held by sending agency.",
                summary="Synthetic benchmark referral.", sent_at=None, acknowledged_at=None,
                accepted_at=None, declined_at=None, transferred_at=None, withdrawn_at=None, closed_at=None,
            )
            created = now - timedelta(days=rng.uniform(0, 730))
            if status is not Status.DRAFT:
                if status is Status.SENT:
                    # Some still inside their clock, most overdue.
                    sent = now - (timedelta(hours=rng.uniform(0, 70)) if rng.random() < .4
                                  else timedelta(days=rng.uniform(3, 120)))
                else:
                    sent = created + timedelta(hours=rng.uniform(1, 48))
                row["sent_at"] = min(sent, now - timedelta(minutes=1))
                status = _stamp(rng, row, status, now)
                row["status"] = status
            created = min(created, row["sent_at"] or created)
            row["created_at"] = created
            row["updated_at"] = max(v for v in (created, row["sent_at"], row["acknowledged_at"], row["accepted_at"],
                                                row["closed_at"], row["declined_at"], row["transferred_at"],
                                                row["withdrawn_at"]) if v is not None)
            referral_rows.append(row)
        for start in range(0, len(referral_rows), 10_000):
            session.execute(insert(Referral), referral_rows[start:start + 10_000])
        session.commit()

        investigations = session.execute(
            select(Referral.id, Referral.receiver_agency_id, Referral.accepted_at)
            .where(Referral.status.in_([Status.ACCEPTED, Status.CLOSED]))
        ).all()
        outcome_rows = []
        for referral_id, receiver, accepted_at in investigations:
            if rng.random() < .55:
                when = accepted_at + timedelta(days=rng.uniform(1, 60))
                when = min(when, now)
                outcome_rows.append(dict(
                    referral_id=referral_id, occurred_on=when.date(), arrests=rng.choice([0, 0, 1, 1, 1, 2, 3]),
                    charges=rng.choice([0, 1, 1, 2, 3, 4]), children_safeguarded=rng.choice([0, 0, 0, 0, 1, 1, 2]),
                    note="Synthetic outcome.", recorded_at=when, agency_id=receiver,
                ))
        for start in range(0, len(outcome_rows), 10_000):
            session.execute(insert(Outcome), outcome_rows[start:start + 10_000])
        session.commit()
        by_size = [code for code, _ in session.execute(
            select(Referral.jurisdiction, func.count()).group_by(Referral.jurisdiction).order_by(func.count().desc())
        )]
    return {"lead": "lead.manager@bench.example.org", "partner": "partner.manager@bench.example.org",
            "countries": by_size, "referrals": total, "outcomes": len(outcome_rows)}


def _stamp(rng: random.Random, row: dict, status, now):
    """Stamp the dates of the steps up to `status`; a step that would fall in the future
    leaves the referral at the step before."""
    from app.models import Status

    sent = row["sent_at"]
    if status is Status.SENT:
        return status
    if status is Status.WITHDRAWN:
        row["withdrawn_at"] = min(sent + _hours(rng, 30, .8), now)
        return status
    ack = sent + _hours(rng, 20 if row["priority"].value == "P1" else 40, 1.0)
    if ack >= now:
        return Status.SENT
    row["acknowledged_at"] = ack
    if status is Status.ACKNOWLEDGED:
        return status
    for final, stamp, median in ((Status.DECLINED, "declined_at", 48), (Status.TRANSFERRED, "transferred_at", 60)):
        if status is final:
            when = ack + _hours(rng, median, .8)
            if when >= now:
                return Status.ACKNOWLEDGED
            row[stamp] = when
            return status
    accepted = ack + _hours(rng, 72, .8)
    if accepted >= now:
        return Status.ACKNOWLEDGED
    row["accepted_at"] = accepted
    if status is Status.ACCEPTED:
        return status
    closed = accepted + timedelta(days=rng.uniform(10, 200))
    if closed >= now:
        return Status.ACCEPTED
    row["closed_at"] = closed
    return Status.CLOSED


# --- measurement ------------------------------------------------------------------------------

def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[index]


def _sign_in(app, email: str):
    client = app.test_client()
    html = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html).group(1)
    response = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    assert response.status_code in (302, 303), f"sign-in failed: {response.status_code}"
    return client


def _time_pages(client, paths: list[str], repeat: int) -> list[float]:
    for path in paths[:3]:  # warm up: templates, map data, connection pool
        client.get(path)
    samples = []
    for _ in range(repeat):
        for path in paths:
            start = time.perf_counter()
            response = client.get(path)
            samples.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, (path, response.status_code)
    return samples


def _time_sql(app, email: str, countries: list[str] | None, repeat: int) -> list[float]:
    """The bare aggregate each dashboard rests on: per jurisdiction for the global view,
    per priority and status for one country."""
    from app.db import utcnow
    from app.extensions import db
    from app.models import Referral, User
    from app.services import stats

    samples = []
    with app.app_context():
        session = db.session
        user = session.scalars(select(User).where(User.email == email)).one()
        now = utcnow()
        for _ in range(repeat):
            for code in countries or [None]:
                base = stats.scope(user, stats.Filters(), jurisdiction=code)
                if code is None:
                    query = base.with_only_columns(Referral.jurisdiction, *stats._status_columns(now)) \
                        .group_by(Referral.jurisdiction)
                else:
                    query = base.with_only_columns(Referral.priority, Referral.status, *stats._status_columns(now)) \
                        .group_by(Referral.priority, Referral.status)
                start = time.perf_counter()
                session.execute(query).all()
                samples.append((time.perf_counter() - start) * 1000)
        session.rollback()
    return samples


def _visible(app, email: str) -> int:
    from app.extensions import db
    from app.models import Referral, User
    from app.services import stats

    with app.app_context():
        user = db.session.scalars(select(User).where(User.email == email)).one()
        return db.session.scalar(stats.scope(user, stats.Filters()).with_only_columns(func.count(Referral.id)))


def measure(app, info: dict, repeat: int, country_count: int, engine_name: str) -> list[dict]:
    """The global page `repeat` times; every country's page (or `country_count` spread over
    the sizes) in `rounds` rounds; the largest country on its own; and the baseline, the
    cheapest signed-in page through the same middleware."""
    by_size = info["countries"]
    if country_count and country_count < len(by_size):
        step = len(by_size) / country_count
        sample = [by_size[int(i * step)] for i in range(country_count)]
    else:
        sample = by_size
    rounds = max(1, repeat // 7)
    results = []
    for viewer in ("lead", "partner"):
        email = info[viewer]
        client = _sign_in(app, email)
        visible = _visible(app, email)
        pages = {
            "hello-world page (baseline)": ([HELLO], repeat, None),
            "global": (["/dashboards/"], repeat, None),
            "country": ([f"/dashboards/country/{c}" for c in sample], rounds, sample),
            f"largest ({by_size[0]})": ([f"/dashboards/country/{by_size[0]}"], repeat, [by_size[0]]),
        }
        for page, (paths, times, countries) in pages.items():
            ms = _time_pages(client, paths, times)
            sql = _time_sql(app, email, countries, times) if paths != [HELLO] else None
            results.append(_row(engine_name, viewer, visible, page, ms, sql))
    return results


def measure_cache(url: str, info: dict, repeat: int) -> list[dict]:
    """SQLite's global dashboard with its cache: served from it, and on the first view after
    a change of the data (a trigger bumps the data version; the figures are made afresh)."""
    from app.db import utcnow

    app = _make_app(url)
    seconds = app.config["DASHBOARD_CACHE_SECONDS"]
    engine = app.extensions["handoff_db"]["engine"]
    client = _sign_in(app, info["lead"])
    visible = _visible(app, info["lead"])
    cached = _time_pages(client, ["/dashboards/"], repeat)
    after_change = []
    for n in range(repeat):
        with engine.begin() as conn:
            conn.execute(text("UPDATE referrals SET updated_at = :now WHERE id = :id"), {"now": utcnow(), "id": n + 1})
        start = time.perf_counter()
        assert client.get("/dashboards/").status_code == 200
        after_change.append((time.perf_counter() - start) * 1000)
    note = f"cache: figures that move with the clock at most {seconds} s old; refreshed on the first view after any change"
    return [_row("sqlite", "lead", visible, "global, from the cache", cached, None, note=note),
            _row("sqlite", "lead", visible, "global, first view after a change", after_change, None)]


def _row(engine_name, viewer, visible, page, ms, sql, note="") -> dict:
    row = dict(engine=engine_name, viewer=viewer, visible=visible, page=page, n=len(ms),
               p50=statistics.median(ms), p95=_percentile(ms, .95), note=note)
    if sql:
        row.update(sql_p50=statistics.median(sql), sql_p95=_percentile(sql, .95))
    return row


def _report(results: list[dict]) -> None:
    for r in results:
        line = f"  {r['engine']} {r['viewer']} (sees {r['visible']}) {r['page']}: p50 {r['p50']:.1f} ms, p95 {r['p95']:.1f} ms"
        if not r["page"].startswith("hello"):
            target = TARGETS_MS["global" if r["page"].startswith("global") else "country"]
            line += f" (target {target} ms"
            if r["engine"] == "postgresql":
                line += ", ok)" if r["p95"] <= target else ", over target)"
            else:
                line += " on PostgreSQL)"
        if "sql_p50" in r:
            line += f" | bare SQL aggregate p50 {r['sql_p50']:.1f} ms, p95 {r['sql_p95']:.1f} ms"
        if r["note"]:
            line += f" | {r['note']}"
        print(line + f" [n={r['n']}]", flush=True)


# --- engines ----------------------------------------------------------------------------------

HELLO = "/bench/hello"


def _make_app(url: str, **overrides):
    from flask_login import login_required

    from app import create_app

    app = create_app({"DATABASE_URL": url, "MFA_REQUIRED_ROLES": "", **overrides}, config_name="testing")
    app.add_url_rule(HELLO, "bench_hello", login_required(lambda: "hello"))
    return app


def _run_on(url: str, engine_name: str, args) -> list[dict]:
    from app.cli import upgrade_database

    start = time.perf_counter()
    upgrade_database(url)
    app = _make_app(url, DASHBOARD_CACHE_SECONDS=0)  # the figures as computed; measure_cache has the cache
    info = generate(app, args.scale)
    engine = app.extensions["handoff_db"]["engine"]
    _vacuum(engine)
    print(f"  {engine_name}: {info['referrals']} referrals, {info['outcomes']} outcomes, "
          f"{len(info['countries'])} countries, loaded in {time.perf_counter() - start:.1f} s", flush=True)
    try:
        results = measure(app, info, args.repeat, args.countries, engine_name)
        if engine_name == "sqlite":
            results += measure_cache(url, info, args.repeat)
        return results
    finally:
        engine.dispose()


def _vacuum(engine) -> None:
    """What autovacuum would have done by now: statistics and the visibility map."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"))


def run_sqlite(args) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="handoff-bench-") as folder:
        return _run_on("sqlite:///" + str(Path(folder) / "bench.db"), "sqlite", args)


def run_postgresql(args) -> list[dict]:
    server = os.environ.get("BENCH_DATABASE_URL", DEFAULT_PG)
    name = f"handoff_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - no server: say so and go on
        print(f"  postgresql: skipped, cannot create a database on {make_url(server).host}: {exc.__class__.__name__}")
        admin.dispose()
        return []
    try:
        url = make_url(server).set(database=name).render_as_string(hide_password=False)
        return _run_on(url, "postgresql", args)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_dashboards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 100,000 referrals")
    parser.add_argument("--repeat", type=int, default=21,
                        help="requests of the global page and of the largest country per viewer; "
                             "every country's page is requested repeat/7 times")
    parser.add_argument("--countries", type=int, default=0, help="countries spread over the sizes (0: all)")
    args, _unknown = parser.parse_known_args(argv or [])
    print(f"dashboards: scale {args.scale} ({int(REFERRALS * args.scale)} referrals), engine {args.engine}", flush=True)
    results = []
    if args.engine in ("sqlite", "both"):
        results += run_sqlite(args)
    if args.engine in ("postgresql", "both"):
        results += run_postgresql(args)
    _report(results)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
