"""The one access scope. Every query that shows referrals (and what derives from them) to a
person starts here. Need-to-know: an agency sees the referrals it sent or received (a draft
only its sender sees: it has not been sent to anyone yet), and the lead agency of an
operation sees that operation's referrals."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Select, and_, false, or_, select
from sqlalchemy.orm import Session

from app.models import (
    Agency, AuditEntry, Hit, HitMatch, HitSide, Identifier, Notification, Operation, Referral, Role, Status, User,
)
from app.models import Holder, Tip, referral_subjects
from app.models.tip import TipImport
from app.services import NotFound
from app.services.audit import lock_chain


def visibility_clause(agency_id: int):
    """SQL condition: referrals an agency may see. A draft is its sender's alone: it names its
    future receiver, and may name an operation another agency leads, and neither sees anything
    of it until it is sent (an import drafts hundreds, some never sent)."""
    led_operations = select(Operation.id).where(Operation.lead_agency_id == agency_id)
    return or_(
        Referral.sender_agency_id == agency_id,
        and_(Referral.status != Status.DRAFT,
             or_(Referral.receiver_agency_id == agency_id, Referral.operation_id.in_(led_operations.scalar_subquery()))),
    )


def visible_referrals(user: User) -> Select[tuple[Referral]]:
    return select(Referral).where(visibility_clause(user.agency_id))


def get_visible_referral(session: Session, user: User, referral_id: int, *, for_update: bool = False,
                         chain_first: bool = True) -> Referral:
    """The referral if the user may see it; NotFound otherwise (never Forbidden, so that
    existence does not leak).

    `for_update` locks it, read afresh. A referral no longer a draft is locked after the audit
    chain's head (`audit.lock_chain`): an import raises a sent referral, or tells it news, after
    writing its own audit entries, and every step takes the two in that order. `chain_first`
    False is for a step that locked its operation and moves drafts before it audits (a
    withdrawal or decline of a referral with a tip's holders)."""
    query = visible_referrals(user).where(Referral.id == referral_id)
    if for_update:
        if chain_first:
            status = session.scalar(query.with_only_columns(Referral.status))
            if status is None:
                raise NotFound("No such referral.")
            if status is not Status.DRAFT:
                lock_chain(session)
        query = query.with_for_update(of=Referral, key_share=True).execution_options(populate_existing=True)
    referral = session.scalars(query).unique().one_or_none()
    if referral is None:
        raise NotFound("No such referral.")
    return referral


def operation_visibility_clause(agency_id: int):
    """SQL condition: operations an agency leads or has a visible referral in (EXISTS: no scan of
    every visible referral)."""
    holds_visible = select(Referral.id).where(
        visibility_clause(agency_id), Referral.operation_id == Operation.id).exists()
    return or_(Operation.lead_agency_id == agency_id, holds_visible)


def visible_operations(user: User) -> Select[tuple[Operation]]:
    return select(Operation).where(operation_visibility_clause(user.agency_id))


def listed_operations(user: User) -> Select[tuple[Operation, bool]]:
    """The operations list, as rows of an operation and whether it is one of `visible_operations`:
    every operation for an administrator, who opens operations for any agency and manages the
    directory for everyone; those visible for anyone else. Only the list: what an administrator
    sees in an operation (its referrals, its funnel, the filters that name it) stays their own
    agency's."""
    visible = operation_visibility_clause(user.agency_id)
    query = select(Operation, visible.label("visible"))
    return query if user.role is Role.ADMIN else query.where(visible)


# --- deconfliction ----------------------------------------------------------------------
#
# A hit is seen by the two agencies it joins and by no one else. What it (or a blind check)
# reveals of the other side is a contact card: the agency, its country, its desk e-mail and
# phone, and the other referral's reference. The three functions below are the only ways
# the deconfliction service reads the other side, so that boundary is drawn here.


def hit_visibility_clause(agency_id: int):
    """SQL condition: hits an agency is a party to."""
    return or_(Hit.agency_low_id == agency_id, Hit.agency_high_id == agency_id)


def visible_hits(user: User) -> Select[tuple[Hit]]:
    return select(Hit).where(hit_visibility_clause(user.agency_id))


def get_visible_hit(session: Session, user: User, hit_id: int, *, for_update: bool = False) -> Hit:
    """The hit if the user's agency is a party to it; NotFound otherwise. `for_update` locks
    it after the audit chain's head, the order of an import, which matches hits after writing
    its own audit entries."""
    query = visible_hits(user).where(Hit.id == hit_id)
    if for_update:
        lock_chain(session)
        query = query.with_for_update(of=Hit, key_share=True)
    hit = session.scalars(query).unique().one_or_none()
    if hit is None:
        raise NotFound("No such hit.")
    return hit


def own_hit_matches(user: User, hit_ids: Iterable[int]) -> Select:
    """The matched identifiers of the user's own side(s) of these hits, never the other side's:
    rows of (hit_id, side, kind, platform, raw, value)."""
    own_side = or_(
        and_(HitMatch.side == HitSide.LOW, Hit.agency_low_id == user.agency_id),
        and_(HitMatch.side == HitSide.HIGH, Hit.agency_high_id == user.agency_id),
    )
    return (
        select(HitMatch.hit_id, HitMatch.side, Identifier.kind, Identifier.platform, Identifier.raw,
               Identifier.value)
        .join(Hit, Hit.id == HitMatch.hit_id)
        .join(Identifier, Identifier.id == HitMatch.identifier_id)
        .where(HitMatch.hit_id.in_(list(hit_ids)), own_side)
        .order_by(HitMatch.hit_id, Identifier.kind, Identifier.value)
    )


def match_counterparts() -> Select:
    """What a match may reveal of any referral: its id, reference and sending agency. Never
    its summary, material, subjects or other identifiers. (Whether it continues a transfer is
    for matching alone: it decides what of the referral matches.)"""
    return select(
        Referral.id.label("referral_id"), Referral.reference.label("reference"),
        Referral.sender_agency_id.label("agency_id"), Referral.transferred_from_id.label("transferred_from_id"),
    )


def agency_contacts(agency_ids: Iterable[int]) -> Select:
    """The contact card of agencies met through a match: name, country, liaison desk."""
    return select(
        Agency.id, Agency.name, Agency.country_code, Agency.desk_email, Agency.desk_phone
    ).where(Agency.id.in_(sorted(set(agency_ids))))


def visible_notifications(user: User) -> Select[tuple[Notification]]:
    return select(Notification).where(Notification.agency_id == user.agency_id)


def visible_audit_entries(user: User) -> Select[tuple[AuditEntry]]:
    """Admins read the whole trail; managers the entries of their own agency's people."""
    query = select(AuditEntry)
    if user.role is Role.ADMIN:
        return query
    if user.role is Role.MANAGER:
        return query.where(AuditEntry.agency_id == user.agency_id)
    return query.where(false())


# --- provider tips ------------------------------------------------------------------------
#
# A tip, its accounts and the holders found behind them are seen by the operation's lead
# agency; a holder is also seen by the agencies that may see a referral it sits on (through
# `visibility_clause`, so a transfer's new receiver sees the subjects it was given), as long as
# that referral still holds it for them: one they declined or passed on, or that was withdrawn,
# stays in their history, but the holder's page (its accounts, live) is no longer theirs. The
# work lists of an import (review, unrouted) belong to the lead agency alone.


def led_operations(user: User) -> Select[tuple[Operation]]:
    return select(Operation).where(Operation.lead_agency_id == user.agency_id)


def visible_imports(user: User) -> Select[tuple[TipImport]]:
    """Web imports a user may read (progress, problems, reject file): the ones they started,
    while their agency still leads the operation and their role still works referrals (the
    problems and reject file quote the tip's identifiers)."""
    if not user.can_work_referrals:
        return select(TipImport).where(false())
    return select(TipImport).where(
        TipImport.user_id == user.id,
        TipImport.operation_id.in_(led_operations(user).with_only_columns(Operation.id).scalar_subquery()))


def visible_tips(user: User) -> Select[tuple[Tip]]:
    return select(Tip).where(Tip.operation_id.in_(led_operations(user).with_only_columns(Operation.id)
                                                  .scalar_subquery()))


# A referral's receiver has let its subjects go.
LET_GO = (Status.DECLINED, Status.TRANSFERRED, Status.WITHDRAWN)


def let_go_at(referral: Referral, agency_id: int | None) -> datetime | None:
    """When the agency let this referral's subjects go: it declined it, transferred it on (it
    is the receiver of the transferred referral, or the sender of the transfer's successor), or
    had it withdrawn from it. What a later import adds to those subjects is not the agency's to
    see. None while the agency holds them, or never did."""
    if referral.receiver_agency_id == agency_id and referral.status in LET_GO:
        return {Status.DECLINED: referral.declined_at, Status.TRANSFERRED: referral.transferred_at,
                Status.WITHDRAWN: referral.withdrawn_at}[referral.status]
    if referral.transferred_from_id is not None and referral.sender_agency_id == agency_id:
        return referral.sent_at
    return None


def read_after_let_go(cutoff: datetime, own_subject) -> tuple:
    """What an agency that let a referral's subjects go at `cutoff` (`let_go_at`) still reads of
    them: (a condition on their links to the referral, one on their identifiers), each true for
    what was there by then, or on a subject of its own (`own_subject`, a condition in the form
    the caller's query can test it): what it records itself stays its own."""
    return (or_(referral_subjects.c.added_at <= cutoff, own_subject),
            or_(Identifier.created_at <= cutoff, own_subject))


def holder_visibility_clause(agency_id: int):
    """SQL condition: holders an agency may see: those of the operations it leads, and those on
    a referral it may see and still holds. An agency that transferred a referral on is the
    sender of the transfer's successor, and has let the holders go too."""
    led = select(Operation.id).where(Operation.lead_agency_id == agency_id)
    passed_on = and_(Referral.transferred_from_id.is_not(None), Referral.sender_agency_id == agency_id)
    on_visible_referral = (
        select(referral_subjects.c.subject_id)
        .join(Referral, Referral.id == referral_subjects.c.referral_id)
        .where(visibility_clause(agency_id), Referral.status.not_in(LET_GO), ~passed_on)
    )
    return or_(Holder.operation_id.in_(led.scalar_subquery()),
               Holder.subject_id.in_(on_visible_referral.scalar_subquery()))


def visible_holders(user: User) -> Select[tuple[Holder]]:
    return select(Holder).where(holder_visibility_clause(user.agency_id))


def led_holders(user: User) -> Select[tuple[Holder]]:
    """Holders of the operations the user's agency leads (the import's work lists)."""
    return select(Holder).where(Holder.operation_id.in_(
        led_operations(user).with_only_columns(Operation.id).scalar_subquery()))


def get_visible_holder(session: Session, user: User, subject_id: int) -> Holder:
    """The holder whose subject this is, if the user may see it; NotFound otherwise."""
    holder = session.scalars(visible_holders(user).where(Holder.subject_id == subject_id)).unique().one_or_none()
    if holder is None:
        raise NotFound("No such account holder.")
    return holder
