"""The referral lifecycle: drafts, transitions, transfers and outcomes.

draft --send--> sent --acknowledge--> acknowledged --accept--> accepted --close--> closed
                  |--withdraw--> withdrawn     |--decline--> declined
                                               |--transfer--> transferred (+ a new linked referral)

Only the sending agency sends, withdraws or grants transfer consent; only the receiving
agency acknowledges, accepts, declines, transfers, closes or records outcomes. Every step
stamps its date, appends to the referral's history and to the audit trail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ColumnElement, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import (
    Agency,
    HandlingCode,
    Holder,
    Notification,
    NotificationKind,
    Operation,
    Outcome,
    Priority,
    ReferenceCounter,
    Referral,
    RISK_FLAGS,
    ReferralEvent,
    Status,
    TLP,
    came_in_on_select,
)
from app.services import (
    DomainError,
    Forbidden,
    Page,
    audit,
    check_version,
    countries,
    deconfliction,
    flush_or_conflict,
    paginate,
    require_worker,
    subjects,
)
from app.services.access import get_visible_referral, let_go_at, visible_referrals
from app.services.audit import Actor
from app.services.triage import more_urgent

Side = Literal["sender", "receiver"]


@dataclass(frozen=True)
class Transition:
    sources: frozenset[Status]
    target: Status
    side: Side
    stamp: str
    needs_note: bool = False


TRANSITIONS: dict[str, Transition] = {
    "send": Transition(frozenset({Status.DRAFT}), Status.SENT, "sender", "sent_at"),
    "withdraw": Transition(frozenset({Status.SENT}), Status.WITHDRAWN, "sender", "withdrawn_at", needs_note=True),
    "acknowledge": Transition(frozenset({Status.SENT}), Status.ACKNOWLEDGED, "receiver", "acknowledged_at"),
    "accept": Transition(frozenset({Status.ACKNOWLEDGED}), Status.ACCEPTED, "receiver", "accepted_at"),
    "decline": Transition(frozenset({Status.ACKNOWLEDGED}), Status.DECLINED, "receiver", "declined_at", needs_note=True),
    "transfer": Transition(frozenset({Status.ACKNOWLEDGED}), Status.TRANSFERRED, "receiver", "transferred_at"),
    "close": Transition(frozenset({Status.ACCEPTED}), Status.CLOSED, "receiver", "closed_at"),
}

NOTE_MAX = 1000
NOTIFICATION_MAX = Notification.__table__.c.message.type.length


@dataclass
class ReferralData:
    """What a liaison officer fills in for a draft."""

    receiver_agency_id: int
    jurisdiction: str
    priority: Priority
    operation_id: int | None = None
    risk_access_to_children: bool = False
    risk_position_of_authority: bool = False
    risk_previous_convictions: bool = False
    risk_plans_to_meet: bool = False
    risk_contact_offending: bool = False
    grade_a: int = 0
    grade_b: int = 0
    grade_c: int = 0
    material_description: str = ""
    tlp: TLP = TLP.RED
    handling_code: HandlingCode = HandlingCode.CONSENT_REQUIRED
    summary: str = ""

    @classmethod
    def from_referral(cls, referral: Referral) -> ReferralData:
        return cls(**{f.name: getattr(referral, f.name) for f in fields(cls)})


SUMMARY_MAX = 4000
MATERIAL_MAX = 500


def _validate(session: Session, actor: Actor, data: ReferralData) -> None:
    if not countries.is_valid(data.jurisdiction):
        raise DomainError(f"Unknown country code '{data.jurisdiction}'.", field="jurisdiction")
    data.jurisdiction = data.jurisdiction.upper()
    receiver = session.get(Agency, data.receiver_agency_id)
    if receiver is None:
        raise DomainError("Choose an existing receiving agency.", field="receiver_agency_id")
    if receiver.id == actor.agency_id:
        raise DomainError("The receiving agency must differ from your own.", field="receiver_agency_id")
    if data.operation_id is not None and session.get(Operation, data.operation_id) is None:
        raise DomainError("Choose an existing operation.", field="operation_id")
    for name in ("grade_a", "grade_b", "grade_c"):
        if getattr(data, name) < 0:
            raise DomainError("Counts cannot be negative.", field=name)
    if len(data.summary) > SUMMARY_MAX:
        raise DomainError(f"At most {SUMMARY_MAX} characters.", field="summary")
    if len(data.material_description) > MATERIAL_MAX:
        raise DomainError(f"At most {MATERIAL_MAX} characters.", field="material_description")



def next_references(session: Session, count: int = 1, year: int | None = None) -> list[str]:
    """Reserve `count` consecutive references for a year (HND-2026-000123)."""
    year = year or utcnow().year
    statement = (
        update(ReferenceCounter)
        .where(ReferenceCounter.year == year)
        .values(last_value=ReferenceCounter.last_value + count)
        .returning(ReferenceCounter.last_value)
    )
    last = session.execute(statement).scalar_one_or_none()
    if last is None:
        try:
            with session.begin_nested():
                session.execute(insert(ReferenceCounter).values(year=year, last_value=0))
        except IntegrityError:
            pass  # created concurrently
        last = session.execute(statement).scalar_one()
    return [f"HND-{year}-{n:06d}" for n in range(last - count + 1, last + 1)]


def _event(referral: Referral, actor: Actor, action: str, from_status: Status | None,
           to_status: Status | None, note: str = "", at: datetime | None = None,
           agency_id: int | None = None) -> None:
    referral.events.append(
        ReferralEvent(
            at=at or utcnow(), action=action, from_status=from_status and from_status.value,
            to_status=to_status and to_status.value, user_id=actor.user_id,
            agency_id=agency_id or actor.agency_id, note=note,
        )
    )


def create_draft(session: Session, actor: Actor, data: ReferralData, *, year: int | None = None) -> Referral:
    """`year` numbers a draft the demo loader replays in the year it is dated (the current one by default)."""
    require_worker(actor)
    _validate(session, actor, data)
    referral = Referral(
        reference=next_references(session, year=year)[0],
        sender_agency_id=actor.agency_id,
        status=Status.DRAFT,
        created_by_id=actor.user_id,
        **{f.name: getattr(data, f.name) for f in fields(data)},
    )
    session.add(referral)
    _event(referral, actor, "create", None, Status.DRAFT)
    flush_or_conflict(session, "referral")
    audit.record(session, actor, "referral.create", "referral", referral.id, detail={"reference": referral.reference})
    deconfliction.refresh_hits_for_referral(session, actor, referral.id)
    return referral


def update_draft(session: Session, actor: Actor, referral_id: int, expected_version: int, data: ReferralData) -> Referral:
    referral = get_visible_referral(session, actor.user, referral_id, for_update=True)
    require_worker(actor)
    if referral.sender_agency_id != actor.agency_id:
        raise Forbidden("Only the sending agency edits a referral.")
    if referral.status is not Status.DRAFT:
        raise DomainError("Only drafts can be edited.")
    check_version(referral, expected_version, "referral")
    _validate(session, actor, data)
    _keep_routing(session, referral, data)
    changed = {}
    for f in fields(data):
        new = getattr(data, f.name)
        if getattr(referral, f.name) != new:
            changed[f.name] = str(new)
            setattr(referral, f.name, new)
    if changed:
        _event(referral, actor, "edit", Status.DRAFT, Status.DRAFT, note=", ".join(sorted(changed)))
    flush_or_conflict(session, "referral")
    audit.record(session, actor, "referral.edit", "referral", referral.id, detail={"changed": sorted(changed)})
    deconfliction.refresh_hits_for_referral(session, actor, referral.id)
    return referral


# What routing and triage decide of a draft that carries a tip's account holders: where it goes
# follows their jurisdiction, its priority, flags and counts follow their triage.
ROUTED_FIELDS = ("receiver_agency_id", "jurisdiction", "operation_id", "priority", *RISK_FLAGS,
                 "grade_a", "grade_b", "grade_c")
ROUTED_MESSAGE = ("This draft carries {n} account holder{s} of a provider tip: {what} them. Set a holder's "
                  "jurisdiction or risk flags on its page instead.")


def _holders_on(session: Session, referral_id: int) -> int:
    """How many (unmerged) account holders of a tip a referral carries."""
    return session.scalar(select(func.count()).select_from(Holder).where(
        Holder.referral_id == referral_id, Holder.merged_into_id.is_(None)))


def _keep_routing(session: Session, referral: Referral, data: ReferralData) -> None:
    """A person edits what a tip's draft says (summary, material, handling), not what routing
    decided: changed by hand, the holders' own pages would contradict it and the next import
    would undo it."""
    changed = [name for name in ROUTED_FIELDS if getattr(data, name) != getattr(referral, name)]
    if not changed:
        return
    count = _holders_on(session, referral.id)
    if count:
        what = ("where it goes follows" if changed[0] in ("receiver_agency_id", "jurisdiction", "operation_id")
                else "its priority, risk flags and counts follow")
        raise DomainError(ROUTED_MESSAGE.format(n=count, s="" if count == 1 else "s", what=what), field=changed[0])


def allowed_actions(referral: Referral, user) -> list[str]:
    """The transitions this user could take now (for showing buttons)."""
    if not user.can_work_referrals:
        return []
    held_back = {"transfer"} if awaits_transfer_consent(referral) else set()
    result = []
    for name, transition in TRANSITIONS.items():
        side_agency = referral.sender_agency_id if transition.side == "sender" else referral.receiver_agency_id
        if referral.status in transition.sources and side_agency == user.agency_id and name not in held_back:
            result.append(name)
    return result


def awaits_transfer_consent(referral: Referral) -> bool:
    """Whether the handling code holds back an onward transfer until the sender consents."""
    return referral.handling_code is HandlingCode.CONSENT_REQUIRED and referral.transfer_consent_at is None


def transfer_waits_for_consent(referral: Referral, user) -> bool:
    """Whether this user's agency would transfer the referral on now, but its handling code
    waits for the sender's consent (for saying so where the button would be)."""
    return (awaits_transfer_consent(referral) and referral.status is Status.ACKNOWLEDGED
            and user.can_work_referrals and referral.receiver_agency_id == user.agency_id)


