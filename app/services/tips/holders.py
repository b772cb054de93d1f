"""Account holders after an import: lists, the holder page, the review and unrouted lists, and
what the lead agency decides by hand (a holder's jurisdiction, its risk flags). Every read
starts from the access scope (`visible_holders`, `led_holders`, `visible_tips`); a holder
outside it is NotFound. A decision re-triages and re-routes the holder through the same
router as the import, and is on the audit trail.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import (
    UNROUTED,
    Agency,
    Holder,
    HolderRouting,
    JurisdictionSource,
    Operation,
    Priority,
    Referral,
    Status,
    Tip,
    TipAccount,
    TipCommonIdentifier,
    referral_subjects,
)
from app.models.tip import holder_label
from app.services import (
    Conflict, DomainError, Forbidden, NotFound, Page, audit, countries, deconfliction, paginate, referrals,
)
from app.services.access import (
    get_visible_holder,
    led_holders,
    led_operations,
    visible_holders,
    visible_referrals,
    visible_tips,
)
from app.services.audit import Actor
from app.services.identifiers import IdentifierKind
from app.services.tips import bulk, clustering
from app.services.tips.routing import (
    HOLDER_STATE_COLUMNS, RISK_COLUMNS, Directory, HolderState, RouteResult, Router, load_directory, state_from_row,
    target,
)
from app.services.triage import more_urgent, priority_from_flags

NOTE_MAX = 1000
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL: a lock not had within lock_timeout
DECISION_LOCK_WAIT = "3s"


@dataclass
class HolderFilters:
    operation_id: int | None = None
    country: str | None = None
    priority: Priority | None = None
    routing: HolderRouting | None = None
    review: bool = False
    unrouted: bool = False
    max_confidence: float | None = None
    page: int = 1


def _filtered(query, filters: HolderFilters):
    query = query.where(Holder.merged_into_id.is_(None))
    if filters.operation_id:
        query = query.where(Holder.operation_id == filters.operation_id)
    if filters.country:
        query = query.where(Holder.jurisdiction == filters.country.upper())
    if filters.priority:
        query = query.where(Holder.priority == filters.priority)
    if filters.routing:
        query = query.where(Holder.routing == filters.routing)
    if filters.review:
        query = query.where(Holder.needs_review.is_(True))
    if filters.unrouted:
        query = query.where(Holder.routing.in_(UNROUTED))
    if filters.max_confidence is not None:
        query = query.where(Holder.confidence <= filters.max_confidence)
    return query


def list_holders(session: Session, user, filters: HolderFilters, per_page: int = 25) -> Page:
    """Holders the user may see (lead agency: all of its operations'; others: those on their
    referrals)."""
    return _holder_page(session, _filtered(visible_holders(user), filters), filters.page, per_page,
                        Holder.operation_id, Holder.number)


def _holder_page(session: Session, query, page: int, per_page: int, *order) -> Page:
    """One page of a query of holders. The page's ids first, then their holders: a deep page
    sorts the ids of the holders before it, not those holders whole with the rows joined to
    them (page 3,600 of 90,000: 0.35 to 0.5 s that way, under 0.1 s this way, as page 1)."""
    result = paginate(session, query.with_only_columns(Holder.id), page, per_page, *order)
    shown = {holder.id: holder for holder in session.scalars(select(Holder).where(Holder.id.in_(result.items)))}
    result.items = [shown[holder_id] for holder_id in result.items]
    return result


def list_referral_references(session: Session, user, holders: Iterable[Holder]) -> dict[int, str]:
    """The references of the referrals these holders are on, by referral id, in one query: only
    those the user may see (the agency a case was transferred to sees its holders, not the
    referral they came on)."""
    referral_ids = {holder.referral_id for holder in holders if holder.referral_id is not None}
    if not referral_ids:
        return {}
    return dict(session.execute(visible_referrals(user).with_only_columns(Referral.id, Referral.reference)
                                .where(Referral.id.in_(referral_ids))).all())


def review_list(session: Session, user, filters: HolderFilters, per_page: int = 25) -> Page:
    """Holders waiting for a person to decide their jurisdiction, for the lead agency: their
    evidence names more than one country (or none), their referral went wrong, or they gained
    accounts after their case was closed (`review_reasons`); least certain first."""
    filters.review = True
    query = _filtered(led_holders(user), filters)
    return _holder_page(session, query, filters.page, per_page, Holder.confidence, Holder.operation_id, Holder.number)


@dataclass(frozen=True)
class ReviewReason:
    text: str
    # The holder gained material after its case was closed: a person may route it again, or
    # leave it with the closed case (`leave_with_closed_case`).
    closed_case: bool = False

    def __str__(self) -> str:
        return self.text


def review_reasons(session: Session, user, holders: list[Holder]) -> dict[int, ReviewReason]:
    """Why each of these holders waits for a person: the referral it is on (declined, also
    after transfers, closed before the holder gained accounts or a merge, transferred onward,
    or sent for another country than its evidence's), as the person deciding sees those
    referrals, else the last decline of a referral it was on, else its evidence."""
    chains = referrals.TransferChains(
        lambda condition: session.scalars(visible_referrals(user).where(condition)).unique())
    chains.load(h.referral_id for h in holders)
    closed_at = {}
    for holder in holders:
        now = chains.where_now(holder.referral_id)
        if now is not None and now.status is Status.CLOSED:
            closed_at[holder.id] = now.closed_at
    gained = _gained_since(session, user, closed_at)
    reasons, rest = {}, []
    for holder in holders:
        chain = chains.chain(holder.referral_id)
        referral, now = (chain[0], chain[-1]) if chain else (None, None)
        transfer = f" (transferred from {referral.reference})" if now is not referral else ""
        if now is not None and now.status is Status.DECLINED:
            reason = ReviewReason(f"{now.reference}{transfer} was declined by {now.receiver.name}")
        elif holder.id in gained:
            reason = ReviewReason(f"{gained[holder.id]} after its referral {now.reference}{transfer} was closed by "
                                  f"{now.receiver.name}", closed_case=True)
        elif referral is not None and referral.status is Status.TRANSFERRED:
            reason = ReviewReason(f"{referral.reference} was transferred onward by {referral.receiver.name}")
        elif (referral is not None and referral.status is not Status.DRAFT
              and referral.jurisdiction != holder.jurisdiction):
            reason = ReviewReason(f"on {referral.reference}, sent for {countries.name(referral.jurisdiction)}; "
                                  "its accounts point elsewhere")
        else:
            rest.append(holder)
            continue
        reasons[holder.id] = reason
    declined = _last_declined(session, user, rest)
    for holder in rest:
        if holder.id in declined:
            # Routed off the referral that was declined (by a decision, say), it stays on the
            # list until a person sets its jurisdiction: the decline is why.
            referral = declined[holder.id]
            reason = ReviewReason(f"{referral.reference} was declined by {referral.receiver.name}")
        elif holder.evidence:
            reason = ReviewReason("its accounts point to more than one country")
        else:
            reason = ReviewReason("its accounts name no country")
        reasons[holder.id] = reason
    return reasons


def _last_declined(session: Session, user, holders: list[Holder]) -> dict[int, Referral]:
    """The last declined referral that held each of these holders' subjects (declined referrals
    keep their subjects), by holder id, as far as the user may see it: one query for them all."""
    if not holders:
        return {}
    holder_of = {holder.subject_id: holder.id for holder in holders}
    last = {}
    for referral, subject_id in session.execute(
        visible_referrals(user).add_columns(referral_subjects.c.subject_id)
        .join(referral_subjects, referral_subjects.c.referral_id == Referral.id)
        .where(referral_subjects.c.subject_id.in_(sorted(holder_of)), Referral.status == Status.DECLINED)
        .order_by(Referral.declined_at, Referral.id)
    ).unique():
        last[holder_of[subject_id]] = referral
    return last


def _gained_since(session: Session, user, since: dict[int, datetime]) -> dict[int, str]:
    """What each holder gained after its time in `since` (by holder id: when its case was
    closed), in words: accounts of later imports and holders merged into it, as far as the
    user's agency leads their operation; holders that gained nothing are left out. Two
    queries for them all."""
    if not since:
        return {}
    ids = sorted(since)
    tips = visible_tips(user).with_only_columns(Tip.id, Tip.imported_at).subquery()
    accounts: Counter = Counter()
    for holder_id, imported_at, n in session.execute(
        select(TipAccount.holder_id, tips.c.imported_at, func.count())
        .join(tips, tips.c.id == TipAccount.tip_id)
        .where(TipAccount.holder_id.in_(ids)).group_by(TipAccount.holder_id, tips.c.imported_at)
    ):
        if imported_at >= since[holder_id]:
            accounts[holder_id] += n
    merged: dict[int, list[str]] = {}
    for into, number, merged_at in session.execute(
        led_holders(user).with_only_columns(Holder.merged_into_id, Holder.number, Holder.merged_at)
        .where(Holder.merged_into_id.in_(ids)).order_by(Holder.number)
    ):
        if merged_at >= since[into]:
            merged.setdefault(into, []).append(holder_label(number))
    gained = {}
    for holder_id in ids:
        parts = []
        if accounts[holder_id]:
            parts.append(f"{accounts[holder_id]} new account{'s' if accounts[holder_id] != 1 else ''}")
        if holder_id in merged:
            parts.append(f"a merge with holder {', '.join(merged[holder_id])}")
        if parts:
            gained[holder_id] = " and ".join(parts)
    return gained


@dataclass
class UnroutedCountry:
    country: str | None
    holders: int
    receiver: str | None


def unrouted(session: Session, user, filters: HolderFilters, per_page: int = 25) -> tuple[list[UnroutedCountry], Page]:
    """Holders of countries with no focal point (sent to an international body, or to nobody),
    per country and one by one, for the lead agency."""
    filters.unrouted = True
    query = _filtered(led_holders(user), filters)
    summary_query = query.order_by(None).with_only_columns(
        Holder.jurisdiction, func.count(), func.max(Holder.receiver_agency_id)
    ).group_by(Holder.jurisdiction)
    rows = session.execute(summary_query).all()
    names = dict(session.execute(select(Agency.id, Agency.name).where(
        Agency.id.in_([r[2] for r in rows if r[2]]))).all())
    summary = sorted((UnroutedCountry(country, n, names.get(receiver)) for country, n, receiver in rows),
                     key=lambda u: (-u.holders, u.country or ""))
    return summary, _holder_page(session, query, filters.page, per_page, Holder.jurisdiction, Holder.number)


@dataclass
class OperationSummary:
    operation: Operation
    accounts: int = 0
    holders: int = 0
    review: int = 0
    unrouted: int = 0
    own: int = 0
    drafts: int = 0
    by_priority: dict[str, int] = field(default_factory=dict)


def overview(session: Session, user) -> tuple[list[OperationSummary], list[Tip]]:
    """The operations the user's agency leads, with figures, and their imports (newest first)."""
    operations = session.scalars(led_operations(user).order_by(Operation.code)).all()
    summaries = {op.id: OperationSummary(op) for op in operations}
    if summaries:
        ids = list(summaries)
        for op_id, n in session.execute(select(TipAccount.operation_id, func.count())
                                        .where(TipAccount.operation_id.in_(ids)).group_by(TipAccount.operation_id)):
            summaries[op_id].accounts = n
        live = select(Holder.operation_id, Holder.priority, Holder.routing, Holder.needs_review, func.count()) \
            .where(Holder.operation_id.in_(ids), Holder.merged_into_id.is_(None)) \
            .group_by(Holder.operation_id, Holder.priority, Holder.routing, Holder.needs_review)
        for op_id, level, routing, review, n in session.execute(live):
            summary = summaries[op_id]
            summary.holders += n
            summary.by_priority[level.value] = summary.by_priority.get(level.value, 0) + n
            summary.review += n if review else 0
            summary.unrouted += n if routing in UNROUTED else 0
            summary.own += n if routing is HolderRouting.OWN_AGENCY else 0
        drafts = select(Holder.operation_id, func.count(func.distinct(Holder.referral_id))) \
            .join(Referral, Referral.id == Holder.referral_id) \
            .where(Holder.operation_id.in_(ids), Referral.status == Status.DRAFT).group_by(Holder.operation_id)
        for op_id, n in session.execute(drafts):
            summaries[op_id].drafts = n
    tips = session.scalars(visible_tips(user).order_by(Tip.imported_at.desc(), Tip.id.desc()).limit(50)).all()
    return list(summaries.values()), list(tips)


