"""The Operation H scenario: a synthetic provider tip at the real operation's scale.

153,000 accounts held by about 90,000 people in 130 countries, 125 of the accounts (71
holders) in New Zealand, the lead country. Every value is invented: e-mail addresses on
example domains, IPv6 addresses in the documentation range, phone numbers in ranges no
country assigns (`app/demo/phones.py`). Deterministic for a given seed; `scale` shrinks or
grows every count.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import phonenumbers
import pycountry
from phonenumbers import PhoneNumberType
from sqlalchemy import func

from app.demo import phones
from app.demo.time_zones import time_zone
from app.services.identifiers import PLATFORMS

ACCOUNTS = 153_000
HOLDERS = 90_000
COUNTRIES = 130
LEAD_COUNTRY = "NZ"
LEAD_ACCOUNTS = 125
LEAD_HOLDERS = 71
# A handful of numbers every provider sees on unrelated accounts (test numbers, a shared
# family phone): they must become common identifiers and join nobody. One of a range the UK
# reserves for drama, and the last of New Zealand's unassigned range (its desks and holders
# take the first).
SHARED_NUMBERS = ("+44 20 7946 0999", phones.unassigned("NZ", 999_999))
SHARED_NUMBER_USES = 40

TIP_START = datetime(2019, 1, 1, tzinfo=timezone.utc)
PLATFORM_SLUGS = [p for p in PLATFORMS if p != "other"]


def countries(rng: random.Random) -> list[str]:
    """130 countries with an example mobile number, the lead country first."""
    candidates = sorted(
        c.alpha_2 for c in pycountry.countries
        if c.alpha_2 != LEAD_COUNTRY
        and phonenumbers.example_number_for_type(c.alpha_2, PhoneNumberType.MOBILE) is not None
    )
    return [LEAD_COUNTRY, *rng.sample(candidates, COUNTRIES - 1)]


def generate(scale: float = 1.0, seed: int = 2019) -> Iterator[dict[str, str]]:
    """Yield tip rows (docs/tip-format.md) for the scenario."""
    rng = random.Random(seed)
    places = countries(rng)
    holders = max(1, round(HOLDERS * scale))
    accounts = max(holders, round(ACCOUNTS * scale))
    lead_holders = min(holders, max(1, round(LEAD_HOLDERS * scale)))
    lead_accounts = max(lead_holders, round(LEAD_ACCOUNTS * scale))

    # Countries of the other holders: a long tail (a few large countries, many small ones).
    weights = [1 / (rank + 1) ** 0.9 for rank in range(len(places) - 1)]
    holder_country = [LEAD_COUNTRY] * lead_holders + rng.choices(places[1:], weights, k=holders - lead_holders)
    # Every country appears at least once, so the scenario spans all 130.
    for index, country in enumerate(places[1:]):
        slot = lead_holders + index
        if slot < holders:
            holder_country[slot] = country

    # Accounts per holder: one each, then the rest spread over a third of the holders.
    per_holder = [1] * holders
    for _ in range(lead_accounts - lead_holders):
        per_holder[rng.randrange(lead_holders)] += 1
    others = range(lead_holders, holders)
    extra = accounts - sum(per_holder)
    busy = rng.sample(list(others), k=max(1, len(others) // 3)) if len(others) else []
    for _ in range(max(0, extra)):
        per_holder[rng.choice(busy)] += 1

    serial = 0
    shared_left = {number: SHARED_NUMBER_USES if scale >= 0.05 else 0 for number in SHARED_NUMBERS}
    phones_given: Counter = Counter()  # country -> numbers of its free range given out
    for holder, country in enumerate(holder_country):
        email = f"holder{holder}.{rng.randrange(10 ** 6):06d}@mail{holder % 97}.example.org"
        number = phones.DESKS + phones_given[country]  # after the desks' numbers
        phones_given[country] += 1
        phone = phones.unassigned(country, number) if number < phones.capacity(country) else ""
        other_country = rng.choice(places[1:])  # (not the lead's: its holders are the lead's own)
        active_from = TIP_START + timedelta(days=rng.randrange(500))
        for k in range(per_holder[holder]):
            serial += 1
            platform = rng.choice(PLATFORM_SLUGS)
            # Chains: the first account has the e-mail, the second both, later ones the phone.
            has_email = k == 0 or (k == 1) or rng.random() < 0.3
            has_phone = k >= 1 or rng.random() < 0.4
            row_phone = phone if has_phone else ""
            if not row_phone:
                for number, left in shared_left.items():
                    if left and rng.random() < 0.01:
                        row_phone, shared_left[number] = number, left - 1
                        break
            hint = country if rng.random() < 0.8 else ""
            if hint and rng.random() < 0.2:
                hint = pycountry.countries.get(alpha_2=hint).name
            ip_country = country if rng.random() < 0.85 else other_country
            # The lead country's figures are the real operation's (125 accounts, 71 holders), so
            # its evidence always outweighs a foreign IP: an account seen from abroad keeps its
            # hint, and still puts the holder on the review list.
            if country == LEAD_COUNTRY and ip_country != country and not hint:
                hint = country
            first_seen = active_from + timedelta(days=rng.randrange(200))
            grade_a = rng.choice([0] * 17 + [1, 2, 12])
            yield {
                "platform": platform,
                "account_id": f"{platform[:2]}{serial:08d}",
                "username": f"user_{serial:07d}" if rng.random() < 0.9 else "",
                "email": email if has_email else "",
                "phone": row_phone,
                "ip_addresses": ";".join(
                    f"2001:db8:{holder >> 16:x}:{holder & 0xFFFF:x}::{n + 1:x}" for n in range(rng.randint(1, 3))
                ),
                "country_hint": hint,
                "ip_country": ip_country,
                "uploads_a": str(grade_a),
                "uploads_b": str(rng.choice([0] * 4 + [1, 3])),
                "uploads_c": str(rng.randint(0, 60)),
                "first_seen": first_seen.isoformat(),
                "last_seen": (first_seen + timedelta(days=rng.randrange(300))).isoformat(),
            }


def write_csv(path: str, scale: float = 1.0, seed: int = 2019) -> int:
    import csv

    from app.services.tips.reader import FIELDS

    count = 0
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for row in generate(scale, seed):
            writer.writerow(row)
            count += 1
    return count


def tip_csv(scale: float = 1.0, seed: int = 2019) -> bytes:
    """The scenario's tip as the bytes of a CSV file."""
    import csv
    import io

    from app.services.tips.reader import FIELDS

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(generate(scale, seed))
    return buffer.getvalue().encode("utf-8")