def can_grant_consent(referral: Referral, user) -> bool:
    return (
        user.can_work_referrals
        and referral.sender_agency_id == user.agency_id
        and referral.handling_code is HandlingCode.CONSENT_REQUIRED
        and referral.transfer_consent_at is None
        and referral.status in (Status.SENT, Status.ACKNOWLEDGED)
    )


def can_record_outcome(referral: Referral, user) -> bool:
    return (
        user.can_work_referrals
        and referral.receiver_agency_id == user.agency_id
        and referral.status is Status.ACCEPTED
    )


def transition(
    session: Session,
    actor: Actor,
    referral_id: int,
    action: str,
    expected_version: int | None,
    note: str = "",
    *,
    transfer_to_agency_id: int | None = None,
    at: datetime | None = None,
) -> Referral:
    """Apply one lifecycle step. Returns the referral (for a transfer: the new one).

    `at` lets the demo loader replay history (a transfer's new reference is numbered in its
    year); requests always use the current time.
    """
    rule = TRANSITIONS.get(action)
    if rule is None:
        raise DomainError(f"Unknown action '{action}'.")
    get_visible_referral(session, actor.user, referral_id)  # NotFound before anything is locked
    operation_id = _holders_operation(session, referral_id) if action in ("withdraw", "decline", "transfer") else None
    if operation_id is not None:
        # The step moves a tip's holders, or lets them go: their operation is locked first, as
        # imports and decisions lock it, so that they follow one another instead of deadlocking,
        # and an import's additions are wholly before the step or wholly after it.
        from app.services.tips import holders  # the tip pipeline builds on referrals

        holders.lock_operation(session, operation_id, wait=False)
    # A transfer's new reference is reserved first, as drafts (an import's too) reserve theirs
    # before they write their audit entries.
    reference = next_references(session, year=(at or utcnow()).year)[0] if action == "transfer" else None
    # A withdrawal or decline moves drafts before it audits; a transfer audits first, as a step
    # that takes no operation lock (consent, say) does: both lock the chain, then the referral.
    referral = get_visible_referral(session, actor.user, referral_id, for_update=True,
                                    chain_first=operation_id is None or action == "transfer")
    require_worker(actor)
    side_agency = referral.sender_agency_id if rule.side == "sender" else referral.receiver_agency_id
    if side_agency != actor.agency_id:
        raise Forbidden(f"Only the {'sending' if rule.side == 'sender' else 'receiving'} agency may {action} this referral.")
    # A stale page is a conflict first: the status it showed may be gone already.
    check_version(referral, expected_version, "referral")
    if referral.status not in rule.sources:
        raise DomainError(f"A referral that is {referral.status.value} cannot be {_past(action)}.")
    note = (note or "").strip()
    if len(note) > NOTE_MAX:
        raise DomainError(f"The note may have at most {NOTE_MAX} characters.", field="note")
    if rule.needs_note and not note:
        raise DomainError(f"Give a reason to {action} this referral.", field="note")

    when = at or utcnow()
    new_referral = None
    if action == "transfer":
        new_referral = _transfer(session, actor, referral, transfer_to_agency_id, note, when, reference)

    previous = referral.status
    referral.status = rule.target
    setattr(referral, rule.stamp, when)
    referral.updated_at = when  # (a replayed step's own time, not the clock's)
    detail = {"from": previous.value, "to": rule.target.value}
    if new_referral is not None:
        note = f"Transferred to {new_referral.receiver.name} as {new_referral.reference}. {note}".strip()
        detail["new_reference"] = new_referral.reference
    _event(referral, actor, action, previous, rule.target, note, at=when)
    flush_or_conflict(session, "referral")
    # What the step does to a tip's holders comes before its audit entry, which locks the
    # audit chain's head: every row lock first, as decisions and draft edits take them.
    if action == "decline" and operation_id is not None:
        # A tip's holders on it (or on a referral transferred on to it) wait on the operation's
        # review list: a person decides where they go now (the tip pipeline does not send them
        # back to the agency that declined).
        session.execute(update(Holder.__table__).where(Holder.__table__.c.referral_id.in_(_before_transfers(
            referral.id))).values(needs_review=True, updated_at=when))
    if action == "withdraw" and operation_id is not None:
        holders.reroute_after_withdrawal(session, actor, operation_id, _before_transfers(referral.id), now=when)
    audit.record(session, actor, f"referral.{action}", "referral", referral.id, detail=detail)
    if action in ("send", "transfer"):
        # Sending (or a transfer's new referral, which is sent at once) matches its identifiers.
        deconfliction.refresh_hits_for_referral(session, actor, (new_referral or referral).id, now=when)
    return new_referral or referral