# --- the holder page -------------------------------------------------------------------------

@dataclass
class Evidence:
    kind: IdentifierKind
    platform: str
    value: str
    accounts: int  # accounts of this holder holding it
    operation_accounts: int | None = 0  # common ones: accounts of the operation holding it (lead only)
    common: bool = False  # common in the operation now


@dataclass
class HolderView:
    holder: Holder
    accounts: list[TipAccount]
    shared: list[Evidence]  # what joined the accounts into one holder
    common: list[Evidence]  # held by one of its accounts, and common in the operation: joins nobody
    merged_from: list[Holder]
    merged_into: Holder | None
    referrals: list[Referral]  # referrals the holder sits on that the user may see
    can_decide: bool
    evidence_countries: list[tuple[str, int]]
    review_reason: ReviewReason | None = None  # why it is on the review list, for the lead agency


def can_decide(user, holder: Holder) -> bool:
    return (user is not None and user.can_work_referrals and holder.operation.lead_agency_id == user.agency_id
            and holder.merged_into_id is None)


def holder_pages(session: Session, user, subject_ids: list[int]) -> set[int]:
    """Of these subjects (a referral's), the account holders whose page the user may open."""
    if not subject_ids:
        return set()
    return set(session.scalars(visible_holders(user).with_only_columns(Holder.subject_id)
                               .where(Holder.subject_id.in_(subject_ids))))


