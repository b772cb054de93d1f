"""Agencies, operations and users as an admin manages them."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import date
from functools import cache
from zoneinfo import available_timezones

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.models import Agency, AgencyKind, Operation, Role, User
from app.services import DomainError, Forbidden, NotFound, audit, countries, security
from app.services.audit import Actor


@dataclass
class AgencyData:
    name: str
    kind: AgencyKind
    country_code: str | None
    desk_email: str
    desk_phone: str
    timezone: str = "UTC"
    is_focal_point: bool = False


def require_admin(actor: Actor) -> None:
    """Admins, or the system itself (CLI and demo loader run without a user)."""
    if actor.user is not None and actor.user.role is not Role.ADMIN:
        raise Forbidden("Only administrators manage agencies and users.")


def _name_key(name: str) -> str:
    """What a picker shows of a name, to tell agencies apart: NFKC (a full-width Ｗ is a W),
    case folded, runs of spaces as one (as the page shows them). A capital İ folds to an i and
    a combining dot above, which on an i adds nothing to see."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return " ".join(folded.replace("i\u0307", "i").split())


def normalise_agency(session: Session, data: AgencyData, agency_id: int | None = None) -> AgencyData:
    data.name = unicodedata.normalize("NFKC", data.name).strip()
    if not data.name:
        raise DomainError("Give the agency a name.", field="name")
    # Compared here, not by the database: its lower() keeps a full-width letter apart from the
    # plain one (SQLite's folds ASCII only). The directory is a few hundred names at most.
    key = _name_key(data.name)
    if any(other_id != agency_id and _name_key(name) == key
           for other_id, name in session.execute(select(Agency.id, Agency.name))):
        raise DomainError("Another agency has this name.", field="name")
    code = (data.country_code or "").strip().upper() or None
    if data.kind is AgencyKind.INTERNATIONAL:
        if code is not None:
            raise DomainError("International bodies have no country.", field="country_code")
    elif not countries.is_valid(code):
        raise DomainError(f"Unknown country code '{code or ''}'.", field="country_code")
    data.country_code = code
    try:
        data.desk_email = validate_email(data.desk_email.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise DomainError(str(exc), field="desk_email") from exc
    try:
        number = phonenumbers.parse(data.desk_phone, code)
    except phonenumbers.NumberParseException as exc:
        raise DomainError("Not a phone number; include the country code, e.g. +64 4 555 0100.", field="desk_phone") from exc
    if not phonenumbers.is_possible_number(number):
        raise DomainError("This phone number has the wrong length.", field="desk_phone")
    data.desk_phone = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    if data.timezone not in time_zones():
        raise DomainError("Unknown time zone; use a name like Pacific/Auckland.", field="timezone")
    return data


@cache
def time_zones() -> frozenset[str]:
    """The time zone names this machine knows. Read once: zoneinfo scans its files on every
    call, and the files change only with a package upgrade, which restarts the server."""
    return frozenset(available_timezones())


def create_agency(session: Session, actor: Actor, data: AgencyData) -> Agency:
    require_admin(actor)
    data = normalise_agency(session, data)
    routed = data.is_focal_point or data.kind is AgencyKind.INTERNATIONAL
    operations = _lock_routing(session) if routed else []
    agency = Agency(**{f.name: getattr(data, f.name) for f in fields(data)})
    with _name_checked_by_the_index(session):
        session.add(agency)
    if routed:  # before the audit entry: the drafts it locks come before the chain, as for imports
        _route_again(session, actor, operations)
    audit.record(session, actor, "agency.create", "agency", agency.id, detail={"name": agency.name})
    return agency


def update_agency(session: Session, actor: Actor, agency_id: int, data: AgencyData) -> Agency:
    require_admin(actor)
    agency = session.get(Agency, agency_id)
    if agency is None:
        raise NotFound()
    data = normalise_agency(session, data, agency_id)
    changed = [f.name for f in fields(data) if getattr(agency, f.name) != getattr(data, f.name)]
    routed = bool(ROUTING_FIELDS & set(changed))
    operations = _lock_routing(session) if routed else []  # the operations first, as imports
    with _name_checked_by_the_index(session):
        for name in changed:
            setattr(agency, name, getattr(data, name))
    if routed:  # before the audit entry: the drafts it locks come before the chain, as for imports
        _route_again(session, actor, operations)
    audit.record(session, actor, "agency.edit", "agency", agency.id, detail={"changed": changed})
    return agency


@contextmanager
def _name_checked_by_the_index(session: Session) -> Iterator[None]:
    """Write the agency's changes made within: a name another admin gave an agency meanwhile is
    refused like any taken name, and the agency is left as stored (the savepoint is opened
    before the change, as opening it flushes what is pending)."""
    try:
        with session.begin_nested():
            yield
            session.flush()
    except IntegrityError as exc:
        if "uq_agencies_lower_name" not in str(exc.orig):
            raise
        raise DomainError("Another agency has this name.", field="name") from None


# What routing reads of an agency (app/services/tips/routing.py, `load_directory`).
ROUTING_FIELDS = frozenset({"is_focal_point", "country_code", "kind"})


def _lock_routing(session: Session) -> list[Operation]:
    """Before a change routing reads writes anything: the operations it reroutes, locked in the
    order imports and decisions take them (app/services/tips/holders.py)."""
    from app.services.tips.holders import lock_operations_with_holders  # tips build on the directory

    return lock_operations_with_holders(session)


def _route_again(session: Session, actor: Actor, operations: list[Operation]) -> None:
    """The directory changed where routing reads it: unsent holders follow it at once."""
    from app.services.tips.holders import reroute_after_directory_change

    reroute_after_directory_change(session, actor, operations)


@dataclass
class OperationData:
    code: str
    lead_agency_id: int
    opened_on: date
    description: str = ""


def create_operation(session: Session, actor: Actor, data: OperationData) -> Operation:
    user = actor.user
    if user is None or user.role not in (Role.ADMIN, Role.MANAGER):
        raise Forbidden("Only administrators and managers open operations.")
    if user.role is Role.MANAGER and data.lead_agency_id != user.agency_id:
        raise DomainError("Managers open operations led by their own agency.", field="lead_agency_id")
    code = data.code.strip().upper()
    if not code:
        raise DomainError("Give the operation a code name.", field="code")
    if session.scalar(select(Operation.id).where(Operation.code == code)) is not None:
        raise DomainError("This code name is taken.", field="code")
    if session.get(Agency, data.lead_agency_id) is None:
        raise DomainError("Choose an existing agency.", field="lead_agency_id")
    operation = Operation(code=code, lead_agency_id=data.lead_agency_id, opened_on=data.opened_on,
                          description=data.description.strip())
    session.add(operation)
    session.flush()
    audit.record(session, actor, "operation.create", "operation", operation.id, detail={"code": code})
    return operation


def update_user(session: Session, actor: Actor, user_id: int, *, role: Role, is_active: bool,
                agency_id: int, name: str) -> User:
    require_admin(actor)
    user = session.get(User, user_id)
    if user is None:
        raise NotFound()
    if user.id == actor.user_id and (role is not Role.ADMIN or not is_active):
        raise DomainError("You cannot remove your own administrator access.", field="role")
    if session.get(Agency, agency_id) is None:
        raise DomainError("Choose an existing agency.", field="agency_id")
    before = {"role": user.role.value, "is_active": user.is_active, "agency_id": user.agency_id}
    user.role, user.is_active, user.agency_id, user.name = role, is_active, agency_id, name.strip()
    session.flush()
    after = {"role": user.role.value, "is_active": user.is_active, "agency_id": user.agency_id}
    if before != after:
        # A changed role, agency or a deactivation takes effect now, not at the next sign-in.
        security.revoke_sessions(session, user.id)
        if not user.is_active:
            user.disabled_reason = "admin"
    audit.record(session, actor, "user.edit", "user", user.id, detail={"before": before, "after": after})
    return user


def unlock_user(session: Session, actor: Actor, user_id: int) -> User:
    require_admin(actor)
    user = session.get(User, user_id)
    if user is None:
        raise NotFound()
    security.unlock(session, actor, user)
    return user


def reset_user_mfa(session: Session, actor: Actor, user_id: int) -> User:
    require_admin(actor)
    user = session.get(User, user_id)
    if user is None:
        raise NotFound()
    security.reset_mfa(session, actor, user)
    security.revoke_sessions(session, user.id)
    return user