def _holders_operation(session: Session, referral_id: int) -> int | None:
    """The operation of the tip's holders on a referral, or on one whose transfers led to it
    (None without any): the holders say it, whatever operation the referral names."""
    return session.scalar(select(Holder.operation_id).where(Holder.referral_id.in_(_before_transfers(referral_id)))
                          .limit(1))


def _transfer(session: Session, actor: Actor, referral: Referral, to_agency_id: int | None,
              note: str, when: datetime, reference: str) -> Referral:
    if awaits_transfer_consent(referral):  # a rule of the referral's handling, not of who may act
        raise DomainError("The handling code requires the sender's consent to onward transfer, which has not been "
                          "given.")
    target = session.get(Agency, to_agency_id) if to_agency_id is not None else None
    if target is None:
        raise DomainError("Choose the agency to transfer to.", field="transfer_to_agency_id")
    if target.id in (referral.sender_agency_id, referral.receiver_agency_id):
        raise DomainError("Transfer to an agency other than the sender and your own.", field="transfer_to_agency_id")
    copied = ReferralData.from_referral(referral)
    copied.receiver_agency_id = target.id
    new = Referral(
        reference=reference,
        sender_agency_id=referral.receiver_agency_id,
        status=Status.SENT,
        sent_at=when,
        created_at=when,
        updated_at=when,
        created_by_id=actor.user_id,
        transferred_from_id=referral.id,
        **{f.name: getattr(copied, f.name) for f in fields(copied)},
    )
    session.add(new)
    _event(new, actor, "create", None, Status.DRAFT, f"Transfer of {referral.reference}.", at=when)
    _event(new, actor, "send", Status.DRAFT, Status.SENT, note, at=when)
    flush_or_conflict(session, "referral")
    subjects.copy_subjects(session, referral.id, new.id, at=when)  # same subjects
    session.refresh(new, ["receiver"])
    audit.record(session, actor, "referral.create", "referral", new.id,
                 detail={"reference": new.reference, "transferred_from": referral.reference})
    return new