def on_referral(session: Session, user, referral_id: int, shown: int = 20, *,
                awaiting_review: bool = False) -> tuple[list[Holder], int]:
    """The first `shown` account holders a referral carries that the user may see, and how many
    it carries in all; with `awaiting_review`, only those on the review list."""
    carried = visible_holders(user).where(Holder.referral_id == referral_id, Holder.merged_into_id.is_(None))
    if awaiting_review:
        carried = carried.where(Holder.needs_review.is_(True))
    total = session.scalar(carried.with_only_columns(func.count()).order_by(None))
    return list(session.scalars(carried.order_by(Holder.number).limit(shown))), total


def view_holder(session: Session, actor: Actor, subject_id: int) -> HolderView:
    user = actor.user
    holder = get_visible_holder(session, user, subject_id)
    accounts = list(session.scalars(select(TipAccount).where(TipAccount.holder_id == holder.id)
                                    .order_by(TipAccount.id)))
    counts: Counter = Counter()
    for account in accounts:
        counts.update(clustering.joining_keys(account.platform, account.username, account.email, account.phone))
    common_rows = {}
    if counts:
        for row in session.scalars(select(TipCommonIdentifier).where(
                TipCommonIdentifier.operation_id == holder.operation_id,
                TipCommonIdentifier.value.in_(sorted({value for _, _, value in counts})))):
            common_rows[(row.kind, row.platform, row.value)] = row.accounts
    shared, common = [], []
    lead = holder.operation.lead_agency_id == user.agency_id
    for (kind, platform, value), n in sorted(counts.items(), key=lambda item: (item[0][0].value, item[0][1], item[0][2])):
        is_common = (kind, platform, value) in common_rows
        # How many accounts of the whole operation hold a common one is the lead agency's figure.
        operation_accounts = (common_rows[(kind, platform, value)] if lead else None) if is_common else 0
        if n > 1:  # shared within the holder (it may have joined them before it turned common)
            shared.append(Evidence(kind, platform, value, n, operation_accounts, is_common))
        elif is_common:
            common.append(Evidence(kind, platform, value, n, operation_accounts, is_common))
    # Linked holders come through the scope too: a receiving agency sees only its own.
    merged_from = list(session.scalars(
        visible_holders(user).where(Holder.merged_into_id == holder.id).order_by(Holder.id)).unique())
    merged_into = session.scalars(visible_holders(user).where(Holder.id == holder.merged_into_id)).unique() \
        .one_or_none() if holder.merged_into_id else None
    on = select(referral_subjects.c.referral_id).where(referral_subjects.c.subject_id == holder.subject_id)
    referrals = list(session.scalars(visible_referrals(user).where(Referral.id.in_(on.scalar_subquery()))
                                     .order_by(Referral.id)).unique())
    audit.record(session, actor, "tip.holder_view", "holder", holder.id, detail={"label": holder.label})
    evidence = sorted((holder.evidence or {}).items(), key=lambda item: (-item[1], item[0]))
    # The review list is the lead agency's: so is why a holder is on it.
    review_reason = (review_reasons(session, user, [holder])[holder.id]
                     if lead and holder.needs_review and holder.merged_into_id is None else None)
    return HolderView(holder, accounts, shared, common, merged_from, merged_into, referrals,
                      can_decide(user, holder), evidence, review_reason)