# --- the scenario: directory, import, two years of handoffs ------------------------------------
#
# `load_scenario` loads the basic demo (agencies, people), adds an agency directory for the
# tip's countries (a focal point for most of them, an international body for the rest), opens
# the operation, imports the tip through the same pipeline as `flask import-tip`, lets the lead
# agency's investigators flag a few holders (the same triage and routing), has partner desks
# refer a few of the same holders on their own through the services (deconfliction finds the
# pairs), then simulates two years of handoffs: the lead team sends the urgent referrals at once
# and the rest in waves over the two years, receivers acknowledge, accept, decline or pass cases
# on over the weeks and months after, and report outcomes; the parties of every hit acknowledge
# it and agree a lead on most, through deconfliction's services (`_work_hits`).
#
# What is bulk-written, and how it matches the services: the simulated lifecycle steps (send,
# withdraw, acknowledge, accept, decline, consent, transfer, outcome, close) are not driven
# through app/services/referrals.py one by one (tens of thousands of steps), but written in a
# few statements with the same shape: the status and the step's date stamp on the referral, the
# version bumped once per step, one referral_events row per step (action, from/to status, acting
# user and agency, the services' notes), one audit entry per step ("referral.<action>", same
# details) chained like audit.record, outcomes rows, and for a transfer a new referral already
# sent, linked by transferred_from_id, carrying the same subjects, with its create/send events
# and audit entries, which the agency it went to acknowledges (and one in five declines) as
# the first receivers do (a country's desk passes a case on to the international body, which
# passes it to the focal point of the case's country, or keeps it when there is none);
# deconfliction runs once for the new referrals. The holders of a
# declined referral (or of one transferred on to it) go on the review list, as a decline through
# the services puts them; those of a withdrawn one are routed again into new drafts, as a
# withdrawal through the services routes them. Partner desks' users share
# one password hash (computed once; Argon2 per user would take minutes); their creation is on
# the audit trail. `updated_at` is the last step's date. Every date lies within the two years
# before `now`; nothing is dated in the future.

OPERATION_CODE = "OPERATION-H"
SIMULATED_DAYS = 730
# The lead team sends its referrals in waves, as the real operation's packages went out over
# months: the first three weeks after the import, then one every one to two months, each a
# little smaller than the one before, each sent over two weeks (the last one still going: what
# it has not reached yet is a draft). P1 referrals go at once.
FIRST_WAVE_DAY = 21
WAVE_GAP_DAYS = (28, 56)
WAVE_DAYS = 14
WAVE_DECAY = 0.85
# How closely a priority follows the decay: P2 referrals go mostly in the early waves, the P3
# and P4 packages evenly over the two years.
WAVE_FRONT_LOADING = {"P2": 1.0, "P3": 0.5, "P4": 0.0}
# The share sent on its own between the waves, any day from the first wave on, as it is ready.
BETWEEN_WAVES = 0.15
# Receivers acknowledge most referrals within the clock (24 hours for P1, 72 for the others);
# a desk short of staff, one time in fifty, takes weeks.
ACKNOWLEDGE_MEDIAN_HOURS = {"P1": 6, "P2": 30, "P3": 30, "P4": 30}
SLOW_DESK = 0.02
# Median days from one step to the next (spread as `_hours` says): acknowledgement to acceptance,
# decline or onward transfer; acceptance to the first outcome.
ACCEPT_DAYS, DECLINE_DAYS, TRANSFER_DAYS, OUTCOME_DAYS = 10, 14, 7, 100
INVESTIGATIONS = 836
CHILDREN_SAFEGUARDED = 146
WITHOUT_FOCAL_POINT = 0.12  # share of the tip's countries with no focal point in the directory
FLAGGED = 0.004  # share of holders investigators flag (access to children, ...)
PARTNER_LEADS = 0.002  # share of holders a partner desk refers on its own, from its own work
# In Paris: France's desk numbers 0 and 1 are its focal point's and the basic demo's bureau's.
INTERNATIONAL_BODY = ("Global Child Online Protection Network", "desk@gcopn.example.org", phones.desk("FR", 2))
PLACEHOLDER_NOTE = "Synthetic demo note."
# Deconfliction hits: each party acknowledges a hit within days (some take weeks); of the hits
# both have acknowledged, the parties agree a lead on this share within weeks.
HIT_ACKNOWLEDGE_DAYS, HIT_RESOLVE_DAYS = 2, 14
RESOLVED_HITS = 0.6
HIT_RESOLUTION_NOTE = "Synthetic demo note: lead agreed between the desks."