# Sent and not finished: the receiver still works on them (the dashboards' "open"; a raised
# priority still changes how they are handled).
OPEN_STATUSES = (Status.SENT, Status.ACKNOWLEDGED, Status.ACCEPTED)


def escalate_priority(session: Session, actor: Actor, referral_id: int, priority: Priority, reason: str, *,
                      at: datetime | None = None) -> bool:
    """Raise a sent referral's priority because what it concerns turned out more urgent (the
    caller decided that: the triage of a holder on it). Never lowers it, and leaves drafts
    (their sender edits them) and finished referrals alone. The history, which both agencies
    read, and the audit trail say from what to what and why, and the receiving agency gets a
    notification. `sent_at` is kept: the acknowledgement clock counts from the sending, with
    the new priority's window. A referral transferred onward is followed to the referral that
    carries it now (a transfer's successor holds the same subjects). Returns whether the
    priority changed."""
    referral = _open_where_now(session, referral_id)
    if referral is None or not more_urgent(priority, referral.priority):
        return False
    previous = referral.priority
    referral.priority = priority
    note = f"Priority raised from {previous.value} to {priority.value}: {reason}"[:NOTE_MAX]
    # The system (an import from the command line) acts for the sender, the operation's lead agency.
    _event(referral, actor, "escalate", referral.status, referral.status, note, at=at,
           agency_id=actor.agency_id or referral.sender_agency_id)
    session.add(Notification(
        agency_id=referral.receiver_agency_id, kind=NotificationKind.PRIORITY_RAISED, referral_id=referral.id,
        message=f"{referral.reference} from {referral.sender.name}: priority raised from {previous.value} to "
                f"{priority.value}.", created_at=at or utcnow()))
    flush_or_conflict(session, "referral")
    audit.record(session, actor, "referral.escalate", "referral", referral.id, detail={
        "reference": referral.reference, "from": previous.value, "to": priority.value, "reason": reason})
    return True