# --- decisions by the lead agency ----------------------------------------------------------------

@dataclass
class Decision:
    holder: Holder
    moved: bool  # the holder went to another (draft) referral
    stays_sent: Referral | None  # its referral was sent already: it stays there


def lock_operation(session: Session, operation_id: int, *, wait: bool) -> None:
    """Imports, decisions and the directory's rerouting change the same holders and drafts:
    each takes its operation's row lock first (PostgreSQL; SQLite has one writer anyway), so
    that they follow one another instead of deadlocking. A person's decision waits a few
    seconds (`wait` False: a colleague's decision ends within them), not out a running import:
    it is told to try again."""
    if session.get_bind().dialect.name != "postgresql":
        return
    locked = select(Operation.id).where(Operation.id == operation_id).with_for_update(key_share=True)
    try:
        if wait:
            session.execute(locked)
            return
        before = session.scalar(select(func.current_setting("lock_timeout")))  # the role's or the server's
        session.execute(select(func.set_config("lock_timeout", DECISION_LOCK_WAIT, True)))
        session.execute(locked)
        session.execute(select(func.set_config("lock_timeout", before, True)))
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        raise Conflict("This operation's holders are being changed just now (an import, say). Decide again in a "
                       "minute.") from None


def _decidable(session: Session, actor: Actor, subject_id: int, seen_at: datetime | None) -> Holder:
    """The holder to decide on; `seen_at` is when it last changed as the deciding page showed it
    (None: not known), and a holder changed since, by a person or an import, is a Conflict."""
    holder = get_visible_holder(session, actor.user, subject_id)
    if actor.user is None or not actor.user.can_work_referrals:
        raise Forbidden("Your role may read holders but not decide on them.")
    if holder.operation.lead_agency_id != actor.agency_id:
        raise Forbidden("Only the operation's lead agency decides on its holders.")
    lock_operation(session, holder.operation_id, wait=False)
    session.refresh(holder)  # as the last import left it
    if holder.merged_into_id is not None:
        raise DomainError("This holder was merged into another; decide on that one.")
    if seen_at is not None and holder.updated_at != seen_at:
        raise Conflict("This account holder was changed since you loaded the page (a decision or an import). "
                       "Look at it again and decide anew.")
    return holder


