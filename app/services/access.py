"""The one access scope. Every query that shows referrals (and what derives from them) to a
person starts here. Need-to-know: an agency sees the referrals it sent or received, and the
lead agency of an operation sees that operation's referrals."""

from __future__ import annotations

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from app.models import Operation, Referral, User
from app.services import NotFound


def visibility_clause(agency_id: int):
    """SQL condition: referrals an agency may see."""
    led_operations = select(Operation.id).where(Operation.lead_agency_id == agency_id)
    return or_(
        Referral.sender_agency_id == agency_id,
        Referral.receiver_agency_id == agency_id,
        Referral.operation_id.in_(led_operations.scalar_subquery()),
    )


def visible_referrals(user: User) -> Select[tuple[Referral]]:
    return select(Referral).where(visibility_clause(user.agency_id))


def get_visible_referral(session: Session, user: User, referral_id: int, *, for_update: bool = False) -> Referral:
    """The referral if the user may see it; NotFound otherwise (never Forbidden, so that
    existence does not leak)."""
    query = visible_referrals(user).where(Referral.id == referral_id)
    if for_update:
        query = query.with_for_update(of=Referral)
    referral = session.scalars(query).unique().one_or_none()
    if referral is None:
        raise NotFound("No such referral.")
    return referral


def get_visible_referral_by_reference(session: Session, user: User, reference: str) -> Referral:
    referral = session.scalars(
        visible_referrals(user).where(Referral.reference == reference)
    ).unique().one_or_none()
    if referral is None:
        raise NotFound("No such referral.")
    return referral


def visible_operations(user: User) -> Select[tuple[Operation]]:
    """Operations the user's agency leads or has a referral in."""
    involved = visible_referrals(user).with_only_columns(Referral.operation_id).where(
        Referral.operation_id.is_not(None)
    )
    return select(Operation).where(
        or_(Operation.lead_agency_id == user.agency_id, Operation.id.in_(involved.scalar_subquery()))
    )