def turn_on_risk_flags(session: Session, referral_id: int, names: Iterable[str]) -> list[str]:
    """Risk flags the sender's investigators found on what a sent referral concerns (a tip's
    holder on it) are turned on there too, never off, so that the receiver reads them where it
    reads the referral's risk; the history, in the caller's step, says who found them. Follows
    transfers, as `escalate_priority` does; drafts and finished referrals are left alone.
    Returns the flags turned on."""
    referral = _open_where_now(session, referral_id)
    if referral is None:
        return []
    turned = [name for name in names if not getattr(referral, name)]
    for name in turned:
        setattr(referral, name, True)
    flush_or_conflict(session, "referral")
    return turned


def _open_where_now(session: Session, referral_id: int) -> Referral | None:
    """The referral that carries this one's case now (after its transfers), locked, if it is
    still open: the one news of what it concerns goes to."""
    locked = (select(Referral).where(Referral.id == _after_transfers(session, referral_id))
              .with_for_update(of=Referral, key_share=True))
    referral = session.scalars(locked).unique().one()
    return referral if referral.status in OPEN_STATUSES else None


def _before_transfers(referral_id: int):
    """The ids of the referral and of the referrals whose transfers led to it, as a subquery
    (one recursive query, however long the chain)."""
    chain = select(Referral.id, Referral.transferred_from_id).where(Referral.id == referral_id).cte(recursive=True)
    chain = chain.union_all(select(Referral.id, Referral.transferred_from_id)
                            .join(chain, Referral.id == chain.c.transferred_from_id))
    return select(chain.c.id)


def came_in_on(session: Session, referral_ids: Iterable[int]) -> dict[int, int]:
    """The referral each case came in on: the first of the transfers that led to each of these
    referrals (itself if none did), by referral, in one recursive query for them all."""
    ids = sorted(set(referral_ids))
    if not ids:
        return {}
    return dict(session.execute(came_in_on_select(Referral.id.in_(ids))).all())