def _reroute(session: Session, actor: Actor, holder: Holder, now: datetime, *, news: str | None = None,
             placed: bool = False) -> Decision:
    """Route one holder again after a decision, exactly as an import would (after a decision
    on its jurisdiction, it may go back to an agency that declined it: the person knew). One a
    person `placed` (set its jurisdiction) leaves a closed case for a new draft
    (`Router.reroute_closed`). A holder that stays on a sent referral tells its receiver the
    `news` of the decision, if any, as an import tells what it added."""
    session.flush()
    row = session.execute(select(*HOLDER_STATE_COLUMNS).where(Holder.id == holder.id)).one()
    state = state_from_row(row)
    before = state.referral_id
    router = Router(session, actor, holder.operation, holder.operation.lead_agency_id, now=now,
                    reroute_closed=placed)
    router.plan([state])
    router.create_drafts()
    session.execute(update(Holder.__table__).where(Holder.__table__.c.id == holder.id).values(
        routing=state.routing, receiver_agency_id=state.receiver_agency_id, referral_id=state.referral_id,
        packaged=state.packaged, updated_at=now))
    _held_back_to_review(session, router)
    router.write_links()
    if news and state.referral_id == before and router.stays(before):
        router.record_updates({router.current_id(before): news})
    route = router.finish()
    _match_routed(session, actor, route.to_match, now)
    session.expire(holder)
    stays = None
    if state.referral_id and state.referral_id == before:
        # Shown to the person deciding, where the case is now (a transfer moved it on): read
        # through their scope.
        referral = session.scalars(visible_referrals(actor.user).where(
            Referral.id == router.current_id(before))).unique().one_or_none()
        if referral is not None and referral.status is not Status.DRAFT:
            stays = referral
    return Decision(holder, state.referral_id != before, stays)


def set_jurisdiction(session: Session, actor: Actor, subject_id: int, country: str, note: str = "", *,
                     now: datetime | None = None, seen_at: datetime | None = None) -> Decision:
    holder = _decidable(session, actor, subject_id, seen_at)
    code = (country or "").strip().upper()
    if not countries.is_valid(code):
        raise DomainError("Choose a country from the list.", field="country")
    note = (note or "").strip()
    if len(note) > NOTE_MAX:
        raise DomainError(f"At most {NOTE_MAX} characters.", field="note")
    now = now or utcnow()
    previous = holder.jurisdiction
    weights = holder.evidence or {}
    holder.jurisdiction = code
    holder.jurisdiction_source = JurisdictionSource.MANUAL
    holder.jurisdiction_set_by_id = actor.user_id
    holder.jurisdiction_set_at = now
    holder.needs_review = False
    holder.confidence = round(weights.get(code, 0) / sum(weights.values()), 3) if weights else 0.0
    holder.updated_at = now
    # The note is the audit trail's: the news goes to the receiver, who reads the decision only.
    news = (f"holder {holder.label}: jurisdiction set to {countries.name(code)} by the lead agency"
            f"{' (it was ' + countries.name(previous) + ')' if previous else ''}."
            if code != previous else None)
    decision = _reroute(session, actor, holder, now, news=news, placed=True)
    audit.record(session, actor, "tip.holder_jurisdiction", "holder", holder.id, detail={
        "label": holder.label, "from": previous, "to": code, "note": note,
        "referral": decision.holder.referral_id,
    })
    return decision