@dataclass
class ScenarioSummary:
    scale: float
    seed: int
    agencies: int = 0
    unrouted_countries: int = 0
    unrouted_holders: int = 0
    accounts: int = 0
    holders: int = 0
    holder_countries: int = 0
    lead_accounts: int = 0
    lead_holders: int = 0
    drafts_created: int = 0
    flagged: int = 0
    partner_leads: int = 0
    hits: int = 0
    hit_statuses: dict[str, int] = field(default_factory=dict)
    referrals: dict[str, int] = field(default_factory=dict)
    receiving_countries: int = 0
    investigations: int = 0
    arrests: int = 0
    children_safeguarded: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def report(self) -> str:
        statuses = ", ".join(f"{status} {n:,}" for status, n in sorted(self.referrals.items()))
        hit_statuses = ", ".join(f"{status} {n:,}" for status, n in sorted(self.hit_statuses.items()))
        return "\n".join([
            f"Operation H scenario loaded (scale {self.scale}, seed {self.seed}).",
            f"  agencies: {self.agencies:,}; {_count(self.unrouted_holders, 'holder')} in "
            f"{_count(self.unrouted_countries, 'country', 'countries')} of the tip's without a focal point, routed to the "
            "international body (the unrouted list)",
            f"  tip: {_count(self.accounts, 'account')}, {_count(self.holders, 'account holder')} in "
            f"{_count(self.holder_countries, 'country', 'countries')} ({_count(self.lead_accounts, 'account')}, "
            f"{_count(self.lead_holders, 'holder')} in {LEAD_COUNTRY})",
            f"  triage: {_count(self.flagged, 'holder')} flagged by investigators; "
            f"{_count(self.drafts_created, 'draft referral')}",
            f"  deconfliction: {_count(self.partner_leads, 'holder')} referred by partner desks on their own; "
            f"{_count(self.hits, 'hit')} with the operation's referrals ({hit_statuses})",
            f"  referrals: {statuses}; sent to {_count(self.receiving_countries, 'country', 'countries')}",
            f"  investigations {self.investigations:,}, arrests {self.arrests:,}, "
            f"children safeguarded {self.children_safeguarded:,}",
            "  timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()),
        ])


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def load_scenario(session, passwords, *, scale: float = 1.0, seed: int = 2019, now: datetime | None = None,
                  progress=None) -> ScenarioSummary:
    import time

    from sqlalchemy import select

    from app.demo import USERS, load_demo
    from app.models import Agency, Operation, User
    from app.services.audit import Actor
    from app.services.tips import importer

    clock = time.perf_counter()
    summary = ScenarioSummary(scale, seed)
    # Whole days: the scenario is the same all day long for a given seed.
    now = (now or datetime.now(timezone.utc)).replace(hour=0, minute=0, second=0, microsecond=0)
    start = now - timedelta(days=SIMULATED_DAYS)
    rng = random.Random(seed)

    load_demo(session, passwords, now=now)
    lead_email = next(email for email, _name, role, index in USERS if role.value == "liaison" and index == 0)
    lead_user = session.scalar(select(User).where(User.email == lead_email))
    places = countries(random.Random(seed))  # the tip's countries, as generate() draws them
    _directory(session, passwords, rng, places)
    operation = Operation(code=OPERATION_CODE, lead_agency_id=lead_user.agency_id, opened_on=start.date(),
                          description="Synthetic scenario at the scale of a real operation: one provider's tip, "
                                      "its account holders and two years of handoffs.")
    session.add(operation)
    session.flush()
    summary.seconds["directory"] = time.perf_counter() - clock

    clock = time.perf_counter()
    lead = Actor(lead_user, "demo")
    result = importer.import_tip(session, lead, operation.id, tip_csv(scale, seed), "operation-h-tip.csv",
                                 now=start + timedelta(hours=6), progress=progress)
    summary.drafts_created = len(result.routing.created)
    summary.seconds["import"] = time.perf_counter() - clock

    clock = time.perf_counter()
    summary.flagged = _flag_holders(session, lead, operation, rng, start + timedelta(days=2))
    summary.seconds["triage"] = time.perf_counter() - clock

    clock = time.perf_counter()
    summary.partner_leads = _partner_leads(session, rng, operation, start + timedelta(days=3))
    summary.seconds["partner leads"] = time.perf_counter() - clock

    clock = time.perf_counter()
    simulate(session, rng, operation, lead, now, scale=scale, progress=progress)
    summary.seconds["handoffs"] = time.perf_counter() - clock

    clock = time.perf_counter()
    _work_hits(session, rng, lead, now)
    summary.seconds["hits"] = time.perf_counter() - clock
    _figures(session, operation, summary)
    summary.agencies = session.scalar(select(func.count()).select_from(Agency)) or 0
    return summary