class TransferChains:
    """Referrals read with the referrals their transfers made, in one set-based query per step
    of the longest chain, however many referrals. `fetch` runs one query for a condition on
    Referral and returns its rows (or referrals), each with `id` and `transferred_from_id`:
    the caller chooses the columns and the scope."""

    def __init__(self, fetch: Callable[[ColumnElement[bool]], Iterable]):
        self._fetch = fetch
        self.rows: dict[int, Any] = {}
        self._successor: dict[int, int] = {}  # transferred referral -> the one its transfer made

    def load(self, referral_ids: Iterable[int | None]) -> None:
        wanted = sorted({r for r in referral_ids if r} - set(self.rows))
        while wanted:
            successors = []
            for start in range(0, len(wanted), 5000):
                part = wanted[start:start + 5000]
                for row in self._fetch(or_(Referral.id.in_(part), Referral.transferred_from_id.in_(part))):
                    self.rows[row.id] = row
                    if row.transferred_from_id is not None:
                        self._successor[row.transferred_from_id] = row.id
                        successors.append(row.id)
            wanted = sorted(set(successors) - set(wanted))

    def chain(self, referral_id: int | None) -> list:
        """The referral and those its transfers made, in order, as far as they were read; empty
        for no referral."""
        chain = []
        while referral_id in self.rows:
            chain.append(self.rows[referral_id])
            referral_id = self._successor.get(referral_id)
        return chain

    def where_now(self, referral_id: int | None):
        """The referral that carries this one's case now: itself, or where transfers took it."""
        chain = self.chain(referral_id)
        return chain[-1] if chain else None


def _after_transfers(session: Session, referral_id: int) -> int:
    """The referral a chain of transfers starting at `referral_id` has reached (itself when
    never transferred): each transfer closes one referral and opens exactly one successor."""
    while True:
        successor = session.scalar(select(Referral.id).where(Referral.transferred_from_id == referral_id))
        if successor is None:
            return referral_id
        referral_id = successor


def _past(action: str) -> str:
    return {"send": "sent", "withdraw": "withdrawn", "acknowledge": "acknowledged", "accept": "accepted",
            "decline": "declined", "transfer": "transferred", "close": "closed"}[action]


def grant_transfer_consent(session: Session, actor: Actor, referral_id: int, expected_version: int | None,
                           *, at: datetime | None = None) -> Referral:
    referral = get_visible_referral(session, actor.user, referral_id, for_update=True)
    require_worker(actor)
    if referral.sender_agency_id != actor.agency_id:
        raise Forbidden("Only the sending agency can consent to onward transfer.")
    if not can_grant_consent(referral, actor.user):
        raise DomainError("Consent is not needed or cannot be given at this stage.")
    check_version(referral, expected_version, "referral")
    referral.transfer_consent_at = referral.updated_at = at or utcnow()
    _event(referral, actor, "consent", referral.status, referral.status, "Consent to onward transfer given.",
           at=referral.transfer_consent_at)
    flush_or_conflict(session, "referral")
    audit.record(session, actor, "referral.consent", "referral", referral.id)
    return referral


def today_of(session: Session, actor: Actor, now: datetime) -> date:
    """The date where the acting person is (their time zone, else their agency's; the system's
    is UTC's, a day's leeway for the zones ahead of it)."""
    if actor.user is None:
        return now.date() + timedelta(days=1)
    zone = actor.user.timezone or session.scalar(select(Agency.timezone).where(Agency.id == actor.agency_id))
    try:
        return now.astimezone(ZoneInfo(zone)).date()
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return now.date() + timedelta(days=1)


@dataclass
class OutcomeData:
    occurred_on: date
    arrests: int = 0
    charges: int = 0
    children_safeguarded: int = 0
    note: str = ""


# One outcome report counts what one case led to; more than this is a typing slip.
OUTCOME_COUNT_MAX = 1000