def leave_with_closed_case(session: Session, actor: Actor, subject_id: int, note: str = "", *,
                           now: datetime | None = None, seen_at: datetime | None = None) -> Holder:
    """Take a holder that gained material after its case was closed off the review list, and
    leave it on the closed referral: the lead agency judged the new material no reason to
    refer the case again (the note says why, on the audit trail). Material a later import
    brings puts it back on the list."""
    holder = _decidable(session, actor, subject_id, seen_at)
    note = (note or "").strip()
    if len(note) > NOTE_MAX:
        raise DomainError(f"At most {NOTE_MAX} characters.", field="note")
    reason = review_reasons(session, actor.user, [holder])[holder.id] if holder.needs_review else None
    if reason is None or not reason.closed_case:
        raise DomainError("Only a holder on the review list for material gained after its case was closed can be "
                          "left with that case; set its jurisdiction instead.")
    now = now or utcnow()
    holder.needs_review = False
    holder.updated_at = now
    audit.record(session, actor, "tip.holder_left_closed", "holder", holder.id, detail={
        "label": holder.label, "referral": holder.referral_id, "reason": reason.text, "note": note})
    return holder


def set_risk_flags(session: Session, actor: Actor, subject_id: int, flags: dict[str, bool], *,
                   now: datetime | None = None, seen_at: datetime | None = None) -> Decision:
    """Record what investigators found (access to children, ...); the holder is triaged again
    by the same rule and, if its priority changes, routed again (a P1 holder gets a referral
    of its own)."""
    holder = _decidable(session, actor, subject_id, seen_at)
    unknown = set(flags) - set(RISK_COLUMNS)
    if unknown:
        raise DomainError(f"Unknown risk flag {sorted(unknown)[0]!r}.")
    now = now or utcnow()
    before = {name: getattr(holder, name) for name in RISK_COLUMNS}
    for name in RISK_COLUMNS:
        setattr(holder, name, bool(flags.get(name, False)))
    previous = holder.priority
    holder.priority = priority_from_flags(tuple(getattr(holder, name) for name in RISK_COLUMNS), holder.grade_a,
                                          holder.grade_b, holder.grade_c)
    holder.updated_at = now
    changed = sorted(k for k in RISK_COLUMNS if before[k] != bool(flags.get(k, False)))
    # A sent referral the holder stays on is raised if the holder became more urgent than it
    # (the escalation step names the flags); otherwise its receiver is told of them as news.
    raised = escalate_sent_referrals(session, actor, [
        (holder.referral_id, previous, holder.priority,
         escalation_reason(holder.label, previous, holder.priority, _flags_named(flags))),
    ], now)
    news = (f"holder {holder.label}: the lead agency recorded {_flags_named(flags)}."
            if changed and not raised else None)
    sent_on = holder.referral_id
    decision = _reroute(session, actor, holder, now, news=news)
    if sent_on is not None and decision.holder.referral_id == sent_on:  # the findings told above, as news or a raise
        referrals.turn_on_risk_flags(session, sent_on, [name for name in changed if flags.get(name)])
    audit.record(session, actor, "tip.holder_risk", "holder", holder.id, detail={
        "label": holder.label, "flags": {k: v for k, v in flags.items() if v},
        "changed": changed,
        "priority": {"from": previous.value, "to": holder.priority.value},
    })
    return decision


