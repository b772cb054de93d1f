"""Subjects (account holders) and their identifiers on referrals.

Only the sending agency adds subjects, while the referral is a draft or sent; identifiers are
added to a subject by the agency that recorded it. Identifiers are normalised on the way in
(app/services/identifiers.py) and every addition is matched at once (deconfliction).
A transfer links the same subjects to the new referral (:func:`copy_subjects`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, insert, literal, select, true
from sqlalchemy.orm import Session, selectinload

from app.db import utcnow
from app.models import Identifier, Referral, Status, Subject, User, referral_subjects
from app.services import DomainError, Forbidden, NotFound, Page, audit, deconfliction, paginate, require_worker
from app.services.access import get_visible_referral, let_go_at, read_after_let_go
from app.services.audit import Actor
from app.services.identifiers import PLATFORMS, IdentifierKind

LABEL_MAX = 200
LINES_MAX = 500  # identifiers per submission
EDITABLE = frozenset({Status.DRAFT, Status.SENT})


def can_add_subjects(referral: Referral, user: User) -> bool:
    return (
        user.can_work_referrals
        and referral.sender_agency_id == user.agency_id
        and referral.status in EDITABLE
    )


def subject_on_referral(session: Session, referral: Referral, subject_id: int) -> Subject:
    """A subject of a referral the caller has already read through the access scope."""
    subject = session.scalars(
        select(Subject)
        .join(referral_subjects, referral_subjects.c.subject_id == Subject.id)
        .where(referral_subjects.c.referral_id == referral.id, Subject.id == subject_id)
    ).unique().one_or_none()
    if subject is None:
        raise NotFound("No such subject on this referral.")
    return subject


# Subjects shown on one page of a referral: a tip's package can carry thousands of holders.
SUBJECTS_PER_PAGE = 50


def subjects_of(session: Session, user: User, referral_id: int) -> list[Subject]:
    """The subjects of a referral the user may see, with their identifiers: to an agency that
    has let the referral go (declined, transferred on, withdrawn from it), only those known
    when it did; a holder's later imports add to it for the agencies that still hold it."""
    return list(session.scalars(_subjects_query(session, user, referral_id).order_by(Subject.id)).unique())


def subjects_page(session: Session, user: User, referral_id: int, page: int) -> Page:
    """One page of `subjects_of`, in the same order."""
    return paginate(session, _subjects_query(session, user, referral_id), page, SUBJECTS_PER_PAGE, Subject.id)


def _subjects_query(session: Session, user: User, referral_id: int):
    referral = get_visible_referral(session, user, referral_id)
    cutoff = let_go_at(referral, user.agency_id)
    # Once it let them go, an agency reads what others add to the subjects no more.
    # Grouped by hand: selectinload joins the criteria to its IN clause without parentheses, and
    # the OR would then read every identifier of the agency's own subjects, on any referral.
    identifiers = (selectinload(Subject.identifiers) if cutoff is None else selectinload(Subject.identifiers.and_(
        read_after_let_go(cutoff, Identifier.subject.has(Subject.agency_id == user.agency_id))[1].self_group())))
    linked_in_time = true() if cutoff is None else read_after_let_go(cutoff, Subject.agency_id == user.agency_id)[0]
    return (select(Subject)
            .join(referral_subjects, referral_subjects.c.subject_id == Subject.id)
            .where(referral_subjects.c.referral_id == referral.id, linked_in_time)
            .options(identifiers)
            .execution_options(populate_existing=True))  # not the full list another query loaded


def _editable_referral(session: Session, actor: Actor, referral_id: int) -> Referral:
    referral = get_visible_referral(session, actor.user, referral_id, for_update=True)
    require_worker(actor)
    if referral.sender_agency_id != actor.agency_id:
        raise Forbidden("Only the sending agency records subjects.")
    if referral.status not in EDITABLE:
        raise DomainError(f"Subjects are added while a referral is a draft or sent, not {referral.status.value}.")
    return referral


def _parse(session: Session, referral: Referral, text: str, kind: IdentifierKind | None,
           platform: str | None) -> list[deconfliction.ParsedLine]:
    if platform is not None and platform not in PLATFORMS:
        raise DomainError("Choose a platform from the list.", field="platform")
    lines = deconfliction.nonblank_lines(text or "")
    if not lines:
        raise DomainError("Give at least one identifier.", field="identifiers")
    if len(lines) > LINES_MAX:
        raise DomainError(f"At most {LINES_MAX} identifiers at a time.", field="identifiers")
    parsed = deconfliction.parse_lines(lines, deconfliction._secret(session), kind=kind, platform=platform,
                                       region=referral.jurisdiction)
    bad = [p for p in parsed if not p.ok]
    if bad:
        # Some reasons are email-validator's sentences, with their own full stop: this one ends them all.
        shown = "; ".join(f"line {p.line_no}: {p.reason.removesuffix('.')}" for p in bad[:10])
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise DomainError(f"Nothing was saved. Correct {'this line' if len(bad) == 1 else 'these lines'}: "
                          f"{shown}{more}.", field="identifiers")
    return parsed