def _directory(session, passwords, rng: random.Random, places: list[str]) -> None:
    """A focal point for most of the tip's countries (the basic demo's agencies count), in its
    country's time zone, an international focal body, a liaison officer at each."""
    from sqlalchemy import select

    from app.demo import DEMO_PASSWORD
    from app.models import Agency, AgencyKind, Role, User
    from app.services import directory
    from app.services.audit import SYSTEM
    from app.services.tips import bulk

    covered = set(session.scalars(select(Agency.country_code).where(Agency.is_focal_point.is_(True),
                                                                    Agency.country_code.is_not(None))))
    open_places = [c for c in places if c not in covered]
    rng.shuffle(open_places)
    uncovered = round(len(open_places) * WITHOUT_FOCAL_POINT)
    kinds = [AgencyKind.POLICE] * 6 + [AgencyKind.CUSTOMS, AgencyKind.GOVERNMENT]
    created = []
    for code in sorted(open_places[uncovered:]):
        country = pycountry.countries.get(alpha_2=code)
        name = getattr(country, "common_name", None) or country.name
        phone = phones.desk(code)  # every place has a mobile numbering plan
        created.append(directory.create_agency(session, SYSTEM, directory.AgencyData(
            name=f"{name} Online Child Protection Desk"[:200], kind=rng.choice(kinds), country_code=code,
            desk_email=f"focal.{code.lower()}@partners.example.org", desk_phone=phone, timezone=time_zone(code),
            is_focal_point=True)))
    name, email, phone = INTERNATIONAL_BODY
    created.append(directory.create_agency(session, SYSTEM, directory.AgencyData(
        name=name, kind=AgencyKind.INTERNATIONAL, country_code=None, desk_email=email, desk_phone=phone,
        timezone="Europe/Paris", is_focal_point=True)))
    shared_hash = passwords.hash(DEMO_PASSWORD)
    users = [User(email=f"liaison.{(a.country_code or 'intl').lower()}.{a.id}@partners.example.org",
                  name=f"Liaison desk {a.country_code or 'international'}", password_hash=shared_hash,
                  role=Role.LIAISON, agency_id=a.id) for a in created]
    session.add_all(users)
    session.flush()
    bulk.audit_many(session, SYSTEM, [("user.create", "user", u.id, {"email": u.email, "role": "liaison"})
                                      for u in users])


def _flag_holders(session, actor, operation, rng: random.Random, when: datetime) -> int:
    """Investigators' findings on a few holders (the rule then makes some of them P1)."""
    from sqlalchemy import select

    from app.models import Holder, HolderRouting
    from app.services.tips.holders import record_risk_flags_batch

    candidates = session.scalars(
        select(Holder.id).where(Holder.operation_id == operation.id, Holder.merged_into_id.is_(None),
                                Holder.routing != HolderRouting.UNPLACED).order_by(Holder.id)).all()
    count = min(len(candidates), max(1, round(len(candidates) * FLAGGED)))
    chosen = sorted(rng.sample(list(candidates), count))
    flags = {}
    for holder_id in chosen:
        flags[holder_id] = {
            "risk_access_to_children": rng.random() < 0.6,
            "risk_position_of_authority": rng.random() < 0.2,
            "risk_previous_convictions": rng.random() < 0.3,
            "risk_plans_to_meet": rng.random() < 0.1,
            "risk_contact_offending": rng.random() < 0.06,
        }
    record_risk_flags_batch(session, actor, operation.id, flags, now=when)
    return count


def _desks(session) -> dict:
    """Who acts for each agency in the scenario: its first liaison officer or manager."""
    from sqlalchemy import select

    from app.models import Role, User
    from app.services.audit import Actor

    desks = {}
    for user in session.scalars(select(User).where(User.role.in_([Role.LIAISON, Role.MANAGER])).order_by(User.id)):
        desks.setdefault(user.agency_id, Actor(user, "demo"))
    return desks


def _international_body(session) -> int | None:
    from sqlalchemy import select

    from app.models import Agency, AgencyKind

    return session.scalar(select(Agency.id).where(Agency.kind == AgencyKind.INTERNATIONAL,
                                                  Agency.is_focal_point.is_(True)).order_by(Agency.id))


def _partner_leads(session, rng: random.Random, operation, since: datetime) -> int:
    """Partner desks that hold some of the tip's holders from their own work: each refers one,
    by an e-mail address the tip holds too, to the international body within two months of
    `since`, which acknowledges it. The lead's referral of that holder and the partner's then
    meet as a deconfliction hit, as two agencies working one target do."""
    from sqlalchemy import select

    from app.demo import PLACEHOLDER_MATERIAL, PLACEHOLDER_SUMMARY
    from app.models import Agency, AgencyKind, Holder, Priority, TipAccount
    from app.services import referrals, subjects

    first_email: dict[int, tuple[int, str, str]] = {}  # holder -> (its receiving desk, country, e-mail)
    for holder_id, agency_id, country, email in session.execute(
        select(Holder.id, Holder.receiver_agency_id, Agency.country_code, TipAccount.email)
        .join(TipAccount, TipAccount.holder_id == Holder.id)
        .join(Agency, Agency.id == Holder.receiver_agency_id)
        .where(Holder.operation_id == operation.id, Holder.merged_into_id.is_(None), TipAccount.email.is_not(None),
               Agency.kind != AgencyKind.INTERNATIONAL, Agency.id != operation.lead_agency_id)
        .order_by(Holder.id, TipAccount.id)
    ):
        first_email.setdefault(holder_id, (agency_id, country, email))
    international = _international_body(session)
    if international is None or not first_email:
        return 0
    desks = _desks(session)
    chosen = sorted(rng.sample(sorted(first_email), max(1, round(len(first_email) * PARTNER_LEADS))))
    for holder_id in chosen:
        agency_id, country, email = first_email[holder_id]
        partner = desks[agency_id]
        at = since + timedelta(hours=rng.uniform(0, 60 * 24))
        referral = referrals.create_draft(session, partner, referrals.ReferralData(
            receiver_agency_id=international, jurisdiction=country, priority=Priority.P3,
            summary=PLACEHOLDER_SUMMARY, material_description=PLACEHOLDER_MATERIAL), year=at.year)
        referral.created_at = referral.updated_at = referral.events[0].at = at
        subjects.add_subject(session, partner, referral.id, "Account holder", email, at=at)
        sent = at + timedelta(hours=rng.uniform(1, 48))
        referrals.transition(session, partner, referral.id, "send", None, at=sent)
        referrals.transition(session, desks[international], referral.id, "acknowledge", None,
                             at=sent + timedelta(hours=rng.lognormvariate(3.7, 0.9)))
    return len(chosen)


