"""A small world for tests: three agencies in three countries, an international body, a user
of every role in each, and an operation led by the third agency."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from app.db import utcnow
from app.models import Agency, AgencyKind, Operation, Priority, Role, User
from app.services import referrals
from app.services.audit import Actor
from app.services.users import create_user
from app.services.audit import SYSTEM

PASSWORD = "correct-horse-battery"


@dataclass
class World:
    agencies: dict[str, Agency] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)  # key: "<agency>_<role>", e.g. "a_liaison"
    operation: Operation | None = None

    def actor(self, key: str) -> Actor:
        return Actor(self.users[key], "127.0.0.1")


def build_world(session, passwords) -> World:
    world = World()
    for key, name, kind, country, tz in (
        ("a", "Alpha Police", AgencyKind.POLICE, "NZ", "Pacific/Auckland"),
        ("b", "Bravo Police", AgencyKind.POLICE, "AU", "Australia/Sydney"),
        ("c", "Charlie Customs", AgencyKind.CUSTOMS, "GB", "Europe/London"),
        ("i", "Intl Bureau", AgencyKind.INTERNATIONAL, None, "UTC"),
    ):
        agency = Agency(name=name, kind=kind, country_code=country, desk_email=f"desk@{key}.example.org",
                        desk_phone="+64 4 555 0100", timezone=tz, is_focal_point=True)
        session.add(agency)
        world.agencies[key] = agency
    session.flush()
    for key, agency in world.agencies.items():
        for role in Role:
            world.users[f"{key}_{role.value}"] = create_user(
                session, SYSTEM, passwords, email=f"{role.value}.{key}@example.org", name=f"{role.value} {key}",
                password=PASSWORD, role=role, agency_id=agency.id,
            )
    world.operation = Operation(code="LANTERN", lead_agency_id=world.agencies["c"].id, opened_on=date(2026, 1, 5))
    session.add(world.operation)
    session.flush()
    return world


def draft_data(world: World, receiver: str = "b", **overrides) -> referrals.ReferralData:
    data = referrals.ReferralData(
        receiver_agency_id=world.agencies[receiver].id,
        jurisdiction=world.agencies[receiver].country_code or "FR",
        priority=Priority.P2,
        summary="Synthetic test referral.",
        material_description="Graded material, description held by sending agency.",
    )
    for key, value in overrides.items():
        setattr(data, key, value)
    return data


def make_referral(session, world: World, status: str = "draft", sender: str = "a", receiver: str = "b",
                  **overrides):
    """A referral from `sender` to `receiver` walked through the lifecycle to `status`."""
    from app.demo import PATHS

    referral = referrals.create_draft(session, world.actor(f"{sender}_liaison"), draft_data(world, receiver, **overrides))
    for step in PATHS[status]:
        if step == "outcome":
            referrals.record_outcome(session, world.actor(f"{receiver}_liaison"), referral.id,
                                     referrals.OutcomeData(occurred_on=utcnow().date(), arrests=1))
        elif step == "consent":
            referrals.grant_transfer_consent(session, world.actor(f"{sender}_liaison"), referral.id, None)
        else:
            side = referrals.TRANSITIONS[step].side
            actor = world.actor(f"{sender if side == 'sender' else receiver}_liaison")
            target = world.agencies["i"].id if step == "transfer" else None
            referrals.transition(session, actor, referral.id, step, None, "Reason given.", transfer_to_agency_id=target)
    session.refresh(referral)
    return referral