def record_outcome(session: Session, actor: Actor, referral_id: int, data: OutcomeData,
                   expected_version: int | None = None, *, at: datetime | None = None) -> Outcome:
    referral = get_visible_referral(session, actor.user, referral_id, for_update=True)
    require_worker(actor)
    if referral.receiver_agency_id != actor.agency_id:
        raise Forbidden("Only the receiving agency records outcomes.")
    # A second submission of the same form (a double click, the back button) is a stale page.
    check_version(referral, expected_version, "referral")
    if referral.status is not Status.ACCEPTED:
        raise DomainError("Outcomes are recorded on accepted referrals.")
    for name in ("arrests", "charges", "children_safeguarded"):
        if getattr(data, name) < 0:
            raise DomainError("Counts cannot be negative.", field=name)
        if getattr(data, name) > OUTCOME_COUNT_MAX:
            raise DomainError(f"At most {OUTCOME_COUNT_MAX:,} in one report.", field=name)
    when = at or utcnow()
    if data.occurred_on > today_of(session, actor, when):
        raise DomainError("The date cannot be in the future.", field="occurred_on")
    if referral.sent_at is not None and data.occurred_on < (referral.sent_at - timedelta(days=1)).date():
        raise DomainError("The date is before the referral was sent.", field="occurred_on")
    if len(data.note) > NOTE_MAX:
        raise DomainError(f"At most {NOTE_MAX} characters.", field="note")
    outcome = Outcome(
        recorded_at=when, occurred_on=data.occurred_on, arrests=data.arrests, charges=data.charges,
        children_safeguarded=data.children_safeguarded, note=data.note,
        recorded_by_id=actor.user_id, agency_id=actor.agency_id,
    )
    referral.outcomes.append(outcome)
    _event(referral, actor, "outcome", referral.status, referral.status,
           f"Arrests {data.arrests}, charges {data.charges}, children safeguarded {data.children_safeguarded}.",
           at=when)
    # Touching the referral bumps its version, so a concurrent editor sees the change.
    referral.updated_at = when
    flush_or_conflict(session, "referral")
    audit.record(session, actor, "referral.outcome", "referral", referral.id,
                 detail={"arrests": data.arrests, "charges": data.charges,
                         "children_safeguarded": data.children_safeguarded})
    return outcome


def view(session: Session, actor: Actor, referral_id: int) -> Referral:
    """The detail of a referral, recorded on the audit trail."""
    referral = get_visible_referral(session, actor.user, referral_id)
    audit.record(session, actor, "referral.view", "referral", referral.id)
    return referral


# Steps that bring news of a tip's holders (what an import or the lead's triage found).
HOLDER_NEWS = frozenset({"update", "escalate"})


def history(referral: Referral, user) -> list[ReferralEvent]:
    """The referral's steps as the user may read them: to an agency that has let its subjects
    go (`access.let_go_at`: it transferred the case on, say, and is the sender of the referral
    that continues it), not the news later imports and triage bring about them."""
    cutoff = let_go_at(referral, user.agency_id)
    return [event for event in referral.events
            if cutoff is None or event.action not in HOLDER_NEWS or event.at <= cutoff]


# --- listing -------------------------------------------------------------------------

def overdue_clause(now: datetime):
    """Sent but not acknowledged within the priority's window. Computed, never stored."""
    return and_(
        Referral.status == Status.SENT,
        or_(
            and_(Referral.priority == Priority.P1, Referral.sent_at < now - Priority.P1.acknowledge_within),
            and_(Referral.priority != Priority.P1, Referral.sent_at < now - Priority.P2.acknowledge_within),
        ),
    )


SORTS = {
    "reference": Referral.reference,
    "status": Referral.status,
    "priority": Referral.priority,
    "jurisdiction": Referral.jurisdiction,
    "sent": Referral.sent_at,
    "updated": Referral.updated_at,
}


@dataclass
class ListFilters:
    status: Status | None = None
    jurisdiction: str | None = None
    priority: Priority | None = None
    overdue: bool = False
    operation_id: int | None = None
    direction: Literal["in", "out"] | None = None
    sort: str = "updated"
    descending: bool = True
    page: int = 1


def list_referrals(session: Session, user, filters: ListFilters, per_page: int = 25,
                   now: datetime | None = None) -> Page:
    now = now or utcnow()
    query = visible_referrals(user)
    if filters.status:
        query = query.where(Referral.status == filters.status)
    if filters.jurisdiction:
        query = query.where(Referral.jurisdiction == filters.jurisdiction.upper())
    if filters.priority:
        query = query.where(Referral.priority == filters.priority)
    if filters.operation_id:
        query = query.where(Referral.operation_id == filters.operation_id)
    if filters.overdue:
        query = query.where(overdue_clause(now))
    if filters.direction == "in":
        query = query.where(Referral.receiver_agency_id == user.agency_id)
    elif filters.direction == "out":
        query = query.where(Referral.sender_agency_id == user.agency_id)
    column = SORTS.get(filters.sort, Referral.updated_at)
    order = column.desc() if filters.descending else column.asc()
    result = paginate(session, query, filters.page, per_page, order, Referral.id.desc())
    result.overdue_ids = {r.id for r in result.items if r.is_overdue(now)}
    return result