def _waves(rng: random.Random, start: datetime) -> list[datetime]:
    """When each of the lead team's waves of referrals starts."""
    waves, day = [], float(FIRST_WAVE_DAY)
    while day < SIMULATED_DAYS:
        waves.append(start + timedelta(days=day))
        day += rng.uniform(*WAVE_GAP_DAYS)
    return waves


def _acknowledgement_hours(rng: random.Random, priority: str) -> float:
    if rng.random() < SLOW_DESK:
        return rng.uniform(5 * 24, 45 * 24)
    return rng.lognormvariate(math.log(ACKNOWLEDGE_MEDIAN_HOURS[priority]), 0.8)


def _hours(rng: random.Random, median_days: float) -> float:
    """A step's delay in hours, lognormal around the median: two in three within half to twice it."""
    return rng.lognormvariate(math.log(median_days * 24), 0.8)


@dataclass
class _Step:
    action: str
    at: datetime
    side: str  # "sender" or "receiver"
    note: str = ""


def simulate(session, rng: random.Random, operation, lead, now: datetime, *, scale: float = 1.0,
             progress=None) -> None:
    """Two years of handoffs for the operation's draft referrals (see the comment above)."""
    from sqlalchemy import bindparam, func, insert, select, update

    from app.models import Agency, Holder, Outcome, Referral, ReferralEvent, Status
    from app.models import referral_subjects
    from app.services import deconfliction
    from app.services.referrals import today_of, next_references
    from app.services.tips import bulk
    from app.services.tips.holders import reroute_after_withdrawal
    from app.services.tips.routing import load_directory

    # Each draft's clock starts at its last change (triage may have edited it after the import).
    last_change = (select(ReferralEvent.referral_id, func.max(ReferralEvent.at).label("at"))
                   .group_by(ReferralEvent.referral_id).subquery())
    drafts = session.execute(
        select(Referral.id, Referral.reference, Referral.priority, Referral.jurisdiction, Referral.receiver_agency_id,
               Referral.sender_agency_id, func.coalesce(last_change.c.at, Referral.created_at).label("changed_at"))
        .outerjoin(last_change, last_change.c.referral_id == Referral.id)
        .where(Referral.operation_id == operation.id, Referral.status == Status.DRAFT).order_by(Referral.id)
    ).all()
    if progress:
        progress("simulate", 0, len(drafts))
    actors = _desks(session)
    names = dict(session.execute(select(Agency.id, Agency.name)).all())
    international = _international_body(session)
    focal_of = load_directory(session, operation.lead_agency_id).focal  # country -> its focal point, as routed
    latest = now - timedelta(minutes=5)

    def later(at: datetime, hours: float) -> datetime:
        return at + timedelta(hours=hours)

    def onward(row) -> int | None:
        """Where a receiver passes a case on: a country's desk to the international body, the
        international body to the focal point of the case's country (None: nowhere to pass it)."""
        target = focal_of.get(row.jurisdiction) if row.receiver_agency_id == international else international
        return None if target in (row.receiver_agency_id, row.sender_agency_id) else target

    # 1. Send, withdraw, acknowledge: each referral's own clock. The lead team sends the urgent
    # at once and the rest in waves.
    waves = _waves(rng, now - timedelta(days=SIMULATED_DAYS))
    wave_weights = {priority: list(itertools.accumulate(WAVE_DECAY ** (k * loading) for k in range(len(waves))))
                    for priority, loading in WAVE_FRONT_LOADING.items()}
    plans: dict[int, list[_Step]] = {}
    acknowledged: list = []
    for row in drafts:
        steps: list[_Step] = []
        plans[row.id] = steps
        if rng.random() < 0.02:
            continue  # still a draft: the lead team has not got to it
        priority = row.priority.value
        if priority == "P1":
            sent = later(row.changed_at, rng.uniform(1, 12))
        elif rng.random() < BETWEEN_WAVES:
            sent = later(waves[0], rng.uniform(0, (latest - waves[0]) / timedelta(hours=1)))
        else:
            wave = rng.choices(waves, cum_weights=wave_weights[priority])[0]
            sent = later(wave, rng.uniform(0, WAVE_DAYS * 24))
        steps.append(_Step("send", sent, "sender"))
        if rng.random() < 0.012:
            steps.append(_Step("withdraw", later(sent, rng.uniform(1, 48)), "sender", PLACEHOLDER_NOTE))
            continue
        steps.append(_Step("acknowledge", later(sent, _acknowledgement_hours(rng, priority)), "receiver"))
        acknowledged.append(row)

    # 2. Which acknowledged referrals become investigations: weighted by priority, exactly the
    # scenario's share (836 at full scale), among those whose acceptance has happened by now.
    weight = {"P1": 6.0, "P2": 2.0, "P3": 1.5, "P4": 1.0}
    accepted_at = {row.id: later(plans[row.id][-1].at, _hours(rng, ACCEPT_DAYS)) for row in acknowledged}
    decided = [row for row in acknowledged if accepted_at[row.id] <= latest]
    wanted = min(len(decided), round(INVESTIGATIONS * scale))
    keyed = sorted(decided, key=lambda r: -(rng.random() ** (1 / weight[r.priority.value])))
    accepted = {row.id for row in keyed[:wanted]}
    outcomes: list[dict] = []
    transfers: list[tuple] = []  # (row, at, target agency)
    for row in acknowledged:
        steps = plans[row.id]
        ack = steps[-1].at
        if row.id in accepted:
            steps.append(_Step("accept", accepted_at[row.id], "receiver"))
            if rng.random() < 0.75:
                at = later(steps[-1].at, _hours(rng, OUTCOME_DAYS))
                arrests = 1 + (rng.random() < 0.3)
                outcome = {"referral_id": row.id, "at": at, "arrests": arrests,
                           "charges": arrests + rng.randint(0, 3), "children_safeguarded": 0}
                outcomes.append(outcome)
                steps.append(_Step("outcome", at, "receiver"))
                if rng.random() < 0.55:
                    steps.append(_Step("close", later(at, rng.uniform(5 * 24, 60 * 24)), "receiver"))
            continue
        draw = rng.random()
        if draw < 0.08:
            target = onward(row)
            if target is None:
                continue  # the receiver keeps the case and works it
            # The tip's drafts carry H2: the sender consents before the receiver transfers.
            steps.append(_Step("consent", later(ack, rng.uniform(1, 48)), "sender"))
            at = later(steps[-1].at, _hours(rng, TRANSFER_DAYS))
            steps.append(_Step("transfer", at, "receiver", PLACEHOLDER_NOTE))
            transfers.append((row, at, target))
        elif draw < 0.25:  # the rest stay acknowledged: worked, not (yet) an investigation
            steps.append(_Step("decline", later(ack, _hours(rng, DECLINE_DAYS)), "receiver", PLACEHOLDER_NOTE))
    # Children safeguarded: the scenario's total, spread over the outcome reports made by now.
    reported = [outcome for outcome in outcomes if outcome["at"] <= latest]
    if reported:
        for _ in range(round(CHILDREN_SAFEGUARDED * scale)):
            rng.choice(reported)["children_safeguarded"] += 1

    # 3. Cut every history at `now`: a step not reached yet has not happened.
    targets = {}
    for row, at, target in transfers:
        targets[row.id] = (at, target)
    rows_by_id = {row.id: row for row in drafts}
    referral_updates, events, entries, outcome_rows = [], [], [], []
    outcome_of = {o["referral_id"]: o for o in outcomes}
    new_referrals = []
    status_after = {"send": Status.SENT, "withdraw": Status.WITHDRAWN, "acknowledge": Status.ACKNOWLEDGED,
                    "accept": Status.ACCEPTED, "decline": Status.DECLINED, "transfer": Status.TRANSFERRED,
                    "close": Status.CLOSED}
    stamp = {"send": "sent_at", "withdraw": "withdrawn_at", "acknowledge": "acknowledged_at", "accept": "accepted_at",
             "decline": "declined_at", "transfer": "transferred_at", "close": "closed_at"}
    for referral_id, steps in plans.items():
        row = rows_by_id[referral_id]
        status = Status.DRAFT
        stamps = {name: None for name in stamp.values()}
        stamps["transfer_consent_at"] = None
        done = 0
        for step in steps:
            if step.at > latest:
                break
            actor = lead if step.side == "sender" else actors[row.receiver_agency_id]
            if step.action == "consent":
                stamps["transfer_consent_at"] = step.at
                events.append(_event(referral_id, step.at, "consent", status, status, actor,
                                     "Consent to onward transfer given."))
                entries.append(("referral.consent", "referral", referral_id, None, actor))
            elif step.action == "outcome":
                outcome = outcome_of[referral_id]
                note = (f"Arrests {outcome['arrests']}, charges {outcome['charges']}, children safeguarded "
                        f"{outcome['children_safeguarded']}.")
                # The recording desk's own day (`record_outcome` refuses a later one as in the future).
                outcome_rows.append({
                    "referral_id": referral_id, "occurred_on": today_of(session, actor, step.at),
                    "arrests": outcome["arrests"], "charges": outcome["charges"],
                    "children_safeguarded": outcome["children_safeguarded"],
                    "note": "Synthetic outcome.", "recorded_at": step.at, "recorded_by_id": actor.user_id,
                    "agency_id": actor.agency_id})
                events.append(_event(referral_id, step.at, "outcome", status, status, actor, note))
                entries.append(("referral.outcome", "referral", referral_id, {
                    "arrests": outcome["arrests"], "charges": outcome["charges"],
                    "children_safeguarded": outcome["children_safeguarded"]}, actor))
            else:
                target_status = status_after[step.action]
                detail = {"from": status.value, "to": target_status.value}
                note = step.note
                if step.action == "transfer":
                    at, target = targets[referral_id]
                    new = {"source": row, "at": at, "target": target, "actor": actor}
                    new_referrals.append(new)
                    note = f"Transferred to {names[target]} as {{new_reference}}. {step.note}".strip()
                    new["event_index"] = len(events)
                    new["entry_index"] = len(entries)
                events.append(_event(referral_id, step.at, step.action, status, target_status, actor, note))
                entries.append((f"referral.{step.action}", "referral", referral_id, detail, actor))
                stamps[stamp[step.action]] = step.at
                status = target_status
            done += 1
        if done:
            referral_updates.append({"id": referral_id, "status": status, "steps": done,
                                     "updated_at": steps[done - 1].at, **stamps})

    # 4. Transfers: new referrals, already sent, with the same subjects.
    transferred_ids = []
    successors: list[dict] = []  # their rows
    if new_referrals:
        sources = session.execute(select(Referral.__table__).where(
            Referral.id.in_([n["source"].id for n in new_referrals]))).mappings().all()
        source_of = {s["id"]: s for s in sources}
        ids = bulk.allocate_ids(session, Referral.__table__, len(new_referrals))
        by_year: dict[int, list[dict]] = {}
        for new, referral_id in zip(new_referrals, ids):
            new["id"] = referral_id
            by_year.setdefault(new["at"].year, []).append(new)
        for year, group in sorted(by_year.items()):
            for new, reference in zip(group, next_references(session, len(group), year=year)):
                new["reference"] = reference
        for new in new_referrals:
            source = dict(source_of[new["source"].id])
            actor, at = new["actor"], new["at"]
            source.update(id=new["id"], reference=new["reference"], version=1, sender_agency_id=source["receiver_agency_id"],
                          receiver_agency_id=new["target"], status=Status.SENT, sent_at=at, created_at=at,
                          updated_at=at, created_by_id=actor.user_id, transferred_from_id=new["source"].id,
                          acknowledged_at=None, accepted_at=None, declined_at=None, transferred_at=None,
                          withdrawn_at=None, closed_at=None, transfer_consent_at=None)
            successors.append(source)
            events.append(_event(new["id"], at, "create", None, Status.DRAFT, actor,
                                 f"Transfer of {new['source'].reference}."))
            events.append(_event(new["id"], at, "send", Status.DRAFT, Status.SENT, actor, PLACEHOLDER_NOTE))
            entries.append(("referral.create", "referral", new["id"], {
                "reference": new["reference"], "transferred_from": new["source"].reference}, actor))
            # The agency it was transferred to works it as the first receivers work theirs.
            receiver = actors[new["target"]]
            acknowledged_at = later(at, _acknowledgement_hours(rng, source["priority"].value))
            declined_at = later(acknowledged_at, _hours(rng, DECLINE_DAYS)) if rng.random() < 0.2 else None
            for action, when, target_status in (("acknowledge", acknowledged_at, Status.ACKNOWLEDGED),
                                                ("decline", declined_at, Status.DECLINED)):
                if when is None or when > latest:
                    break
                events.append(_event(new["id"], when, action, source["status"], target_status, receiver,
                                     PLACEHOLDER_NOTE if action == "decline" else ""))
                entries.append((f"referral.{action}", "referral", new["id"],
                                {"from": source["status"].value, "to": target_status.value}, receiver))
                source.update({"status": target_status, f"{action}d_at": when, "updated_at": when,
                               "version": source["version"] + 1})
            events[new["event_index"]]["note"] = events[new["event_index"]]["note"].replace(
                "{new_reference}", new["reference"])
            action, object_type, object_id, detail, who = entries[new["entry_index"]]
            entries[new["entry_index"]] = (action, object_type, object_id, {**detail, "new_reference": new["reference"]}, who)
            transferred_ids.append(new["id"])
        session.execute(insert(Referral.__table__), successors)
        links = session.execute(select(referral_subjects.c.referral_id, referral_subjects.c.subject_id).where(
            referral_subjects.c.referral_id.in_([n["source"].id for n in new_referrals]))).all()
        subjects_of: dict[int, list[int]] = {}
        for referral_id, subject_id in links:
            subjects_of.setdefault(referral_id, []).append(subject_id)
        session.execute(insert(referral_subjects), [
            {"referral_id": new["id"], "subject_id": subject_id, "added_at": new["at"]}
            for new in new_referrals for subject_id in subjects_of.get(new["source"].id, [])])

    # 5. Write it all.
    table = Referral.__table__
    if referral_updates:
        columns = ["status", "updated_at", *stamp.values(), "transfer_consent_at"]
        session.connection().execute(
            update(table).where(table.c.id == bindparam("b_id")).values(
                {**{c: bindparam(f"b_{c}") for c in columns}, "version": table.c.version + bindparam("b_steps")}),
            [{f"b_{k}": v for k, v in u.items()} for u in referral_updates],
        )
    # Holders on a declined referral (or on one transferred on to it) wait on the review list,
    # as `referrals.transition` puts them there.
    declined = [(u["id"], u["declined_at"]) for u in referral_updates if u["status"] is Status.DECLINED]
    declined += [(new["source"].id, row["declined_at"]) for new, row in zip(new_referrals, successors)
                 if row["status"] is Status.DECLINED]
    if declined:
        holders = Holder.__table__
        session.connection().execute(
            update(holders).where(holders.c.referral_id == bindparam("b_referral")).values(
                needs_review=True, updated_at=bindparam("b_at")),
            [{"b_referral": referral_id, "b_at": at} for referral_id, at in declined])
    for start in range(0, len(events), 20_000):
        session.execute(insert(ReferralEvent.__table__), events[start:start + 20_000])
    if outcome_rows:
        session.execute(insert(Outcome.__table__), outcome_rows)
    bulk.audit_many(session, lead, entries)
    # The holders of a withdrawn referral are routed again at its withdrawal, as
    # `referrals.transition` routes them: into a new draft, rather than off every work list.
    for withdrawn_at, referral_id in sorted((u["withdrawn_at"], u["id"]) for u in referral_updates
                                            if u["status"] is Status.WITHDRAWN):
        reroute_after_withdrawal(session, lead, operation.id, [referral_id], now=withdrawn_at)
    if transferred_ids:
        deconfliction.refresh_hits(session, lead, transferred_ids, now=latest)
    session.expire_all()
    if progress:
        progress("simulate", len(drafts), len(drafts))