def record_risk_flags_batch(session: Session, actor: Actor, operation_id: int, flags_by_holder: dict[int, dict],
                            *, now: datetime | None = None) -> list[int]:
    """`set_risk_flags` for many holders of one operation at once (the scenario's investigators):
    the same rule, the same router in one pass, one audit entry per holder. Returns the draft
    referrals created or changed."""
    operation = session.get(Operation, operation_id)
    if operation is None:
        raise NotFound("No such operation.")
    if actor.user is None or not actor.user.can_work_referrals or actor.agency_id != operation.lead_agency_id:
        raise Forbidden("Only the operation's lead agency decides on its holders.")
    now = now or utcnow()
    lock_operation(session, operation_id, wait=True)
    ids = sorted(flags_by_holder)
    rows = {row.id: row for row in session.execute(
        select(*HOLDER_STATE_COLUMNS, Holder.merged_into_id, Holder.operation_id, Holder.number)
        .where(Holder.id.in_(ids)))}
    states, entries, triaged, news, found = [], [], [], {}, {}
    for holder_id in ids:
        row = rows.get(holder_id)
        if row is None or row.operation_id != operation_id or row.merged_into_id is not None:
            raise DomainError(f"Holder {holder_id} is not an unmerged holder of {operation.code}.")
        flags = tuple(bool(flags_by_holder[holder_id].get(name, False)) for name in RISK_COLUMNS)
        state = state_from_row(row)
        level = priority_from_flags(flags, row.grade_a, row.grade_b, row.grade_c)
        label, named = holder_label(row.number), _flags_named(flags_by_holder[holder_id])
        entries.append(("tip.holder_risk", "holder", holder_id, {
            "flags": {name: True for name, on in zip(RISK_COLUMNS, flags) if on},
            "priority": {"from": state.priority.value, "to": level.value}}))
        reason = escalation_reason(label, state.priority, level, named)
        triaged.append((state.referral_id, state.priority, level, reason))
        if flags != state.flags:
            news[holder_id] = (state.referral_id, reason, f"holder {label}: the lead agency recorded {named}.")
            found[holder_id] = [name for name, on, was in zip(RISK_COLUMNS, flags, state.flags) if on and not was]
        state.flags, state.priority = flags, level
        states.append(state)
    # A holder sent already stays on its referral, which is raised if the holder became more
    # urgent than it; the receiver is told of the other holders' flags as news, as
    # `set_risk_flags` tells it.
    raised = escalate_sent_referrals(session, actor, triaged, now)
    router = Router(session, actor, operation, operation.lead_agency_id, now=now)
    _route(session, router, states, now, triaged=True)
    notes: dict[int, list[str]] = {}
    for state in states:
        referral_id, reason, note = news.get(state.id, (None, None, None))
        if (note and state.referral_id == referral_id and router.stays(referral_id)
                and raised.get(referral_id) != reason):
            notes.setdefault(router.current_id(referral_id), []).append(note)
    router.record_updates({referral_id: " ".join(told) for referral_id, told in notes.items()})
    carried: dict[int, set[str]] = {}  # a sent referral -> what was found on holders staying on it
    for state in states:
        if found.get(state.id) and router.stays(state.referral_id):
            carried.setdefault(router.current_id(state.referral_id), set()).update(found[state.id])
    for referral_id, names in sorted(carried.items()):
        referrals.turn_on_risk_flags(session, referral_id, sorted(names))
    route = router.finish()
    bulk.audit_many(session, actor, entries)
    _match_routed(session, actor, route.to_match, now)
    return route.touched


def _match_routed(session: Session, actor: Actor, referral_ids: Iterable[int], now: datetime) -> None:
    """Deconfliction for the referrals a routing step linked holders to (`RouteResult.to_match`),
    on what they gained from it (the holders it linked at `now`)."""
    referral_ids = sorted(referral_ids)
    if referral_ids:
        deconfliction.refresh_hits(session, actor, referral_ids, now=now, since=now)


def reroute_after_directory_change(session: Session, actor: Actor, operations: list[Operation], *,
                                   now: datetime | None = None) -> list[int]:
    """The agency directory changed (a focal point named, withdrawn or moved to another
    country, an international body added): in these operations (every one with holders, locked
    by `lock_operations_with_holders` before the change wrote anything), each holder whose case
    has not been sent (on a draft, or on no referral) and whose receiver the directory now
    names differently is routed again, as an import routes it. Returns the drafts created or
    changed."""
    now = now or utcnow()
    unsent = or_(Holder.referral_id.is_(None),
                 Holder.referral_id.in_(select(Referral.id).where(Referral.status == Status.DRAFT)))
    touched, to_match = [], set()
    for operation in operations:
        directory = load_directory(session, operation.lead_agency_id)
        route = _route_again(session, actor, operation, [
            state for state in map(state_from_row, session.execute(
                select(*HOLDER_STATE_COLUMNS).where(Holder.operation_id == operation.id,
                                                    Holder.merged_into_id.is_(None), unsent).order_by(Holder.id)))
            if target(directory, state.jurisdiction) != (state.routing, state.receiver_agency_id)], now, directory)
        touched += route.touched
        to_match.update(route.to_match)
    _match_routed(session, actor, to_match, now)
    return touched


