"""The audit trail: append-only entries chained by SHA-256.

Writers serialise on the single `audit_head` row (an UPDATE takes its lock), so the chain
never forks, on PostgreSQL under concurrent requests as on SQLite.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import Agency, AuditEntry, AuditHead, User
from app.services import Page, paginate

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class Actor:
    """Who does something, from where. Views build one from the request, the CLI its own."""

    user: User | None
    address: str | None = None

    @property
    def user_id(self) -> int | None:
        return self.user.id if self.user else None

    @property
    def agency_id(self) -> int | None:
        return self.user.agency_id if self.user else None


SYSTEM = Actor(user=None, address="system")


def entry_hash(prev_hash: str, seq: int, at: datetime, user_id, agency_id, address, action,
               object_type, object_id, outcome, detail) -> str:
    payload = json.dumps(
        [seq, at.isoformat(), user_id, agency_id, address, action, object_type, object_id,
         outcome, detail, prev_hash],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# `record` writes through the tables with statements built once: for its three small
# statements, building them and the ORM's bookkeeping cost more than the database's work,
# a third of a blind check's time. An AuditHead object loaded earlier in the session may
# therefore be stale, so `verify` and `prune` load the head afresh.
_HEAD = AuditHead.__table__
_ADVANCE_HEAD = (
    update(_HEAD).where(_HEAD.c.id == 1).values(seq=_HEAD.c.seq + 1).returning(_HEAD.c.seq, _HEAD.c.last_hash)
)
_SET_LAST_HASH = update(_HEAD).where(_HEAD.c.id == 1).values(last_hash=bindparam("digest"))
_APPEND_ENTRY = insert(AuditEntry.__table__)


def lock_chain(session: Session) -> None:
    """Take the audit chain's head first (PostgreSQL; SQLite has one writer anyway), for a step
    that then locks rows an import or a reroute locks only after writing its own entries (a
    hit, a sent referral): the step waits for them instead of deadlocking with them."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(_HEAD.c.id).where(_HEAD.c.id == 1).with_for_update())


def _advance_head(session: Session) -> tuple[int, str]:
    row = session.execute(_ADVANCE_HEAD).one_or_none()
    if row is None:
        try:
            with session.begin_nested():
                session.execute(insert(AuditHead).values(id=1, seq=0, last_hash=GENESIS_HASH))
        except IntegrityError:
            pass  # another writer created it first
        row = session.execute(_ADVANCE_HEAD).one()
    return row.seq, row.last_hash


def record(
    session: Session,
    actor: Actor,
    action: str,
    object_type: str | None = None,
    object_id: object = None,
    *,
    outcome: str = "success",
    detail: dict | str | None = None,
) -> None:
    session.flush()  # the caller's pending changes are written first, as before its entry
    seq, prev_hash = _advance_head(session)
    # Microseconds are dropped so the hashed timestamp survives every engine unchanged.
    at = utcnow().replace(microsecond=0)
    detail_text = detail if isinstance(detail, str) else json.dumps(detail or {}, sort_keys=True, default=str)
    fields = dict(
        seq=seq, at=at, user_id=actor.user_id, agency_id=actor.agency_id, address=actor.address,
        action=action, object_type=object_type,
        object_id=None if object_id is None else str(object_id), outcome=outcome, detail=detail_text,
    )
    digest = entry_hash(prev_hash, **fields)
    session.execute(_APPEND_ENTRY, {**fields, "prev_hash": prev_hash, "hash": digest})
    session.execute(_SET_LAST_HASH, {"digest": digest})


@dataclass
class VerifyResult:
    checked: int
    first_broken_seq: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.first_broken_seq is None