def _work_hits(session, rng: random.Random, lead, now: datetime) -> None:
    """The parties of every hit acknowledge it, and agree a lead on most of those both have
    acknowledged, through deconfliction.acknowledge and resolve, in the order the steps happen.
    Those services stamp the time they run: each step's stamps on the hit, and the notification
    it sends the other party, are then dated back to the step (as the basic demo dates a draft's
    creation back)."""
    from sqlalchemy import bindparam, select, update

    from app.models import Hit, Notification, NotificationKind
    from app.services import deconfliction

    latest = now - timedelta(minutes=5)
    actors = {**_desks(session), lead.agency_id: lead}
    steps = []  # (at, hit, acting agency, the lead it agrees, None for an acknowledgement)
    resolvable = []
    for hit in session.scalars(select(Hit).order_by(Hit.id)):
        parties = sorted({hit.agency_low_id, hit.agency_high_id})
        acknowledged = [hit.created_at + timedelta(hours=_hours(rng, HIT_ACKNOWLEDGE_DAYS)) for _ in parties]
        steps += [(at, hit.id, agency, None) for agency, at in zip(parties, acknowledged) if at <= latest]
        resolved = max(acknowledged) + timedelta(hours=_hours(rng, HIT_RESOLVE_DAYS))
        if resolved <= latest:
            resolvable.append((resolved, hit.id, parties))
    for at, hit_id, parties in rng.sample(resolvable, round(len(resolvable) * RESOLVED_HITS)):
        steps.append((at, hit_id, rng.choice(parties), rng.choice(parties)))

    stamps: dict[int, dict] = {}
    acknowledgements, resolutions = [], []
    for at, hit_id, agency, lead_agency in sorted(steps):
        stamp = stamps.setdefault(hit_id, {"b_id": hit_id, "b_acknowledged_low_at": None,
                                           "b_acknowledged_high_at": None, "b_resolved_at": None})
        if lead_agency is None:
            hit = deconfliction.acknowledge(session, actors[agency], hit_id, None)
            for side in hit.sides_of(agency):
                stamp[f"b_acknowledged_{side.value}_at"] = at
            acknowledgements.append({"b_hit": hit_id, "b_agency": agency, "b_at": at})
        else:
            deconfliction.resolve(session, actors[agency], hit_id, None, lead_agency, HIT_RESOLUTION_NOTE)
            stamp["b_resolved_at"] = at
            resolutions.append({"b_hit": hit_id, "b_at": at})
        stamp["b_updated_at"] = at
    if not steps:
        return
    hits, notifications = Hit.__table__, Notification.__table__
    columns = ("acknowledged_low_at", "acknowledged_high_at", "resolved_at", "updated_at")
    connection = session.connection()
    connection.execute(update(hits).where(hits.c.id == bindparam("b_id")).values(
        {column: bindparam(f"b_{column}") for column in columns}), list(stamps.values()))
    # An acknowledgement tells the other party; a resolution too.
    connection.execute(update(notifications).where(
        notifications.c.hit_id == bindparam("b_hit"), notifications.c.kind == NotificationKind.HIT_ACKNOWLEDGED,
        notifications.c.agency_id != bindparam("b_agency")).values(created_at=bindparam("b_at")), acknowledgements)
    if resolutions:
        connection.execute(update(notifications).where(
            notifications.c.hit_id == bindparam("b_hit"), notifications.c.kind == NotificationKind.HIT_RESOLVED,
        ).values(created_at=bindparam("b_at")), resolutions)
    session.expire_all()