def _attach(session: Session, subject: Subject, parsed: list[deconfliction.ParsedLine], actor: Actor,
            known: set[str], now: datetime) -> list[Identifier]:
    """Insert the new identifiers in one batched statement and return them."""
    rows = []
    for p in parsed:
        if p.key in known:
            continue  # recorded already, or given twice
        known.add(p.key)
        rows.append({"subject_id": subject.id, "kind": p.ident.kind, "platform": p.ident.platform,
                     "raw": p.ident.raw, "value": p.ident.value, "match_key": p.key, "created_at": now,
                     "created_by_id": actor.user_id})
    if not rows:
        return []
    session.execute(insert(Identifier.__table__), rows)
    session.expire(subject, ["identifiers"])
    return list(session.scalars(
        select(Identifier).where(Identifier.subject_id == subject.id,
                                 Identifier.match_key.in_([row["match_key"] for row in rows]))
        .order_by(Identifier.id)
    ))


def _kinds(identifiers: list[Identifier]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for identifier in identifiers:
        counts[identifier.kind.value] = counts.get(identifier.kind.value, 0) + 1
    return counts


def add_subject(session: Session, actor: Actor, referral_id: int, label: str, identifiers: str, *,
                kind: IdentifierKind | None = None, platform: str | None = None,
                at: datetime | None = None) -> Subject:
    """A new subject on the referral with its identifiers (one per line), then matching. `at`
    lets the demo loader replay history; requests always use the current time."""
    now = at or utcnow()
    referral = _editable_referral(session, actor, referral_id)
    label = (label or "").strip()
    if len(label) > LABEL_MAX:
        raise DomainError(f"At most {LABEL_MAX} characters.", field="label")
    parsed = _parse(session, referral, identifiers, kind, platform)
    if not label:
        count = session.scalar(
            select(func.count()).select_from(referral_subjects).where(referral_subjects.c.referral_id == referral.id)
        ) or 0
        label = f"Subject {count + 1}"
    subject = Subject(agency_id=actor.agency_id, label=label, created_by_id=actor.user_id, created_at=now)
    session.add(subject)
    session.flush()
    added = _attach(session, subject, parsed, actor, set(), now)
    session.execute(insert(referral_subjects).values(referral_id=referral.id, subject_id=subject.id, added_at=now))
    audit.record(session, actor, "subject.add", "subject", subject.id,
                 detail={"referral": referral.reference, "identifiers": _kinds(added)})
    deconfliction.refresh_hits(session, actor, [referral.id], now=now)
    return subject


def add_identifiers(session: Session, actor: Actor, referral_id: int, subject_id: int, identifiers: str, *,
                    kind: IdentifierKind | None = None, platform: str | None = None) -> list[Identifier]:
    """More identifiers for a subject of the referral; every referral it sits on is matched."""
    referral = _editable_referral(session, actor, referral_id)
    subject = subject_on_referral(session, referral, subject_id)
    if subject.agency_id != actor.agency_id:
        raise Forbidden("Another agency recorded this subject; add a new subject instead.")
    parsed = _parse(session, referral, identifiers, kind, platform)
    known = set(session.scalars(select(Identifier.match_key).where(Identifier.subject_id == subject.id)))
    added = _attach(session, subject, parsed, actor, known, utcnow())
    audit.record(session, actor, "subject.identifiers_add", "subject", subject.id,
                 detail={"referral": referral.reference, "identifiers": _kinds(added)})
    if added:
        holders = session.scalars(
            select(referral_subjects.c.referral_id).where(referral_subjects.c.subject_id == subject.id)
        ).all()
        deconfliction.refresh_hits(session, actor, holders)
    return added


def copy_subjects(session: Session, source_referral_id: int, target_referral_id: int, *, at: datetime) -> int:
    """Link the source referral's subjects to the target too (a transfer, `at`: same subjects).
    One INSERT ... SELECT; returns the number of links made."""
    links = (
        select(referral_subjects.c.subject_id)
        .where(referral_subjects.c.referral_id == source_referral_id)
        .where(referral_subjects.c.subject_id.not_in(
            select(referral_subjects.c.subject_id).where(referral_subjects.c.referral_id == target_referral_id)
        ))
    )
    statement = insert(referral_subjects).from_select(
        ["referral_id", "subject_id", "added_at"],
        select(
            literal(target_referral_id),
            links.subquery().c.subject_id,
            literal(at, referral_subjects.c.added_at.type),
        ),
    )
    return session.execute(statement).rowcount or 0