def verify(session: Session) -> VerifyResult:
    """Walk the whole chain in order, from the anchor left by pruning; name the first entry
    whose hash or link is wrong."""
    head = session.get(AuditHead, 1, populate_existing=True)
    expected_prev = head.anchor_hash if head else GENESIS_HASH
    expected_seq = head.anchor_seq if head else 1
    checked = 0
    rows = session.execute(select(AuditEntry).where(AuditEntry.seq >= expected_seq)
                           .order_by(AuditEntry.seq).execution_options(yield_per=2000))
    for entry in rows.scalars():
        if entry.seq != expected_seq:
            return VerifyResult(checked, expected_seq, f"entry {expected_seq} is missing")
        if entry.prev_hash != expected_prev:
            return VerifyResult(checked, entry.seq, "link to the previous entry is broken")
        digest = entry_hash(
            entry.prev_hash, entry.seq, entry.at, entry.user_id, entry.agency_id, entry.address,
            entry.action, entry.object_type, entry.object_id, entry.outcome, entry.detail,
        )
        if digest != entry.hash:
            return VerifyResult(checked, entry.seq, "contents do not match the entry's hash")
        expected_prev = entry.hash
        expected_seq += 1
        checked += 1
    if head is not None and (head.seq != expected_seq - 1 or head.last_hash != expected_prev):
        return VerifyResult(checked, expected_seq, "entries after this point were removed")
    return VerifyResult(checked)


def prune(session: Session, before: datetime, actor: Actor = SYSTEM) -> int:
    """Delete entries older than `before` (the retention period) and move the anchor to the
    first kept entry, so the rest of the chain still verifies."""
    first_kept = session.scalars(select(AuditEntry).where(AuditEntry.at >= before)
                                 .order_by(AuditEntry.seq).limit(1)).one_or_none()
    head = session.get(AuditHead, 1, populate_existing=True)
    if head is None:
        return 0
    if first_kept is None:
        anchor_seq, anchor_hash = head.seq + 1, head.last_hash
    else:
        anchor_seq, anchor_hash = first_kept.seq, first_kept.prev_hash
    removed = session.execute(delete(AuditEntry).where(AuditEntry.seq < anchor_seq)).rowcount
    session.execute(update(AuditHead).where(AuditHead.id == 1).values(anchor_seq=anchor_seq, anchor_hash=anchor_hash))
    record(session, actor, "audit.prune", detail={"before": before.isoformat(), "removed": removed})
    return removed


@dataclass
class TrailFilters:
    action: str | None = None
    outcome: str | None = None
    user_id: int | None = None
    # Days in `zone`, both included: the viewer's zone, where the page shows the times.
    date_from: date | None = None
    date_to: date | None = None
    zone: tzinfo = timezone.utc


def _day_starts(day: date, zone: tzinfo) -> datetime:
    """The instant `day` starts in `zone`, in UTC (where a clock change skips midnight, the
    first time the clocks show)."""
    return datetime.combine(day, time.min, tzinfo=zone).astimezone(timezone.utc)


def filtered(query, filters: TrailFilters):
    """Apply the audit page's filters to a scoped query of entries."""
    if filters.action:
        query = query.where(AuditEntry.action.startswith(filters.action, autoescape=True))
    if filters.outcome:
        query = query.where(AuditEntry.outcome == filters.outcome)
    if filters.user_id:
        query = query.where(AuditEntry.user_id == filters.user_id)
    if filters.date_from:
        query = query.where(AuditEntry.at >= _day_starts(filters.date_from, filters.zone))
    if filters.date_to:
        query = query.where(AuditEntry.at < _day_starts(filters.date_to + timedelta(days=1), filters.zone))
    return query.order_by(AuditEntry.seq.desc())


def with_names(query):
    """`filtered` entries as rows of the entry and the names of its user and agency, joined in the
    same query; a name is None where the entry names nobody, or someone no longer in the
    directory (the trail outlives its users)."""
    return (query.add_columns(User.name.label("user_name"), Agency.name.label("agency_name"))
            .outerjoin(User, User.id == AuditEntry.user_id)
            .outerjoin(Agency, Agency.id == AuditEntry.agency_id))


def trail_page(session: Session, query, page: int, per_page: int) -> Page:
    """One page of `filtered` entries, newest first, named as `with_names` names them."""
    return paginate(session, with_names(query), page, per_page)