def _event(referral_id, at, action, from_status, to_status, actor, note="") -> dict:
    return {"referral_id": referral_id, "at": at, "action": action,
            "from_status": from_status and from_status.value, "to_status": to_status and to_status.value,
            "user_id": actor.user_id, "agency_id": actor.agency_id, "note": note}


def _figures(session, operation, summary: ScenarioSummary) -> None:
    from sqlalchemy import or_, select

    from app.models import Hit, Holder, HolderRouting, Outcome, Referral, Status, TipAccount

    summary.accounts = session.scalar(select(func.count()).select_from(TipAccount).where(
        TipAccount.operation_id == operation.id)) or 0
    live = select(Holder).where(Holder.operation_id == operation.id, Holder.merged_into_id.is_(None)).subquery()
    summary.holders = session.scalar(select(func.count()).select_from(live)) or 0
    summary.holder_countries = session.scalar(select(func.count(func.distinct(live.c.jurisdiction)))) or 0
    summary.unrouted_holders, summary.unrouted_countries = session.execute(
        select(func.count(), func.count(func.distinct(live.c.jurisdiction)))
        .where(live.c.routing == HolderRouting.INTERNATIONAL)).one()
    summary.lead_holders = session.scalar(select(func.count()).select_from(live).where(
        live.c.jurisdiction == LEAD_COUNTRY)) or 0
    summary.lead_accounts = session.scalar(select(func.sum(live.c.accounts)).where(
        live.c.jurisdiction == LEAD_COUNTRY)) or 0
    in_operation = Referral.operation_id == operation.id
    summary.referrals = {status.value: n for status, n in session.execute(
        select(Referral.status, func.count()).where(in_operation).group_by(Referral.status))}
    summary.receiving_countries = session.scalar(select(func.count(func.distinct(Referral.jurisdiction))).where(
        in_operation, Referral.sent_at.is_not(None))) or 0
    summary.investigations = session.scalar(select(func.count()).select_from(Referral).where(
        in_operation, Referral.status.in_([Status.ACCEPTED, Status.CLOSED]))) or 0
    arrests, children = session.execute(select(func.sum(Outcome.arrests), func.sum(Outcome.children_safeguarded))
                                        .join(Referral, Referral.id == Outcome.referral_id).where(in_operation)).one()
    summary.arrests, summary.children_safeguarded = arrests or 0, children or 0
    in_scenario = select(Referral.id).where(in_operation).scalar_subquery()
    summary.hit_statuses = {status.value: n for status, n in session.execute(
        select(Hit.status, func.count()).where(or_(Hit.referral_low_id.in_(in_scenario),
                                                   Hit.referral_high_id.in_(in_scenario))).group_by(Hit.status))}
    summary.hits = sum(summary.hit_statuses.values())
