"""Deconfliction: matching identifiers across referrals, hits and their workflow, the blind
check, common identifiers and notifications.

Matching is set-based. :func:`match_batch` sends a whole batch of match keys to the
database as one parameter (a PostgreSQL array, a JSON array on SQLite) and resolves it with
one statement, whatever the batch size; nothing is looked up one identifier at a time.

Two referrals match when they hold the same match key through *different* subjects (a
transfer carries the very same subjects to the new referral, which is no news to anyone). A
match between the referrals of two agencies is a hit; within one agency it is a possible
duplicate. A key held by more cases than the threshold is common and raises no hits: a case is
a referral with the referrals its transfers made, which count once. Common keys are marked
(CommonIdentifier, the admins' list) when a refresh meets them, and unmarked when a refresh
meets them no longer common, which then raises their hits between all their holders. The
threshold is configuration (COMMON_IDENTIFIER_THRESHOLD), read by every step: a changed one
applies to each key as steps meet it.

What a hit or a check reveals of the other side is a contact card: the agency, its country,
its liaison desk and the other referral's reference (see app/services/access.py). Views get
:class:`HitView` and :class:`CheckLine` objects that carry nothing else.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Integer, String, and_, bindparam, delete, distinct, func, or_, select, union, update
from sqlalchemy.orm import Session

from app.db import dialect_insert, utcnow
from app.models import (
    Agency,
    CommonIdentifier,
    Hit,
    HitMatch,
    HitSide,
    HitStatus,
    Identifier,
    Notification,
    NotificationCursor,
    NotificationKind,
    Referral,
    Role,
    Subject,
    User,
    referral_subjects,
    came_in_on_select,
)
from app.services import (
    Conflict,
    DomainError,
    Forbidden,
    Page,
    audit,
    check_version,
    flush_or_conflict,
    paginate,
    require_worker,
)
from app.services.access import (
    agency_contacts,
    get_visible_hit,
    get_visible_referral,
    let_go_at,
    match_counterparts,
    own_hit_matches,
    read_after_let_go,
    visible_hits,
    visible_notifications,
)
from app.services.audit import Actor
from app.services.identifiers import (
    PLATFORMS,
    IdentifierKind,
    InvalidIdentifier,
    NormalisedIdentifier,
    detect_kind,
    match_key,
    normalise,
)

NOTE_MAX = 1000
DEFAULT_COMMON_THRESHOLD = 20
DEFAULT_BLIND_CHECK_LIMIT = 10_000
IN_LIST_MAX = 10_000  # ids bound in one IN list: well under SQLite's limit on parameters

KIND_LABELS = {
    IdentifierKind.EMAIL: "E-mail",
    IdentifierKind.PHONE: "Phone",
    IdentifierKind.USERNAME: "Username",
    IdentifierKind.ACCOUNT_ID: "Account id",
    IdentifierKind.IP: "IP address",
}
PLATFORM_KINDS = frozenset({IdentifierKind.USERNAME, IdentifierKind.ACCOUNT_ID})


# --- settings ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    secret: bytes
    common_threshold: int
    blind_check_limit: int


def settings(session: Session) -> Settings:
    """Deconfliction settings, from the configuration the app attached to its sessions
    (`session.info["config"]`, see create_app), so that services stay free of Flask."""
    config: Mapping = session.info.get("config") or {}
    secret = config.get("MATCH_KEY_SECRET") or b""
    return Settings(
        secret=secret.encode("utf-8") if isinstance(secret, str) else bytes(secret),
        common_threshold=int(config.get("COMMON_IDENTIFIER_THRESHOLD", DEFAULT_COMMON_THRESHOLD)),
        blind_check_limit=int(config.get("BLIND_CHECK_LIMIT", DEFAULT_BLIND_CHECK_LIMIT)),
    )


def _secret(session: Session) -> bytes:
    secret = settings(session).secret
    if not secret:
        raise RuntimeError("No MATCH_KEY_SECRET on this session: create sessions through the app.")
    return secret



# --- parsing identifier lines ----------------------------------------------------------------

# "kind: value" or "kind/platform: value"; anything else is a bare value.
_PREFIX = re.compile(
    r"^\s*(?P<kind>email|phone|username|account_id|ip)(?:\s*/\s*(?P<platform>[A-Za-z0-9_-]+))?\s*:\s*(?P<value>.*)$",
    re.IGNORECASE | re.DOTALL,
)


# A dotted quad that detect_kind() would take for a phone number once it fails as an address.
_IPV4ISH = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


@dataclass
class ParsedLine:
    line_no: int
    text: str
    ident: NormalisedIdentifier | None = None
    key: str = ""
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.ident is not None


def nonblank_lines(text: str | Sequence[str]) -> list[tuple[int, str]]:
    lines = text.splitlines() if isinstance(text, str) else list(text)
    return [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]


def parse_lines(
    lines: Iterable[tuple[int, str]],
    secret: bytes,
    *,
    kind: IdentifierKind | None = None,
    platform: str | None = None,
    region: str | None = None,
) -> list[ParsedLine]:
    """Normalise numbered lines. A line may name its kind ("email: ...", "username/discord:
    ..."); otherwise `kind` applies, else the kind is detected. `platform` is the default for
    usernames and account ids, `region` the hint for phone numbers without a country code.
    Bad lines carry their reason; the others their identifier and match key."""
    result = []
    for line_no, text in lines:
        line = ParsedLine(line_no=line_no, text=text)
        result.append(line)
        line_kind, line_platform, value = kind, platform, text
        prefixed = _PREFIX.match(text)
        if prefixed:
            line_kind = IdentifierKind(prefixed["kind"].lower())
            line_platform = prefixed["platform"] or platform
            value = prefixed["value"]
        if line_kind is None:
            line_kind = IdentifierKind.IP if _IPV4ISH.fullmatch(value.strip()) else detect_kind(value)
            if line_kind is None:
                line.reason = ("cannot tell what kind of identifier this is: choose a kind, or write it "
                               "as 'username/discord: name'")
                continue
        if line_kind not in PLATFORM_KINDS:
            if prefixed and prefixed["platform"]:
                line.reason = "only usernames and account ids belong to a platform"
                continue
            line_platform = None
        try:
            line.ident = normalise(line_kind, value, platform=line_platform, region=region)
        except InvalidIdentifier as exc:
            line.reason = exc.reason
            continue
        line.key = match_key(secret, line.ident)
    return result


# --- matching --------------------------------------------------------------------------------

class Holder(NamedTuple):
    """A referral holding a key, and through which subject and identifier."""

    referral_id: int
    reference: str
    agency_id: int
    subject_id: int
    identifier_id: int


@dataclass
class BatchMatch:
    # key -> number of cases holding it (a transfer chain counts once) where more referrals
    # than the threshold hold it, else of referrals (as many as its cases or more: either way
    # not common); keys nobody holds are absent, and so are the keys a single referral holds
    # when the batch was matched with `shared_only`
    counts: dict[str, int] = field(default_factory=dict)
    # key -> holders, for keys held by at most the threshold
    holders: dict[str, list[Holder]] = field(default_factory=dict)
    # keys held by more cases than the threshold
    common: set[str] = field(default_factory=set)
    # (referral, identifier) held but left out of `holders` (see `_carried_over`)
    carried: set[tuple[int, int]] = field(default_factory=set)


def _keys_relation(dialect_name: str):
    """The batch as a one-column table (`.c.value`) bound as the single parameter
    `match_keys` (see :func:`_bound_keys`)."""
    keys = bindparam("match_keys", type_=String)
    if dialect_name == "postgresql":
        return func.unnest(func.string_to_array(keys, ",")).table_valued("value").render_derived("batch")
    return func.json_each(keys).table_valued("value").alias("batch")


def _bound_keys(dialect_name: str, keys: set[str]) -> str:
    # Keys are hex, so they need no quoting: joined by hand, they cost a fifth of json.dumps.
    if dialect_name == "postgresql":
        # One text parameter split on the server: a text[] parameter of 150,000 elements
        # costs the driver far more to adapt than the query takes.
        return ",".join(keys)
    # Sorted, so that SQLite probes the index in its order: a third faster than at random.
    return '["' + '","'.join(sorted(keys)) + '"]'


@functools.cache
def match_statement(dialect_name: str, shared_only: bool, by_case: bool):
    """One statement: for every key of the batch that anyone holds (with `shared_only`, that
    two referrals or more hold), the number of referrals holding it (with `by_case`, of
    cases) and, unless that number is over the threshold, who holds it. Parameters:
    `match_keys` and `threshold`.

    A case is a referral and the referrals its transfers made, which carry its very subjects:
    counted by case, a transfer chain counts once, each holder that continues a transfer
    standing for the referral its case came in on (one recursive walk up the chains of those
    holders). That costs a look-up for every holder, so :func:`match_batch` counts by case only
    the keys that more referrals than the threshold hold: for the others, the cases are as few
    or fewer, and the key is not common either way.

    Built once per engine and mode: the statement is the same whatever the keys, and
    building it costs more than running it for a blind check of a few identifiers.

    The batch (distinct keys) is joined, not tested with IN, which lets both engines walk
    it and probe the (match_key, subject_id) index once per key."""
    batch = _keys_relation(dialect_name)
    held = (
        select(Identifier.match_key, referral_subjects.c.referral_id, Identifier.subject_id,
               Identifier.id.label("identifier_id"))
        .select_from(batch)
        .join(Identifier, Identifier.match_key == batch.c.value)
        .join(referral_subjects, referral_subjects.c.subject_id == Identifier.subject_id)
        .cte("held")
    )
    threshold = bindparam("threshold", type_=Integer)
    referrals = func.count(distinct(held.c.referral_id))
    counted = referrals
    counts = select(held.c.match_key).select_from(held).group_by(held.c.match_key)
    if by_case:
        came_in_on = came_in_on_select(and_(Referral.transferred_from_id.is_not(None),
                                            Referral.id.in_(select(held.c.referral_id)))).subquery("came_in_on")
        counted = func.count(distinct(func.coalesce(came_in_on.c.came_in_on, held.c.referral_id)))
        counts = counts.outerjoin(came_in_on, came_in_on.c.start == held.c.referral_id)
    counts = counts.add_columns(counted.label("n"))
    if shared_only:
        # A key of one referral pairs nothing: it stays only if common (under a threshold of 0).
        # (One case of two referrals may pair them: the second's sender recorded it too.)
        counts = counts.having(or_(referrals >= 2, counted > threshold))
    counts = counts.cte("counts")
    counterparts = match_counterparts().subquery("counterparts")
    return (
        select(counts.c.match_key, counts.c.n, held.c.referral_id, counterparts.c.reference,
               counterparts.c.agency_id, held.c.subject_id, held.c.identifier_id, counterparts.c.transferred_from_id)
        .select_from(counts)
        .outerjoin(held, and_(held.c.match_key == counts.c.match_key, counts.c.n <= threshold))
        .outerjoin(counterparts, counterparts.c.referral_id == held.c.referral_id)
    )


def match_batch(session: Session, keys: Iterable[str], *, threshold: int | None = None,
                shared_only: bool = False) -> BatchMatch:
    """Resolve a batch of match keys in one statement (see :func:`match_statement`), and a
    second for the keys it finds held by more referrals than the threshold, counted again by
    case: a key is common when more cases than the threshold hold it.

    `shared_only` leaves out the keys that a single referral holds: they pair no referrals,
    and in a tip import's batch, whose every key is stored already, they are most keys."""
    unique_keys = set(keys)
    result = BatchMatch()
    if not unique_keys:
        return result
    if threshold is None:
        threshold = settings(session).common_threshold
    # Core execution on the session's connection, all rows at once: plain tuples, no ORM
    # loading; at 150,000 keys the Python side costs as much as the query.
    connection = session.connection()
    dialect_name = connection.dialect.name
    counts, holders = result.counts, result.holders
    successors = set()

    def match(batch_keys: set[str], by_case: bool) -> set[str]:
        """Counts and holders of these keys; returns the keys over the threshold."""
        rows = connection.execute(
            match_statement(dialect_name, shared_only, by_case),
            {"match_keys": _bound_keys(dialect_name, batch_keys), "threshold": threshold},
        ).all()
        over = set()
        for key, n, referral_id, reference, agency_id, subject_id, identifier_id, transferred_from_id in rows:
            counts[key] = n
            if n > threshold:
                over.add(key)
            elif referral_id is not None:
                holders.setdefault(key, []).append(Holder(referral_id, reference, agency_id, subject_id,
                                                          identifier_id))
                if transferred_from_id is not None:
                    successors.add(referral_id)
        return over

    over = match(unique_keys, by_case=False)
    # Counted by referral, a key over the threshold may be held by fewer cases.
    result.common = match(over, by_case=True) if over else over
    result.carried = _carried_over(session, successors) if successors else set()
    if result.carried:
        for key in list(holders):
            kept = [h for h in holders[key] if (h.referral_id, h.identifier_id) not in result.carried]
            if kept:
                holders[key] = kept
            else:
                del holders[key]
    return result


# --- keeping hits up to date -----------------------------------------------------------------

@dataclass
class RefreshResult:
    created: list[int] = field(default_factory=list)  # hit ids
    updated: list[int] = field(default_factory=list)
    common: list[str] = field(default_factory=list)  # common keys met
    # keys marked common and met no longer common: unmarked, and matched between every two
    # referrals holding them, not only these referrals' pairs
    uncommon: list[str] = field(default_factory=list)


def gained_since(since: datetime | None) -> list:
    """The condition on a join of referral_subjects and identifiers for what a referral gained
    from `since` on (nothing to add without it), and for what it holds of the keys marked
    common: they raised no hit when they came, and may now (fewer cases hold them, or the
    threshold was raised)."""
    if since is None:
        return []
    return [or_(Identifier.created_at >= since, referral_subjects.c.added_at >= since,
                Identifier.match_key.in_(select(CommonIdentifier.match_key)))]


def refresh_hits_for_referral(session: Session, actor: Actor, referral_id: int, *,
                              now: datetime | None = None) -> RefreshResult:
    return refresh_hits(session, actor, [referral_id], now=now)


def refresh_hits(session: Session, actor: Actor, referral_ids: Iterable[int], *,
                 now: datetime | None = None, since: datetime | None = None, keys=None,
                 subjects: Sequence[int] | None = None) -> RefreshResult:
    """Match the identifiers of these referrals against every referral's and record what is
    new: hits, matched identifiers of each side, notifications, common identifiers. `now`
    stamps them (the time of the step that matched: an import's, or the demo's replay).

    With `since`, only what the referrals gained from then on is matched (`gained_since`):
    identifiers written since, and every identifier of a subject linked to them since, besides
    the common keys they hold. What they held before was matched when it came, and a step
    that adds a few holders to a package of thousands matches those few, not the package.
    With `keys` (a select of match keys), only the identifiers of those keys are matched.
    With `subjects` beside `since` (at most IN_LIST_MAX), the caller says that only these
    subjects gained anything: their identifiers are read through them, and the referrals'
    others only for the keys marked common, instead of every identifier of the referrals
    read to keep what is new (a follow-up tip adding a holder to a package of thousands).

    A key marked common that no longer is (fewer cases hold it, or the threshold was raised)
    loses its mark, and raises its hits between every two referrals holding it, these or not:
    the pairs of two others were left without a hit for it as much as these referrals' were,
    and no step of theirs would match it again, since it is not marked any more.

    A bounded number of statements, whatever the number of identifiers: one to read these
    referrals' identifiers, one to match them, and a few batched reads and writes."""
    ids = sorted(set(referral_ids))
    result = RefreshResult()
    if not ids:
        return result
    session.flush()
    own = (select(referral_subjects.c.referral_id, Identifier.subject_id, Identifier.id, Identifier.match_key,
                  Identifier.kind, Identifier.platform, Identifier.value,
                  CommonIdentifier.match_key.is_not(None).label("marked"))
           .join(referral_subjects, referral_subjects.c.subject_id == Identifier.subject_id)
           .outerjoin(CommonIdentifier, CommonIdentifier.match_key == Identifier.match_key)
           .where(referral_subjects.c.referral_id.in_(ids),
                  *([] if keys is None else [Identifier.match_key.in_(keys)])))
    if since is not None and subjects is not None:
        # Two reads, each along an index (subject; match key), where one condition over both
        # would read every identifier of the referrals.
        own_rows = session.execute(union(
            own.where(referral_subjects.c.subject_id.in_(subjects), *gained_since(since)),
            own.where(Identifier.match_key.in_(select(CommonIdentifier.match_key))),
        )).all()
    else:
        own_rows = session.execute(own.where(*gained_since(since))).all()
    if not own_rows:
        return result

    threshold = settings(session).common_threshold
    batch = match_batch(session, (row.match_key for row in own_rows), threshold=threshold, shared_only=True)
    now = now or utcnow()

    # Common keys: marked (or their count refreshed) for the admins' list; they raise nothing.
    if batch.common:
        sample = {row.match_key: row for row in own_rows if row.match_key in batch.common}
        statement = dialect_insert(session, CommonIdentifier.__table__)
        statement = statement.on_conflict_do_update(
            index_elements=["match_key"],
            set_={"case_count": statement.excluded.case_count, "updated_at": statement.excluded.updated_at},
        )
        session.execute(statement, [
            {"match_key": key, "kind": row.kind, "platform": row.platform, "value": row.value,
             "case_count": batch.counts[key], "marked_at": now, "updated_at": now}
            for key, row in sorted(sample.items())
        ])
        result.common = sorted(batch.common)
    # Marked keys no longer common: unmarked, and all their holders pair below.
    uncommon = {row.match_key for row in own_rows if row.marked} - batch.common
    if uncommon:
        result.uncommon = sorted(uncommon)
        session.execute(delete(CommonIdentifier).where(CommonIdentifier.match_key.in_(result.uncommon)))

    kind_of = {row.match_key: row.kind for row in own_rows}
    if batch.carried:
        own_rows = [row for row in own_rows if (row.referral_id, row.id) not in batch.carried]

    # Who holds each key, by referral: subjects and identifiers.
    subjects_of: dict[tuple[int, str], set[int]] = defaultdict(set)
    idents_of: dict[tuple[int, str], set[int]] = defaultdict(set)
    agency_of: dict[int, int] = {}
    reference_of: dict[int, str] = {}
    for key, holders in batch.holders.items():
        for h in holders:
            subjects_of[(h.referral_id, key)].add(h.subject_id)
            idents_of[(h.referral_id, key)].add(h.identifier_id)
            agency_of[h.referral_id] = h.agency_id
            reference_of[h.referral_id] = h.reference

    # Pairs of referrals sharing a key through different subjects, and each side's identifiers:
    # a key of these referrals pairs them with its other holders, a key no longer common pairs
    # all its holders.
    pairs: dict[tuple[int, int], set[tuple[HitSide, int, str]]] = defaultdict(set)
    own_keys = {(row.referral_id, row.match_key) for row in own_rows}
    unmarked_keys = {(h.referral_id, key) for key in uncommon for h in batch.holders.get(key, ())}
    for referral_id, key in own_keys | unmarked_keys:
        holders = batch.holders.get(key)
        if not holders:
            continue  # common
        for other in {h.referral_id for h in holders}:
            if other == referral_id:
                continue
            if len(subjects_of[(referral_id, key)] | subjects_of[(other, key)]) < 2:
                continue  # the very same subject on both (a transfer)
            low, high = min(referral_id, other), max(referral_id, other)
            for side, holder_id in ((HitSide.LOW, low), (HitSide.HIGH, high)):
                for identifier_id in idents_of[(holder_id, key)]:
                    pairs[(low, high)].add((side, identifier_id, key))
    if not pairs:
        if result.common or result.uncommon:
            _audit_refresh(session, actor, ids, result)
        return result

    paired = sorted(set(ids) | {referral_id for referral_id, _ in unmarked_keys})
    existing = _hits_of(session, paired)

    # New hits. ON CONFLICT DO NOTHING: a pair created meanwhile by a concurrent request is
    # taken as existing instead of failing the request.
    new_pairs = sorted(pair for pair in pairs if pair not in existing)
    created: dict[tuple[int, int], int] = {}
    if new_pairs:
        statement = dialect_insert(session, Hit.__table__).on_conflict_do_nothing(
            index_elements=["referral_low_id", "referral_high_id"]
        ).returning(Hit.id, Hit.referral_low_id, Hit.referral_high_id)
        rows = session.execute(statement, [
            {"referral_low_id": low, "referral_high_id": high, "agency_low_id": agency_of[low],
             "agency_high_id": agency_of[high], "status": HitStatus.NEW, "created_at": now,
             "updated_at": now, "version": 1, "resolution_note": ""}
            for low, high in new_pairs
        ]).all()
        created = {(row.referral_low_id, row.referral_high_id): row.id for row in rows}
        missed = [pair for pair in new_pairs if pair not in created]
        if missed:
            existing.update(_hits_of(session, paired))
    hit_id_of = {**existing, **created}

    # Matched identifiers, per side; the ones recorded already are left alone.
    statement = dialect_insert(session, HitMatch.__table__).on_conflict_do_nothing(
        index_elements=["hit_id", "side", "identifier_id"]
    ).returning(HitMatch.hit_id)
    added = session.execute(statement, [
        {"hit_id": hit_id_of[pair], "side": side, "identifier_id": identifier_id, "kind": kind_of[key],
         "match_key": key, "created_at": now}
        for pair, matches in sorted(pairs.items()) for side, identifier_id, key in sorted(matches)
    ]).scalars().all()
    created_ids = set(created.values())
    updated_ids = sorted(set(added) - created_ids)
    if updated_ids:
        session.execute(
            update(Hit).where(Hit.id.in_(updated_ids)).values(updated_at=now, version=Hit.version + 1),
            execution_options={"synchronize_session": "fetch"},
        )

    # Both agencies hear of every new hit and of new matches on an existing one.
    pair_of = {hit_id: pair for pair, hit_id in hit_id_of.items()}
    names = dict(session.execute(select(Agency.id, Agency.name).where(Agency.id.in_(set(agency_of.values())))).all())
    notes = []
    for hit_id in sorted(created_ids) + updated_ids:
        low, high = pair_of[hit_id]
        kind = NotificationKind.HIT_NEW if hit_id in created_ids else NotificationKind.HIT_UPDATED
        notes += _hit_notifications(hit_id, kind, (low, agency_of[low]), (high, agency_of[high]),
                                    reference_of, names, now)
    if notes:
        session.execute(Notification.__table__.insert(), notes)
    result.created = sorted(created_ids)
    result.updated = updated_ids
    _audit_refresh(session, actor, ids, result)
    return result


@dataclass
class RecheckResult:
    marked: int = 0  # keys marked common afterwards
    newly_marked: int = 0
    unmarked: int = 0  # no longer common, or held by nobody
    hits: list[int] = field(default_factory=list)  # hits raised by the keys unmarked

    @property
    def summary(self) -> str:
        return (f"{self.marked} identifiers marked common ({self.newly_marked} newly); {self.unmarked} no longer "
                f"common, raising {len(self.hits)} new hits.")


def recheck_common(session: Session, actor: Actor, *, now: datetime | None = None) -> RecheckResult:
    """Bring every common mark in line with what referrals hold now and with the threshold now,
    not only the keys a step meets (`refresh_hits`): a marked key nobody holds any more loses
    its mark; a marked key no longer common loses it and raises its hits between all its
    holders; a key over a lowered threshold is marked. For an administrator after changing the
    threshold (`flask --app wsgi deconfliction recheck-common`).

    One aggregate over the held identifiers finds the keys more referrals than the threshold
    hold; the referrals holding those or a marked key are then matched on those keys only,
    in slices of ids."""
    if actor.user is not None and actor.user.role != Role.ADMIN:
        raise Forbidden("Only administrators recheck common identifiers.")
    now = now or utcnow()
    threshold = settings(session).common_threshold
    before = set(session.scalars(select(CommonIdentifier.match_key)))
    held = (select(Identifier.match_key)
            .join(referral_subjects, referral_subjects.c.subject_id == Identifier.subject_id))
    session.execute(delete(CommonIdentifier).where(
        ~held.where(Identifier.match_key == CommonIdentifier.match_key).exists()))
    over = (held.group_by(Identifier.match_key)
            .having(func.count(distinct(referral_subjects.c.referral_id)) > threshold))
    keys = select(CommonIdentifier.match_key).union(over)
    holding = session.scalars(
        select(distinct(referral_subjects.c.referral_id))
        .join(Identifier, Identifier.subject_id == referral_subjects.c.subject_id)
        .where(Identifier.match_key.in_(keys)).order_by(referral_subjects.c.referral_id)
    ).all()
    result = RecheckResult()
    for start in range(0, len(holding), IN_LIST_MAX):
        part = refresh_hits(session, actor, holding[start:start + IN_LIST_MAX], now=now, keys=keys)
        result.hits += part.created
    after = set(session.scalars(select(CommonIdentifier.match_key)))
    result.marked, result.newly_marked, result.unmarked = len(after), len(after - before), len(before - after)
    audit.record(session, actor, "deconfliction.recheck_common", detail={
        "threshold": threshold, "marked": result.marked, "newly_marked": result.newly_marked,
        "unmarked": result.unmarked, "new_hits": len(result.hits)})
    return result


def _hits_of(session: Session, referral_ids: list[int]) -> dict[tuple[int, int], int]:
    """The hits these referrals are on, by pair (low, high): one statement per slice of ids,
    two IN lists under the engines' limit on parameters."""
    hits = {}
    step = IN_LIST_MAX // 2
    for start in range(0, len(referral_ids), step):
        part = referral_ids[start:start + step]
        hits.update(
            ((row.referral_low_id, row.referral_high_id), row.id)
            for row in session.execute(select(Hit.id, Hit.referral_low_id, Hit.referral_high_id)
                                       .where(or_(Hit.referral_low_id.in_(part), Hit.referral_high_id.in_(part))))
        )
    return hits


def _carried_over(session: Session, successors: set[int]) -> set[tuple[int, int]]:
    """(referral, identifier) pairs that match nothing: on these successors of transfers, the
    identifiers of every subject their sender did not record itself. Those subjects match
    through the referral the case came in on, whose sender is their party; the agency that
    passed the case on is a party only to what it recorded (`access.let_go_at`: what grows on
    the case later is not its to see, and it is no one's contact for the case any more)."""
    carried: set[tuple[int, int]] = set()
    ordered = sorted(successors)
    for start in range(0, len(ordered), IN_LIST_MAX):
        carried.update(session.execute(
            select(referral_subjects.c.referral_id, Identifier.id)
            .join(Referral, Referral.id == referral_subjects.c.referral_id)
            .join(Subject, Subject.id == referral_subjects.c.subject_id)
            .join(Identifier, Identifier.subject_id == Subject.id)
            .where(Referral.id.in_(ordered[start:start + IN_LIST_MAX]), Subject.agency_id != Referral.sender_agency_id)
        ).tuples())
    return carried


def _hit_notifications(hit_id, kind, low, high, reference_of, names, now) -> list[dict]:
    (low_ref, low_agency), (high_ref, high_agency) = low, high
    if low_agency == high_agency:
        verb = "Possible duplicate" if kind is NotificationKind.HIT_NEW else "More matching identifiers"
        message = (f"{verb}: your referrals {reference_of[low_ref]} and {reference_of[high_ref]} "
                   "hold the same identifiers.")
        return [dict(agency_id=low_agency, kind=kind, hit_id=hit_id, message=message, created_at=now)]
    rows = []
    for (own_ref, own_agency), (other_ref, other_agency) in ((low, high), (high, low)):
        if kind is NotificationKind.HIT_NEW:
            message = (f"Deconfliction hit: your referral {reference_of[own_ref]} and referral "
                       f"{reference_of[other_ref]} of {names[other_agency]} hold the same identifiers.")
        else:
            message = (f"More matching identifiers between your referral {reference_of[own_ref]} and referral "
                       f"{reference_of[other_ref]} of {names[other_agency]}.")
        rows.append(dict(agency_id=own_agency, kind=kind, hit_id=hit_id, message=message, created_at=now))
    return rows


def _audit_refresh(session: Session, actor: Actor, ids: list[int], result: RefreshResult) -> None:
    audit.record(
        session, actor, "deconfliction.match", "referral", ids[0] if len(ids) == 1 else None,
        detail={"referrals": ids, "new_hits": result.created, "updated_hits": result.updated,
                "common_identifiers": len(result.common), "no_longer_common": len(result.uncommon)},
    )


# --- the hit workflow ------------------------------------------------------------------------

def _notify_other_party(session: Session, hit: Hit, actor: Actor, kind: NotificationKind, message: str) -> None:
    """Tell the other agency of the hit what the actor's agency did (it knows already)."""
    for agency_id in sorted({hit.agency_low_id, hit.agency_high_id} - {actor.agency_id}):
        session.add(Notification(agency_id=agency_id, kind=kind, hit_id=hit.id, message=message))


def _references(session: Session, referral_ids: Iterable[int]) -> dict[int, str]:
    counterparts = match_counterparts().subquery()
    return dict(session.execute(
        select(counterparts.c.referral_id, counterparts.c.reference)
        .where(counterparts.c.referral_id.in_(sorted(set(referral_ids))))
    ).all())


def acknowledge(session: Session, actor: Actor, hit_id: int, expected_version: int | None) -> Hit:
    """Stamp the acting agency's acknowledgement; both stamped makes the hit acknowledged."""
    hit = get_visible_hit(session, actor.user, hit_id, for_update=True)
    require_worker(actor, "Your role may read deconfliction results but not act on them.")
    if hit.status is HitStatus.RESOLVED:
        raise Conflict("This hit is resolved already.")  # by the other party, or a colleague, meanwhile
    pending = [side for side in hit.sides_of(actor.agency_id) if hit.acknowledged_at_of(side) is None]
    if not pending:
        raise DomainError("Your agency has acknowledged this hit already.")
    check_version(hit, expected_version, "hit")
    now = utcnow()
    for side in pending:
        setattr(hit, f"acknowledged_{side.value}_at", now)
        setattr(hit, f"acknowledged_{side.value}_by_id", actor.user_id)
    if hit.acknowledged_low_at and hit.acknowledged_high_at:
        hit.status = HitStatus.ACKNOWLEDGED
    hit.updated_at = now
    flush_or_conflict(session, "hit")
    refs = _references(session, (hit.referral_low_id, hit.referral_high_id))
    _notify_other_party(session, hit, actor, NotificationKind.HIT_ACKNOWLEDGED,
                    f"Hit {refs[hit.referral_low_id]} / {refs[hit.referral_high_id]} acknowledged by "
                    f"{actor.user.agency.name}.")
    session.flush()
    audit.record(session, actor, "hit.acknowledge", "hit", hit.id, detail={"status": hit.status.value})
    return hit


def resolve(session: Session, actor: Actor, hit_id: int, expected_version: int | None,
            lead_agency_id: int | None, note: str) -> Hit:
    """Record the agreed lead agency (one of the two parties) and a note."""
    hit = get_visible_hit(session, actor.user, hit_id, for_update=True)
    require_worker(actor, "Your role may read deconfliction results but not act on them.")
    if hit.status is HitStatus.RESOLVED:
        raise Conflict("This hit is resolved already.")  # by the other party, or a colleague, meanwhile
    check_version(hit, expected_version, "hit")
    if lead_agency_id not in (hit.agency_low_id, hit.agency_high_id):
        raise DomainError("The lead must be one of the two agencies.", field="lead_agency_id")
    note = (note or "").strip()
    if not note:
        raise DomainError("Say how the lead was agreed.", field="note")
    if len(note) > NOTE_MAX:
        raise DomainError(f"At most {NOTE_MAX} characters.", field="note")
    now = utcnow()
    for side in hit.sides_of(actor.agency_id):  # resolving acknowledges too
        if hit.acknowledged_at_of(side) is None:
            setattr(hit, f"acknowledged_{side.value}_at", now)
            setattr(hit, f"acknowledged_{side.value}_by_id", actor.user_id)
    hit.status = HitStatus.RESOLVED
    hit.lead_agency_id = lead_agency_id
    hit.resolution_note = note
    hit.resolved_at = now
    hit.resolved_by_id = actor.user_id
    hit.updated_at = now
    flush_or_conflict(session, "hit")
    session.refresh(hit, ["lead_agency"])
    refs = _references(session, (hit.referral_low_id, hit.referral_high_id))
    _notify_other_party(session, hit, actor, NotificationKind.HIT_RESOLVED,
                    f"Hit {refs[hit.referral_low_id]} / {refs[hit.referral_high_id]} resolved by "
                    f"{actor.user.agency.name}: {hit.lead_agency.name} leads.")
    session.flush()
    audit.record(session, actor, "hit.resolve", "hit", hit.id, detail={"lead_agency_id": lead_agency_id})
    return hit


# --- what a party sees of a hit --------------------------------------------------------------

@dataclass(frozen=True)
class Contact:
    """All a match reveals of the other side."""

    agency_id: int
    agency_name: str
    country_code: str | None
    desk_email: str
    desk_phone: str
    reference: str


@dataclass(frozen=True)
class MatchView:
    kind: IdentifierKind
    platform: str | None
    raw: str
    value: str

    @property
    def kind_label(self) -> str:
        return KIND_LABELS[self.kind]

    @property
    def platform_label(self) -> str:
        return PLATFORMS.get(self.platform or "", "")


@dataclass
class HitView:
    id: int
    version: int
    status: HitStatus
    is_duplicate: bool
    created_at: datetime
    updated_at: datetime
    own_referrals: list[tuple[int, str]]  # (id, reference) of the viewer's referral(s)
    other: Contact | None  # None for a possible duplicate
    own_matches: list[MatchView]
    acknowledged_by_us_at: datetime | None
    acknowledged_by_them_at: datetime | None
    lead_agency_name: str | None
    resolution_note: str
    resolved_at: datetime | None
    lead_choices: list[tuple[int, str]]
    can_acknowledge: bool = False
    can_resolve: bool = False

    @property
    def kinds(self) -> list[str]:
        return sorted({m.kind_label for m in self.own_matches})


def _match_views(rows) -> dict[int, list[MatchView]]:
    """Matched identifiers by hit, from rows of (hit_id, kind, platform, raw, value), each
    once."""
    matches: dict[int, list[MatchView]] = defaultdict(list)
    seen = set()
    for row in rows:
        view = MatchView(row.kind, row.platform, row.raw, row.value)
        if (row.hit_id, view) not in seen:
            seen.add((row.hit_id, view))
            matches[row.hit_id].append(view)
    return matches


def _contact_cards(session: Session, hits: Sequence[Hit]):
    """The contact card of every party to these hits, by agency id."""
    agency_ids = {a for hit in hits for a in (hit.agency_low_id, hit.agency_high_id)}
    return {row.id: row for row in session.execute(agency_contacts(agency_ids))}


def _contact(card, reference: str) -> Contact:
    return Contact(card.id, card.name, card.country_code, card.desk_email, card.desk_phone, reference)


def describe(session: Session, user: User, hits: Sequence[Hit]) -> list[HitView]:
    """The viewer's view of these hits (which must be visible to them), sides by the viewer's
    agency: their own referral and own matched identifiers, and the other side's contact card.
    For the hits list and a hit's page, whose viewer is a party; a referral's page shows its
    hits relative to the referral (:func:`hits_for_referral`)."""
    if not hits:
        return []
    references = _references(session, (r for hit in hits for r in (hit.referral_low_id, hit.referral_high_id)))
    contacts = _contact_cards(session, hits)
    matches = _match_views(session.execute(own_hit_matches(user, [hit.id for hit in hits])))
    views = []
    for hit in hits:
        sides = hit.sides_of(user.agency_id)
        if not sides:  # pragma: no cover - callers pass visible hits only
            raise Forbidden("Not a party to this hit.")
        others = [s for s in HitSide if s not in sides]
        other = None
        if others:
            side = others[0]
            other = _contact(contacts[hit.agency_id_of(side)], references[hit.referral_id_of(side)])
        us_ack = [hit.acknowledged_at_of(s) for s in sides]
        open_ = hit.status is not HitStatus.RESOLVED
        views.append(HitView(
            id=hit.id, version=hit.version, status=hit.status, is_duplicate=hit.is_duplicate,
            created_at=hit.created_at, updated_at=hit.updated_at,
            own_referrals=[(hit.referral_id_of(s), references[hit.referral_id_of(s)]) for s in sides],
            other=other, own_matches=matches.get(hit.id, []),
            acknowledged_by_us_at=None if None in us_ack else max(us_ack),
            acknowledged_by_them_at=hit.acknowledged_at_of(others[0]) if others else None,
            lead_agency_name=contacts[hit.lead_agency_id].name if hit.lead_agency_id in contacts else None,
            resolution_note=hit.resolution_note, resolved_at=hit.resolved_at,
            lead_choices=[(a, contacts[a].name) for a in dict.fromkeys((hit.agency_low_id, hit.agency_high_id))],
            can_acknowledge=open_ and user.can_work_referrals and None in us_ack,
            can_resolve=open_ and user.can_work_referrals,
        ))
    return views


def view_hit(session: Session, actor: Actor, hit_id: int) -> HitView:
    """One hit as its viewer may see it, recorded on the audit trail."""
    hit = get_visible_hit(session, actor.user, hit_id)
    audit.record(session, actor, "hit.view", "hit", hit.id)
    return describe(session, actor.user, [hit])[0]


@dataclass
class ReferralHitView:
    """A hit on the page of one of its referrals, relative to that referral whichever side the
    viewer's agency holds: the other referral of the pair (the counterpart: its agency's contact
    card and its reference) and the identifiers of this referral that matched."""

    id: int
    status: HitStatus
    is_duplicate: bool
    updated_at: datetime
    counterpart: Contact
    own_counterpart_id: int | None  # the counterpart's id when the viewer's agency sent it: its page is theirs
    matches: list[MatchView]


def hits_for_referral(session: Session, user: User, referral_id: int) -> list[ReferralHitView]:
    """The hits of one referral that the user's agency is a party to, each relative to the
    referral, not to the viewer's agency: a party may open the other party's referral too (as
    its receiver, or its operation's lead), whose other side is then the party's own."""
    referral = get_visible_referral(session, user, referral_id)
    hits = session.scalars(
        visible_hits(user)
        .where(or_(Hit.referral_low_id == referral.id, Hit.referral_high_id == referral.id))
        .order_by(Hit.id.desc())
    ).unique().all()
    if not hits:
        return []
    counterpart_side = {hit.id: HitSide.HIGH if hit.referral_low_id == referral.id else HitSide.LOW for hit in hits}
    references = _references(session, (hit.referral_id_of(counterpart_side[hit.id]) for hit in hits))
    contacts = _contact_cards(session, hits)
    matches = _matches_on_referral(session, user, referral, [hit.id for hit in hits])
    views = []
    for hit in hits:
        side = counterpart_side[hit.id]
        counterpart_id, counterpart_agency_id = hit.referral_id_of(side), hit.agency_id_of(side)
        views.append(ReferralHitView(
            id=hit.id, status=hit.status, is_duplicate=hit.is_duplicate, updated_at=hit.updated_at,
            counterpart=_contact(contacts[counterpart_agency_id], references[counterpart_id]),
            own_counterpart_id=counterpart_id if counterpart_agency_id == user.agency_id else None,
            matches=matches.get(hit.id, []),
        ))
    return views


def _matches_on_referral(session: Session, user: User, referral: Referral,
                         hit_ids: list[int]) -> dict[int, list[MatchView]]:
    """The identifiers of this referral that matched, on these hits of the user's agency, as far
    as the referral's page shows its identifiers to the user: once the agency let the
    referral's subjects go (`access.let_go_at`), what others linked or added to them since is
    not its to read (`access.read_after_let_go`, as on its page of the subjects)."""
    on_referral = or_(and_(HitMatch.side == HitSide.LOW, Hit.referral_low_id == referral.id),
                      and_(HitMatch.side == HitSide.HIGH, Hit.referral_high_id == referral.id))
    query = (
        visible_hits(user)
        .with_only_columns(HitMatch.hit_id, Identifier.kind, Identifier.platform, Identifier.raw, Identifier.value)
        .select_from(Hit)
        .join(HitMatch, HitMatch.hit_id == Hit.id)
        .join(Identifier, Identifier.id == HitMatch.identifier_id)
        .where(Hit.id.in_(hit_ids), on_referral)
        .order_by(HitMatch.hit_id, Identifier.kind, Identifier.value)
    )
    cutoff = let_go_at(referral, user.agency_id)
    if cutoff is not None:
        query = (query.join(Subject, Subject.id == Identifier.subject_id)
                 .join(referral_subjects, and_(referral_subjects.c.subject_id == Subject.id,
                                               referral_subjects.c.referral_id == referral.id))
                 .where(*read_after_let_go(cutoff, Subject.agency_id == user.agency_id)))
    return _match_views(session.execute(query))


@dataclass
class HitFilters:
    status: HitStatus | None = None
    kind: IdentifierKind | None = None
    page: int = 1


def list_hits(session: Session, user: User, filters: HitFilters, per_page: int = 25) -> Page:
    query = visible_hits(user)
    if filters.status:
        query = query.where(Hit.status == filters.status)
    if filters.kind:
        query = query.where(Hit.id.in_(select(HitMatch.hit_id).where(HitMatch.kind == filters.kind)))
    result = paginate(session, query, filters.page, per_page, Hit.updated_at.desc(), Hit.id.desc())
    result.items = describe(session, user, result.items)  # contact cards, never the rows
    return result


# --- the blind check -------------------------------------------------------------------------

class CheckOutcome:
    INVALID = "invalid"
    NO_HIT = "no hit"
    COMMON = "common"
    HIT = "hit"


@dataclass
class CheckLine:
    line_no: int
    text: str
    outcome: str
    kind: IdentifierKind | None = None
    platform: str | None = None
    reason: str = ""
    contacts: list[Contact] = field(default_factory=list)
    own_references: list[str] = field(default_factory=list)  # the checker's own agency's referrals

    @property
    def kind_label(self) -> str:
        return KIND_LABELS[self.kind] if self.kind else ""


@dataclass
class CheckResult:
    lines: list[CheckLine]

    def count(self, outcome: str) -> int:
        return sum(1 for line in self.lines if line.outcome == outcome)


def blind_check(
    session: Session,
    actor: Actor,
    text: str | Sequence[str],
    *,
    kind: IdentifierKind | None = None,
    platform: str | None = None,
    region: str | None = None,
) -> CheckResult:
    """Check identifiers against every referral without recording them. Only the audit
    entry (with counts, never the identifiers) is written."""
    require_worker(actor, "Your role may read deconfliction results but not act on them.")
    config = settings(session)
    lines = nonblank_lines(text)
    if not lines:
        raise DomainError("Paste at least one identifier.", field="identifiers")
    if len(lines) > config.blind_check_limit:
        raise DomainError(
            f"At most {config.blind_check_limit:,} identifiers per check; this one has {len(lines):,}. "
            "Split it into smaller checks.",
            field="identifiers",
        )
    if platform is not None and platform not in PLATFORMS:
        raise DomainError("Choose a platform from the list.", field="platform")
    parsed = parse_lines(lines, _secret(session), kind=kind, platform=platform, region=region)
    batch = match_batch(session, (p.key for p in parsed if p.ok), threshold=config.common_threshold)
    agency_ids = {h.agency_id for holders in batch.holders.values() for h in holders}
    cards = {row.id: row for row in session.execute(agency_contacts(agency_ids))} if agency_ids else {}
    result = []
    for p in parsed:
        if not p.ok:
            result.append(CheckLine(p.line_no, p.text, CheckOutcome.INVALID, reason=p.reason))
            continue
        line = CheckLine(p.line_no, p.text, CheckOutcome.NO_HIT, kind=p.ident.kind, platform=p.ident.platform)
        if p.key in batch.common:
            line.outcome = CheckOutcome.COMMON
        elif p.key in batch.holders:
            line.outcome = CheckOutcome.HIT
            seen = set()
            for h in sorted(batch.holders[p.key], key=lambda h: h.reference):
                if h.referral_id in seen:
                    continue
                seen.add(h.referral_id)
                if h.agency_id == actor.agency_id:
                    line.own_references.append(h.reference)
                else:
                    card = cards[h.agency_id]
                    line.contacts.append(Contact(card.id, card.name, card.country_code, card.desk_email,
                                                 card.desk_phone, h.reference))
        result.append(line)
    check = CheckResult(result)
    audit.record(session, actor, "deconfliction.blind_check", detail={
        "identifiers": len(parsed), "invalid": check.count(CheckOutcome.INVALID),
        "hits": check.count(CheckOutcome.HIT), "common": check.count(CheckOutcome.COMMON),
        "kind": kind.value if kind else "auto",
    })
    return check


# --- common identifiers and notifications ---------------------------------------------------

def list_common_identifiers(session: Session, actor: Actor, page: int = 1, per_page: int = 50):
    """Common identifiers, for admins."""
    if actor.user is None or actor.user.role != Role.ADMIN:
        raise Forbidden("Only administrators see common identifiers.")
    shown = paginate(session, select(CommonIdentifier), page, per_page, CommonIdentifier.case_count.desc(),
                     CommonIdentifier.match_key)
    return shown.items, shown.total


def unread_count(session: Session, user: User) -> int:
    last_seen = select(NotificationCursor.last_seen_id).where(NotificationCursor.user_id == user.id).scalar_subquery()
    query = visible_notifications(user).where(Notification.id > func.coalesce(last_seen, 0))
    return session.scalar(select(func.count()).select_from(query.subquery())) or 0


@dataclass
class NotificationItem:
    id: int
    kind: NotificationKind
    hit_id: int | None
    referral_id: int | None
    message: str
    created_at: datetime
    unread: bool


def list_notifications(session: Session, user: User, page: int = 1, per_page: int = 50,
                       *, mark_seen: bool = True) -> tuple[list[NotificationItem], int]:
    """The agency's notifications, newest first by when they happened (an import dates what it
    writes at its start, so ids alone may misorder them); showing the first page marks all
    read: unread is by id, the order they arrived in."""
    last_seen = session.scalar(select(NotificationCursor.last_seen_id).where(NotificationCursor.user_id == user.id)) or 0
    shown = paginate(session, visible_notifications(user), page, per_page, Notification.created_at.desc(),
                     Notification.id.desc())
    rows = shown.items
    items = [NotificationItem(n.id, n.kind, n.hit_id, n.referral_id, n.message, n.created_at, n.id > last_seen)
             for n in rows]
    newest = (session.scalar(visible_notifications(user).with_only_columns(func.max(Notification.id)))
              if mark_seen and shown.page == 1 else None) or 0
    if newest > last_seen:
        statement = dialect_insert(session, NotificationCursor.__table__)
        statement = statement.on_conflict_do_update(
            index_elements=["user_id"],
            set_={"last_seen_id": statement.excluded.last_seen_id, "updated_at": statement.excluded.updated_at},
        )
        session.execute(statement, [{"user_id": user.id, "last_seen_id": newest, "updated_at": utcnow()}])
    return items, shown.total