def reroute_after_withdrawal(session: Session, actor: Actor, operation_id: int, referral_ids,
                             *, now: datetime) -> list[int]:
    """A referral holders sat on (`referral_ids`: it and the referrals transferred on to it) was
    withdrawn: they are routed again at once, as an import would route them, so that none
    drops off every work list. The withdrawn referral keeps them in its history. The caller
    locked the operation first (`lock_operation`). Returns the drafts created or changed."""
    route = _route_again(session, actor, session.get(Operation, operation_id), [
        state_from_row(row) for row in session.execute(
            select(*HOLDER_STATE_COLUMNS).where(Holder.referral_id.in_(referral_ids), Holder.merged_into_id.is_(None))
            .order_by(Holder.id))], now)
    _match_routed(session, actor, route.to_match, now)
    return route.touched


def _route_again(session: Session, actor: Actor, operation: Operation, states: list[HolderState], now: datetime,
                 directory: Directory | None = None) -> RouteResult:
    """Route these holders of an operation again, as an import routes them, and finish (the
    caller matches what they were linked to)."""
    if not states:
        return RouteResult()
    router = Router(session, actor, operation, operation.lead_agency_id, now=now, directory=directory)
    _route(session, router, states, now, triaged=False)
    return router.finish()


def lock_operations_with_holders(session: Session) -> list[Operation]:
    """Every operation with holders, each locked (`lock_operation`), in one order: a directory
    change reroutes them all, and an import into one matches against the others' drafts. Taken
    before the change writes anything (its audit entry locks the audit chain's head, which an
    import or a decision holding an operation's lock waits for)."""
    operations = session.scalars(select(Operation).where(Operation.id.in_(select(Holder.operation_id).distinct()))
                                 .order_by(Operation.id)).all()
    for operation in operations:
        lock_operation(session, operation.id, wait=True)
    return operations


def _route(session: Session, router: Router, states: list[HolderState], now: datetime, *, triaged: bool) -> None:
    """Route these holders, write what routing decided of them (and their triage, when
    `triaged`: flags and priority) and their links; the caller finishes the router."""
    router.plan(states)
    router.create_drafts()
    bulk.update_rows(session, Holder.__table__, "id", [
        {"id": state.id, **({**dict(zip(RISK_COLUMNS, state.flags)), "priority": state.priority} if triaged else {}),
         "routing": state.routing, "receiver_agency_id": state.receiver_agency_id, "referral_id": state.referral_id,
         "packaged": state.packaged, "updated_at": now}
        for state in states])
    _held_back_to_review(session, router)
    router.write_links()


def _held_back_to_review(session: Session, router: Router) -> None:
    """The holders routing held back from an agency that declined them wait on the review list
    for a person, whatever step routed them (an import writes its own)."""
    if router.held_back_now:
        session.execute(update(Holder.__table__).where(Holder.__table__.c.id.in_(sorted(router.held_back_now)))
                        .values(needs_review=True))


def escalation_reason(label: str, previous: Priority, level: Priority, cause: str) -> str:
    """Why a holder's referral is raised, for its history: the holder, its triage, and what
    changed it (`cause`)."""
    return f"holder {label} triaged {previous.value} -> {level.value} {cause}."


def _flags_named(flags: dict[str, bool]) -> str:
    found = ", ".join(name.removeprefix("risk_").replace("_", " ") for name in RISK_COLUMNS if flags.get(name))
    return f"on its risk flags ({found or 'none'})"


def escalate_sent_referrals(session: Session, actor: Actor,
                             holders: list[tuple[int | None, Priority, Priority, str]], now: datetime) -> dict[int, str]:
    """Holders (referral, priority before, after, why) triaged again, by a decision or an
    import: a sent referral a holder became more urgent on is raised to that priority
    (`referrals.escalate_priority`; drafts are routed instead, and nothing is ever lowered).
    Once per referral, for its most urgent holder. Returns the reason each raised referral
    was given, by the referral id as passed in."""
    most_urgent: dict[int, tuple[Priority, str]] = {}
    for referral_id, previous, level, reason in holders:
        if referral_id is None or not more_urgent(level, previous):
            continue
        current = most_urgent.get(referral_id)
        if current is None or more_urgent(level, current[0]):
            most_urgent[referral_id] = (level, reason)
    return {referral_id: reason for referral_id, (level, reason) in sorted(most_urgent.items())
            if referrals.escalate_priority(session, actor, referral_id, level, reason, at=now)}
