"""The demo: invented agencies, people and referrals with neutral placeholder text.

The loader drives the same services a person would, replaying history with past dates,
so the demo exercises the real lifecycle. New scenarios add a module beside this one.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.demo import phones
from app.models import AgencyKind, Operation, Priority, Role, User
from app.services import directory, referrals, subjects
from app.services.audit import SYSTEM, Actor
from app.services.users import Passwords, create_user

DEMO_PASSWORD = "handoff-demo-2026"
PLACEHOLDER_MATERIAL = "Graded material, description held by sending agency."
PLACEHOLDER_SUMMARY = "Synthetic demo referral. Account holder details held by the sending agency."

# name, kind, country, desk e-mail, desk phone, time zone, focal point. Desk phones are in the
# ranges reserved for drama where a country has one (AU, GB, North America), else among the desk
# numbers of a range no numbering plan assigns: no one's number, and no suspect's.
AGENCIES = [
    ("Wellington Online Safety Unit", AgencyKind.POLICE, "NZ", "desk@wosu.example.org", phones.desk("NZ"), "Pacific/Auckland", True),
    ("Harbour Customs Intelligence", AgencyKind.CUSTOMS, "NZ", "intel@hci.example.org", phones.desk("NZ", 1), "Pacific/Auckland", False),
    ("Southern Cyber Investigations", AgencyKind.POLICE, "AU", "referrals@sci.example.org", "+61 2 5550 0102", "Australia/Sydney", True),
    ("Thames Child Protection Command", AgencyKind.POLICE, "GB", "liaison@tcpc.example.org", "+44 20 7946 0103", "Europe/London", True),
    ("Prairie Internet Crimes Unit", AgencyKind.POLICE, "CA", "desk@picu.example.org", "+1 613 555 0104", "America/Toronto", True),
    ("Rhine Cybercrime Office", AgencyKind.POLICE, "DE", "kontakt@rco.example.org", phones.desk("DE"), "Europe/Berlin", True),
    ("Archipelago Protection Task Force", AgencyKind.GOVERNMENT, "PH", "desk@aptf.example.org", phones.desk("PH"), "Asia/Manila", True),
    ("Interagency Liaison Bureau", AgencyKind.INTERNATIONAL, None, "bureau@ilb.example.org", phones.desk("FR", 1), "Europe/Paris", False),
]

# e-mail, name, role, agency index
USERS = [
    ("admin@handoff.example", "Ari Admin", Role.ADMIN, 0),
    ("manager.nz@handoff.example", "Mere Manager", Role.MANAGER, 0),
    ("liaison.nz@handoff.example", "Lena Liaison", Role.LIAISON, 0),
    ("viewer.nz@handoff.example", "Vic Viewer", Role.VIEWER, 0),
    ("liaison.customs@handoff.example", "Cam Customs", Role.LIAISON, 1),
    ("liaison.au@handoff.example", "Alex Southern", Role.LIAISON, 2),
    ("manager.au@handoff.example", "Morgan Southern", Role.MANAGER, 2),
    ("liaison.gb@handoff.example", "Grace Thames", Role.LIAISON, 3),
    ("liaison.ca@handoff.example", "Casey Prairie", Role.LIAISON, 4),
    ("liaison.de@handoff.example", "Dana Rhine", Role.LIAISON, 5),
    ("liaison.ph@handoff.example", "Pat Archipelago", Role.LIAISON, 6),
    ("liaison.int@handoff.example", "Ines Bureau", Role.LIAISON, 7),
]

# How the ~30 referrals are spread: final status -> count.
SPREAD = {
    "draft": 3, "sent": 6, "acknowledged": 4, "accepted": 5, "closed": 3,
    "declined": 3, "transferred": 2, "withdrawn": 2,
}
PATHS = {
    "draft": [],
    "sent": ["send"],
    "acknowledged": ["send", "acknowledge"],
    "accepted": ["send", "acknowledge", "accept"],
    "closed": ["send", "acknowledge", "accept", "outcome", "close"],
    "declined": ["send", "acknowledge", "decline"],
    "transferred": ["send", "consent", "acknowledge", "transfer"],
    "withdrawn": ["send", "withdraw"],
}


def load_demo(session: Session, passwords: Passwords, seed: int = 7, *, now: datetime | None = None) -> None:
    """The demo's agencies, users and referrals; their history runs up to `now` (the present
    by default; the Operation H scenario passes its own, so that a seed gives the same data)."""
    rng = random.Random(seed)
    now = now or utcnow()
    agencies = [
        directory.create_agency(session, SYSTEM, directory.AgencyData(
            name=name, kind=kind, country_code=country, desk_email=email, desk_phone=phone,
            timezone=tz, is_focal_point=focal))
        for name, kind, country, email, phone, tz, focal in AGENCIES
    ]
    users_by_agency: dict[int, User] = {}
    for email, name, role, index in USERS:
        user = create_user(session, SYSTEM, passwords, email=email, name=name, password=DEMO_PASSWORD,
                           role=role, agency_id=agencies[index].id)
        if role in (Role.LIAISON, Role.MANAGER):
            users_by_agency.setdefault(agencies[index].id, user)

    lead = agencies[0]
    operation = Operation(code="HARBOUR", lead_agency_id=lead.id, opened_on=now.date() - timedelta(days=120),
                          description="Synthetic demo operation built from a provider tip.")
    session.add(operation)
    session.flush()

    senders = [agencies[0], agencies[0], agencies[0], agencies[2], agencies[3], agencies[1]]
    planned = []
    for final_status, count in SPREAD.items():
        for _ in range(count):
            sender = rng.choice(senders)
            receivers = [a for a in agencies if a.id != sender.id and a.id in users_by_agency]
            if final_status == "transferred":  # a country's agency passes the case on to the bureau
                receivers = [a for a in receivers if a.kind is not AgencyKind.INTERNATIONAL]
            receiver = rng.choice(receivers)
            # History starts between 2 and 90 days ago; some sent referrals are inside their clock.
            start = now - timedelta(days=rng.uniform(2, 90))
            if final_status == "sent" and rng.random() < 0.5:
                start = now - timedelta(hours=rng.uniform(3, 22))
            planned.append((start, final_status, sender, receiver))
    # Written in the order they started: references count up with time, and a hit is never
    # older than the referrals it pairs (a transfer's successor aside: it is written with the
    # referral it continues).
    for start, final_status, sender, receiver in sorted(planned, key=lambda plan: plan[0]):
        _demo_referral(session, rng, now, start, sender, receiver, operation, users_by_agency, agencies, final_status)


def _demo_referral(session, rng, now, start, sender, receiver, operation, users_by_agency, agencies, final_status):
    sender_actor = Actor(users_by_agency[sender.id], "demo")
    receiver_actor = Actor(users_by_agency[receiver.id], "demo")
    priority = rng.choice([Priority.P1, Priority.P2, Priority.P2, Priority.P3, Priority.P3, Priority.P4])
    data = referrals.ReferralData(
        receiver_agency_id=receiver.id,
        jurisdiction=receiver.country_code or rng.choice(["FJ", "TO", "WS"]),
        priority=priority,
        operation_id=operation.id if rng.random() < 0.7 else None,
        risk_access_to_children=rng.random() < 0.3,
        risk_position_of_authority=rng.random() < 0.1,
        risk_previous_convictions=rng.random() < 0.2,
        risk_plans_to_meet=rng.random() < 0.05,
        risk_contact_offending=rng.random() < 0.05,
        grade_a=rng.randint(0, 5), grade_b=rng.randint(0, 20), grade_c=rng.randint(0, 60),
        material_description=PLACEHOLDER_MATERIAL,
        summary=PLACEHOLDER_SUMMARY,
    )
    referral = referrals.create_draft(session, sender_actor, data, year=start.year)
    at = referral.created_at = referral.updated_at = referral.events[0].at = start
    _demo_subject(session, rng, sender_actor, referral.id, start)
    for step in PATHS[final_status]:  # at realistic intervals
        at = at + timedelta(hours=rng.uniform(2, 60))
        at = min(at, now - timedelta(minutes=5))
        if step == "outcome":
            referrals.record_outcome(session, receiver_actor, referral.id, referrals.OutcomeData(
                occurred_on=at.astimezone(ZoneInfo(receiver_actor.user.display_timezone)).date(),  # the desk's day
                arrests=rng.randint(0, 2), charges=rng.randint(0, 3), children_safeguarded=rng.randint(0, 2),
                note="Synthetic outcome."), at=at)
            continue
        if step == "consent":
            referrals.grant_transfer_consent(session, sender_actor, referral.id, None, at=at)
            continue
        actor = sender_actor if referrals.TRANSITIONS[step].side == "sender" else receiver_actor
        note = "Synthetic demo note." if step in ("decline", "withdraw", "transfer") else ""
        target = None
        if step == "transfer":  # to the international bureau (another country's agency has no part in the case)
            target = next(a for a in agencies if a.kind is AgencyKind.INTERNATIONAL)
        referrals.transition(session, actor, referral.id, step, None, note, transfer_to_agency_id=target and target.id, at=at)


# A few account holders turn up in referrals of several agencies: the demo's hits.
SHARED_IDENTIFIERS = ["harbour.lights@example.org", phones.unassigned("NZ", 990_142), "tide.watcher@example.net",
                      "2001:db8::42"]


def _demo_subject(session, rng, actor, referral_id, at: datetime) -> None:
    phone = phones.unassigned("AU", phones.DESKS + rng.randrange(10**8) % (phones.capacity("AU") - phones.DESKS))
    lines = [f"holder{referral_id:03d}@example.org", phone]
    if rng.random() < 0.3:
        lines.append(rng.choice(SHARED_IDENTIFIERS))
    subjects.add_subject(session, actor, referral_id, "Account holder", "\n".join(lines), at=at)


def demo_logins(session: Session) -> list[tuple[str, str, str]]:
    emails = [email for email, *_ in USERS]
    rows = session.scalars(select(User).where(User.email.in_(emails))).all()
    order = {email: i for i, email in enumerate(emails)}
    return [(u.email, u.role.value, u.agency.name) for u in sorted(rows, key=lambda u: order[u.email])]
