"""Routing: which agency receives each account holder, and the draft referrals that carry them.

The agency directory names each country's focal point (`Agency.is_focal_point`; if a country
has several, the one registered first: an order no database collation or renaming changes).
A holder goes to the focal point of its jurisdiction. A country without one goes to an
international body (the first focal one registered, else the first registered) and the holder
shows on the unrouted list; with no international body either,
it stays with no receiver, also on the unrouted list. Holders in the importing agency's own
country stay with it (no referral: it works them itself), and holders with no jurisdiction
wait on the review list.

Packaging: a P1 or P2 holder gets a draft referral of its own; P3 and P4 holders are packaged
into one draft per receiving agency, jurisdiction and priority (for a focal point that is one
per agency and priority; an international body gets one per country it stands in for).
Only drafts move: a holder whose referral was sent stays where it went. A holder is not
routed to an agency that declined its case or a merged part's (`Router._load_declines`).
A closed case takes nothing more: a holder on one that gains accounts or a merge waits on the
review list, and a person's decision on its jurisdiction routes it again (`reroute_closed`).

Every draft the pipeline creates, changes or discards gets its history event and audit entry,
as `referrals.create_draft` would write them, but in bulk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from operator import itemgetter

from sqlalchemy import Integer, bindparam, case, cast, delete, func, or_, select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import (
    RISK_FLAGS,
    TLP,
    Agency,
    AgencyKind,
    HandlingCode,
    Hit,
    HitMatch,
    HitSide,
    Holder,
    Identifier,
    HolderRouting,
    Notification,
    NotificationKind,
    Operation,
    Priority,
    Referral,
    ReferralEvent,
    Status,
    referral_subjects,
)
from app.services import audit, countries, referrals
from app.services.audit import Actor
from app.services.tips import bulk

PLACEHOLDER_MATERIAL = "Graded material, description held by sending agency."
SINGLE = frozenset({Priority.P1, Priority.P2})
RISK_COLUMNS = tuple(RISK_FLAGS)  # the holder's flag columns, named as on referrals


@dataclass(frozen=True)
class Directory:
    importer_id: int
    importer_country: str | None
    focal: dict[str, int]  # country -> focal-point agency id
    international_id: int | None


def load_directory(session: Session, importer_id: int) -> Directory:
    importer = session.get(Agency, importer_id)
    focal: dict[str, int] = {}
    for agency_id, country in session.execute(
        select(Agency.id, Agency.country_code)
        .where(Agency.is_focal_point.is_(True), Agency.country_code.is_not(None))
        .order_by(Agency.id)
    ):
        focal.setdefault(country, agency_id)
    international = session.execute(
        select(Agency.id).where(Agency.kind == AgencyKind.INTERNATIONAL, Agency.id != importer_id)
        .order_by(Agency.is_focal_point.desc(), Agency.id).limit(1)
    ).scalar_one_or_none()
    return Directory(importer_id, importer.country_code if importer else None, focal, international)


def target(directory: Directory, jurisdiction: str | None) -> tuple[HolderRouting, int | None]:
    """The routing and receiving agency for a jurisdiction."""
    if not jurisdiction:
        return HolderRouting.UNPLACED, None
    focal = directory.focal.get(jurisdiction)
    if focal == directory.importer_id or (focal is None and jurisdiction == directory.importer_country):
        return HolderRouting.OWN_AGENCY, None
    if focal is not None:
        return HolderRouting.FOCAL_POINT, focal
    if directory.international_id is not None:
        return HolderRouting.INTERNATIONAL, directory.international_id
    return HolderRouting.NO_RECEIVER, None


@dataclass
class HolderState:
    """What routing reads and sets of a holder (new ones are not in the database yet)."""

    id: int
    subject_id: int
    priority: Priority
    jurisdiction: str | None
    grade_a: int = 0
    grade_b: int = 0
    grade_c: int = 0
    flags: tuple[bool, bool, bool, bool, bool] = (False, False, False, False, False)
    referral_id: int | None = None
    packaged: bool = False
    routing: HolderRouting = HolderRouting.UNPLACED
    receiver_agency_id: int | None = None
    changed: bool = False
    # Routing wants a person to look: the agency it would go to declined it, it joined a sent
    # referral of another jurisdiction than its own (a merge), or it gained accounts or a merge
    # after its case was closed.
    for_review: bool = False
    placed_at: datetime | None = None  # when a person last set its jurisdiction
    new: bool = False  # made by this step: no referral has held it


HOLDER_STATE_COLUMNS = (Holder.id, Holder.subject_id, Holder.priority, Holder.jurisdiction, Holder.grade_a,
                        Holder.grade_b, Holder.grade_c, *(getattr(Holder, c) for c in RISK_COLUMNS),
                        Holder.referral_id, Holder.packaged, Holder.routing, Holder.receiver_agency_id,
                        Holder.jurisdiction_set_at)


def state_from_row(row) -> HolderState:
    return HolderState(
        id=row.id, subject_id=row.subject_id, priority=row.priority, jurisdiction=row.jurisdiction,
        grade_a=row.grade_a, grade_b=row.grade_b, grade_c=row.grade_c,
        flags=tuple(getattr(row, c) for c in RISK_COLUMNS), referral_id=row.referral_id, packaged=row.packaged,
        routing=row.routing, receiver_agency_id=row.receiver_agency_id, placed_at=row.jurisdiction_set_at,
    )


# Where a merged holder stays, best first: an open referral, a closed one.
_STAY_RANK = {**dict.fromkeys(referrals.OPEN_STATUSES, 0), Status.CLOSED: 1}


@dataclass
class _Draft:
    receiver_agency_id: int
    jurisdiction: str
    priority: Priority
    packaged: bool
    holders: list[HolderState] = field(default_factory=list)
    id: int | None = None


@dataclass
class RouteResult:
    created: list[int] = field(default_factory=list)  # new draft referral ids
    changed: list[int] = field(default_factory=list)  # existing drafts whose holders changed
    discarded: list[int] = field(default_factory=list)  # drafts left empty, deleted
    came_in_on: list[int] = field(default_factory=list)  # sent referrals merged holders were linked to

    @property
    def touched(self) -> list[int]:
        return sorted(set(self.created) | set(self.changed))

    @property
    def to_match(self) -> list[int]:
        """The referrals that gained holders: what deconfliction matches after the step."""
        return sorted(set(self.touched) | set(self.came_in_on))


class Router:
    """Plan, then write: `plan` decides in memory, `create_drafts` inserts the new referrals
    (before the holders that point at them), `write_links` updates referral_subjects (after
    the subjects exist), `finish` recomputes the drafts' figures and records their history.

    With `reroute_closed` (a person set the holder's jurisdiction), a holder whose case was
    closed is routed again like one on no referral: the closed referral keeps it in its
    history, and its new material goes out on a new draft."""

    def __init__(self, session: Session, actor: Actor, operation: Operation, importer_id: int,
                 *, now: datetime | None = None, directory: Directory | None = None, reroute_closed: bool = False):
        self.session = session
        self.actor = actor
        self.operation = operation
        self.importer_id = importer_id
        self.now = now or utcnow()
        self.directory = directory or load_directory(session, importer_id)
        self.reroute_closed = reroute_closed
        self.new_drafts: list[_Draft] = []
        self.unlinks: list[tuple[int, int]] = []  # (referral_id, subject_id)
        self.links: list[tuple[_Draft | int, HolderState]] = []
        # Links to the referral a case came in on, written unless there already
        # (`_link_to_came_in_on`): by (referral, subject).
        self._came_in_on_links: dict[tuple[int, int], HolderState] = {}
        self.changed: set[int] = set()
        self._packages: dict[tuple[int, str, Priority], _Draft | int] | None = None
        # The referrals holders are on, with where transfers took them.
        self._chains = referrals.TransferChains(lambda condition: session.execute(
            select(Referral.id, Referral.status, Referral.receiver_agency_id, Referral.jurisdiction,
                   Referral.priority, Referral.transferred_from_id, Referral.declined_at).where(condition)))
        self._discarded_references: dict[int, str] = {}
        # The subjects each draft lost, with the states that carry their cases now.
        self._left: dict[int, list[tuple[int, HolderState]]] = {}
        # Sent referrals a merged holder was linked to as well, or a held-back holder waits on
        # (`follow_sent`, `_wait_on`): they match anew (`RouteResult.to_match`).
        self.came_in_on: set[int] = set()
        # Holders routed: the agencies that declined their cases or those of their merged parts,
        # each with the referral that case came in on (`_load_declines`).
        self._held_back: dict[int, dict[int, int]] = {}
        # Holders `plan` held back from an agency just now: they wait on the review list.
        self.held_back_now: set[int] = set()
        self._first: dict[int, int] = {}  # successor of a transfer -> the referral its case came in on
        # This step's merges: absorbed holder -> survivor, and the absorbed holders' subjects.
        self._merged_now: dict[int, int] = {}
        self._parts_now: dict[int, int] = {}

    # --- planning -------------------------------------------------------------------------

    def _load_packages(self) -> dict[tuple[int, str, Priority], _Draft | int]:
        if self._packages is None:
            packaged = select(Holder.referral_id).where(Holder.operation_id == self.operation.id,
                                                        Holder.packaged.is_(True))
            rows = self.session.execute(
                select(Referral.id, Referral.receiver_agency_id, Referral.jurisdiction, Referral.priority)
                .where(Referral.operation_id == self.operation.id, Referral.sender_agency_id == self.importer_id,
                       Referral.status == Status.DRAFT, Referral.id.in_(packaged.scalar_subquery()))
                .order_by(Referral.id)
            )
            self._packages = {}
            for referral_id, receiver, jurisdiction, priority in rows:
                self._packages.setdefault((receiver, jurisdiction, priority), referral_id)
        return self._packages

    def current_id(self, referral_id: int | None) -> int | None:
        """The id of the referral that carries this one's case now (itself if it was never
        transferred, or was not read: a draft made just now)."""
        now = self._chains.where_now(referral_id)
        return now.id if now is not None else referral_id

    def stays(self, referral_id: int | None) -> bool:
        """Whether a holder on this referral stays on it: it was sent, and neither it nor a
        referral it was transferred on to was declined or withdrawn (a holder on one of those is
        routed again, like a holder on none), nor closed when routing `reroute_closed`."""
        current = self._chains.where_now(referral_id)
        routed_again = (Status.DRAFT, Status.DECLINED, Status.WITHDRAWN,
                        *((Status.CLOSED,) if self.reroute_closed else ()))
        return current is not None and current.status not in routed_again

    def closed(self, referral_id: int | None) -> bool:
        """Whether the case of this referral (read already) was closed, where transfers took it."""
        current = self._chains.where_now(referral_id)
        return current is not None and current.status is Status.CLOSED

    def follow_sent(self, merges: list[tuple[HolderState, list[HolderState]]]) -> dict[int, tuple[Priority, int]]:
        """Each merged holder (survivor, absorbed parts) stays on a sent referral one of its
        parts is on, an open one before a closed one: its own, else the oldest part's, which it
        then joins (off its own draft), where that referral is now if it was transferred onward;
        if its jurisdiction is not that referral's, a person is to look. On no sent referral,
        `plan` routes it, held back from every agency that declined one of its parts, as from
        one that declined it. Returns, by survivor id, the priority of the sent referral it
        joined (the import raises it if the holder is now more urgent) and the part that was on
        it."""
        self._chains.load(state.referral_id for survivor, parts in merges for state in (survivor, *parts))
        self._load_came_in_on(state.referral_id for survivor, parts in merges for state in (survivor, *parts)
                              if state.referral_id in self._chains.rows)
        for survivor, parts in merges:
            self._merged_now.update((part.id, survivor.id) for part in parts)
            self._parts_now.update((part.subject_id, survivor.id) for part in parts)
        joined: dict[int, tuple[Priority, int]] = {}
        for survivor, parts in merges:
            part = self._staying_part(survivor, parts)
            if part is None:
                continue  # `plan` routes it, held back where a part was declined
            current = self._chains.where_now(part.referral_id)
            survivor.for_review = survivor.jurisdiction != current.jurisdiction
            if part is survivor:
                continue
            self.detach(survivor)
            survivor.referral_id, survivor.packaged, survivor.routing = current.id, part.packaged, part.routing
            survivor.receiver_agency_id, survivor.changed = current.receiver_agency_id, True
            self.links.append((current.id, survivor))
            first, _chain = self._whole_chain(part.referral_id)
            if first != current.id:
                # Passed on since: the referral the case came in on carries it too, so that it
                # matches there, its sender a hit's party, not the agency that passed it on
                # (`deconfliction._carried_over`).
                self._link_to_came_in_on(first, survivor)
            joined[survivor.id] = (current.priority, part.id)
        return joined

    def _staying_part(self, survivor: HolderState, parts: list[HolderState]) -> HolderState | None:
        """Of a merge's survivor and parts (oldest first), the one whose sent referral the
        merged holder stays on: the first on an open referral, else on a closed one."""
        ranked = []
        for order, state in enumerate((survivor, *parts)):
            current = self._chains.where_now(state.referral_id)
            if current is not None and current.status in _STAY_RANK:
                ranked.append((_STAY_RANK[current.status], order, state))
        return min(ranked, key=itemgetter(0, 1))[2] if ranked else None

    def _whole_chain(self, referral_id: int | None) -> tuple[int | None, list]:
        """The referral a case came in on and its whole transfer chain, from a referral on it.
        Holders stay on the referral they were sent on; one that joined a case after its
        transfer sits on the successor, and only then is the chain walked back."""
        chain = self._chains.chain(referral_id)
        if not chain or chain[0].transferred_from_id is None:
            return referral_id, chain
        self._load_came_in_on([referral_id])
        first = self._first[referral_id]
        return first, self._chains.chain(first)

    def _load_came_in_on(self, referral_ids) -> None:
        """Where the cases of these referrals (read already) came in, with those referrals'
        chains: one query for all of them that continue a transfer."""
        successors = [r for r in referral_ids if r not in self._first and self._chains.rows[r].transferred_from_id]
        if successors:
            self._first.update(referrals.came_in_on(self.session, successors))
            self._chains.load(self._first[r] for r in successors)

    def _load_declines(self, states: list[HolderState]) -> None:
        """Note, for each of these holders, the agencies of every declined case that held it or
        a part merged into it (the agency that declined and those that passed the case on to
        it), each with the referral the case came in on: `plan` holds the holder back from them.
        Not the cases a person knew of: declined before the person last set the holder's
        jurisdiction, with no merge since (a merge makes it another holder than the one they
        placed). Every declined referral keeps the subjects it held."""
        routed = {state.id: state for state in states}
        stored = [state.id for state in states if not state.new]
        owner_of = {routed[h].subject_id: h for h in stored}  # subject -> the holder it is or was merged into
        last_merge: dict[int, datetime] = {}
        for subject, survivor in self._parts_now.items():
            if survivor in routed:
                owner_of[subject], last_merge[survivor] = survivor, self.now
        absorbers = sorted(set(stored) | set(self._merged_now))
        for start in range(0, len(absorbers), 5000):
            for subject_id, into, merged_at in self.session.execute(
                select(Holder.subject_id, Holder.merged_into_id, Holder.merged_at)
                .where(Holder.merged_into_id.in_(absorbers[start:start + 5000]))
            ):
                owner = self._merged_now.get(into, into)
                if owner in routed:
                    owner_of.setdefault(subject_id, owner)
                    last_merge[owner] = max(last_merge.get(owner, merged_at), merged_at)
        subjects = sorted(owner_of)
        declined = []
        for start in range(0, len(subjects), 5000):
            declined += self.session.execute(
                select(referral_subjects.c.referral_id, referral_subjects.c.subject_id)
                .join(Referral, Referral.id == referral_subjects.c.referral_id)
                .where(referral_subjects.c.subject_id.in_(subjects[start:start + 5000]),
                       Referral.status == Status.DECLINED)
            ).all()
        declined.sort()
        self._chains.load(referral_id for referral_id, _subject in declined)
        self._load_came_in_on(referral_id for referral_id, _subject in declined)
        for referral_id, subject_id in declined:
            holder_id = owner_of[subject_id]
            first, chain = self._whole_chain(referral_id)
            placed_at, declined_at = routed[holder_id].placed_at, chain[-1].declined_at
            if placed_at is not None and placed_at >= max(declined_at, last_merge.get(holder_id, declined_at)):
                continue
            held_back = self._held_back.setdefault(holder_id, {})
            for referral in chain:
                held_back.setdefault(referral.receiver_agency_id, first)

    def plan(self, states: list[HolderState]) -> None:
        """Route these holders. One that would go to an agency that declined its case or a
        merged part's, or passed such a case on to one that declined, is held back: it waits
        on that case, on the review list, unless a person placed it knowing of the decline
        (`_load_declines`). One that stays on a closed case is marked `for_review`: the import
        routing it brought it accounts or a merge, which a closed case takes no news of, so it
        waits there, on the review list, for a person to route it again."""
        self._chains.load(state.referral_id for state in states)
        self._load_declines([state for state in states if not self.stays(state.referral_id)])
        packages = self._load_packages()
        waiting = []  # held back onto a declined case just now
        for state in states:
            routing, receiver = target(self.directory, state.jurisdiction)
            if self.stays(state.referral_id):
                # Sent already: it stays where it went. A closed case hears no news
                # (`record_updates`), so a person decides about what it gained.
                state.for_review = state.for_review or self.closed(state.referral_id)
                continue
            chain = self._chains.chain(state.referral_id)
            current = chain[-1] if chain else None
            came_in_on = self._held_back.get(state.id, {}).get(receiver)
            if came_in_on is not None:
                state.for_review = True
                self.held_back_now.add(state.id)
                if self._wait_on(state, came_in_on, routing):
                    waiting.append(state)
                continue
            if current is not None and current.status is not Status.DRAFT:
                current = None  # declined or withdrawn: it keeps its history, the holder moves on
            packaged = state.priority not in SINGLE
            if current is not None:
                fits = (receiver == current.receiver_agency_id and state.jurisdiction == current.jurisdiction
                        and state.packaged == packaged and (not packaged or state.priority == current.priority))
                if fits:
                    self.changed.add(current.id)  # figures may have moved
                    self._set(state, routing, receiver, state.referral_id, packaged)
                    continue
                self.detach(state)
            if receiver is None:
                self._set(state, routing, None, None, False)
                continue
            if packaged:
                key = (receiver, state.jurisdiction, state.priority)
                draft = packages.get(key)
                if draft is None:
                    draft = packages[key] = self._new_draft(receiver, state.jurisdiction, state.priority, True)
            else:
                draft = self._new_draft(receiver, state.jurisdiction, state.priority, False)
            if isinstance(draft, _Draft):
                draft.holders.append(state)
            else:
                self.changed.add(draft)
            self.links.append((draft, state))
            self._set(state, routing, receiver, draft if isinstance(draft, int) else None, packaged)
        if waiting:
            self._mark_packages(waiting)

    def _wait_on(self, state: HolderState, came_in_on: int, routing: HolderRouting) -> bool:
        """A holder held back from an agency waits on the declined case that agency had, unless
        it is on that case already: off its draft, on the referral the case came in on, where
        it matches, its sender a hit's party. Whether it moved there."""
        if state.referral_id in {referral.id for referral in self._chains.chain(came_in_on)}:
            return False
        self.detach(state)
        state.referral_id, state.routing = came_in_on, routing
        state.receiver_agency_id = self._chains.rows[came_in_on].receiver_agency_id
        state.changed = True
        self._link_to_came_in_on(came_in_on, state)
        return True

    def _mark_packages(self, waiting: list[HolderState]) -> None:
        """Holders that went to wait on a declined case: on a package if others on it are
        (one query for them all)."""
        on = sorted({state.referral_id for state in waiting})
        packages = set(self.session.scalars(select(Holder.referral_id).where(
            Holder.referral_id.in_(on), Holder.packaged.is_(True)).distinct())) if on else set()
        for state in waiting:
            state.packaged = state.referral_id in packages

    def _link_to_came_in_on(self, referral_id: int, state: HolderState) -> None:
        """Link a holder to the sent referral its case came in on (`write_links` leaves out a
        link there already: it may have waited there before), which then matches anew."""
        self._came_in_on_links[(referral_id, state.subject_id)] = state
        self.came_in_on.add(referral_id)

    def detach(self, state: HolderState, *, into: HolderState | None = None) -> None:
        """Take a holder off its draft (a sent referral keeps it); `into` is the holder that
        took it in by a merge, whose referral carries its case from now on."""
        if not state.referral_id:
            return
        self._chains.load([state.referral_id])
        current = self._chains.rows.get(state.referral_id)
        if current is None or current.status is not Status.DRAFT:
            return
        self.unlinks.append((state.referral_id, state.subject_id))
        self.changed.add(state.referral_id)
        self._left.setdefault(state.referral_id, []).append((state.subject_id, into or state))
        state.referral_id = None
        state.packaged = False
        state.changed = True

    def _new_draft(self, receiver: int, jurisdiction: str, priority: Priority, packaged: bool) -> _Draft:
        draft = _Draft(receiver, jurisdiction, priority, packaged)
        self.new_drafts.append(draft)
        return draft

    @staticmethod
    def _set(state: HolderState, routing, receiver, referral_id, packaged) -> None:
        new = (routing, receiver, referral_id, packaged)
        if (state.routing, state.receiver_agency_id, state.referral_id, state.packaged) != new:
            state.routing, state.receiver_agency_id, state.referral_id, state.packaged = new
            state.changed = True

    # --- writing --------------------------------------------------------------------------

    def create_drafts(self) -> list[int]:
        """Insert the planned new drafts; the holders' referral ids are set."""
        drafts = self.new_drafts
        if not drafts:
            return []
        session = self.session
        table = Referral.__table__
        ids = bulk.allocate_ids(session, table, len(drafts))
        references = referrals.next_references(session, len(drafts), year=self.now.year)
        now = bulk.db_value(session, table, "created_at", self.now)
        rows = []
        for draft, referral_id, reference in zip(drafts, ids, references):
            draft.id = referral_id
            for state in draft.holders:
                state.referral_id = referral_id
                state.changed = True
            rows.append((
                referral_id, reference, draft.receiver_agency_id, draft.jurisdiction, draft.priority.value,
                *(any(s.flags[i] for s in draft.holders) for i in range(len(RISK_COLUMNS))),
                sum(s.grade_a for s in draft.holders), sum(s.grade_b for s in draft.holders),
                sum(s.grade_c for s in draft.holders),
                _summary(self.operation.code, draft.jurisdiction, draft.priority, len(draft.holders), draft.packaged),
            ))
        bulk.insert_rows(session, table, (
            "id", "reference", "receiver_agency_id", "jurisdiction", "priority", *RISK_COLUMNS, "grade_a", "grade_b",
            "grade_c", "summary"), rows, constants={
            "version": 1, "operation_id": self.operation.id, "sender_agency_id": self.importer_id,
            "status": Status.DRAFT.value, "material_description": PLACEHOLDER_MATERIAL, "tlp": TLP.RED.value,
            "handling_code": HandlingCode.CONSENT_REQUIRED.value, "created_by_id": self.actor.user_id,
            "created_at": now, "updated_at": now,
        })
        return ids

    def write_links(self) -> None:
        wanted = self._came_in_on_links
        if wanted:
            there = set(self.session.execute(select(referral_subjects.c.referral_id, referral_subjects.c.subject_id)
                                             .where(referral_subjects.c.referral_id.in_({r for r, _ in wanted}),
                                                    referral_subjects.c.subject_id.in_({s for _, s in wanted}))))
            self.links += [(referral_id, state) for (referral_id, subject_id), state in sorted(
                wanted.items(), key=itemgetter(0)) if (referral_id, subject_id) not in there]
        if self.unlinks:
            self.session.execute(
                delete(referral_subjects).where(
                    referral_subjects.c.referral_id == bindparam("r"), referral_subjects.c.subject_id == bindparam("s"))
                .execution_options(synchronize_session=False),
                [{"r": r, "s": s} for r, s in self.unlinks],
            )
        if self.links:
            added_at = bulk.db_value(self.session, referral_subjects, "added_at", self.now)
            bulk.insert_rows(self.session, referral_subjects, ("referral_id", "subject_id"), [
                (draft.id if isinstance(draft, _Draft) else draft, state.subject_id) for draft, state in self.links
            ], constants={"added_at": added_at})

    def finish(self) -> RouteResult:
        """Recompute the changed drafts' figures from their holders, discard drafts left with
        no subject, and write history events and audit entries for all of it."""
        result = RouteResult(created=[d.id for d in self.new_drafts], came_in_on=sorted(self.came_in_on))
        changed = sorted(self.changed - set(result.created))
        if changed:
            result.changed, result.discarded = self._refresh(changed)
        self._record(result)
        return result

    def _refresh(self, referral_ids: list[int]) -> tuple[list[int], list[int]]:
        session = self.session
        figures = {}
        for start in range(0, len(referral_ids), 5000):
            part = referral_ids[start:start + 5000]
            for row in session.execute(
                select(Holder.referral_id, func.count(), func.sum(Holder.grade_a), func.sum(Holder.grade_b),
                       func.sum(Holder.grade_c), *(func.max(cast(getattr(Holder, c), Integer)) for c in RISK_COLUMNS),
                       func.max(cast(Holder.packaged, Integer)), func.min(Holder.priority))
                .where(Holder.referral_id.in_(part), Holder.merged_into_id.is_(None))
                .group_by(Holder.referral_id)
            ):
                figures[row[0]] = row
        linked = set()
        for start in range(0, len(referral_ids), 5000):
            linked.update(session.scalars(
                select(referral_subjects.c.referral_id).where(referral_subjects.c.referral_id.in_(
                    referral_ids[start:start + 5000])).distinct()))
        drafts = {}
        for start in range(0, len(referral_ids), 5000):
            # Locked as read: a person editing one (its summary) finishes first, and is not
            # written over with what was read before.
            drafts.update((row.id, row) for row in session.execute(
                select(Referral.id, Referral.reference, Referral.jurisdiction, Referral.priority, Referral.status,
                       Referral.summary)
                .where(Referral.id.in_(referral_ids[start:start + 5000])).order_by(Referral.id)
                .with_for_update(key_share=True)))
        # Then the audit chain, before the hits and deletes below: a hit's acknowledgement, or
        # a step that matches a draft, holds the chain before the hit or the draft's key.
        audit.lock_chain(session)
        changed, discarded, updates = [], [], []
        for referral_id in referral_ids:
            draft = drafts.get(referral_id)
            if draft is None or draft.status is not Status.DRAFT:
                continue
            if referral_id not in linked:
                discarded.append(referral_id)
                continue
            row = figures.get(referral_id)
            # A summary a person wrote stays; one routing wrote follows the figures.
            by_routing = routing_wrote(draft.summary, self.operation.code)
            if row is None:
                # Its holders all left; subjects added by hand remain, and nothing of the
                # holders is counted on it any longer.
                updates.append({"id": referral_id, "grade_a": 0, "grade_b": 0, "grade_c": 0, "priority": draft.priority,
                                **dict.fromkeys(RISK_COLUMNS, False),
                                "summary": _holders_left(self.operation.code) if by_routing else draft.summary,
                                "updated_at": self.now})
                changed.append(referral_id)
                continue
            count, a, b, c = row[1], int(row[2] or 0), int(row[3] or 0), int(row[4] or 0)  # PostgreSQL sums are numeric
            flags = [bool(v) for v in row[5:10]]
            packaged = bool(row[10])
            # A package keeps its bucket's priority; a holder's own referral follows the holder.
            priority = draft.priority if packaged else Priority(row[11])
            summary = (_summary(self.operation.code, draft.jurisdiction, priority, count, packaged) if by_routing
                       else draft.summary)
            updates.append({"id": referral_id, "grade_a": a, "grade_b": b, "grade_c": c, "priority": priority,
                            **dict(zip(RISK_COLUMNS, flags)), "summary": summary, "updated_at": self.now})
            changed.append(referral_id)
        if updates:
            table = Referral.__table__
            columns = [k for k in updates[0] if k != "id"]
            session.connection().execute(
                update(table).where(table.c.id == bindparam("b_id"))
                .values({**{k: bindparam(f"b_{k}") for k in columns}, "version": table.c.version + 1}),
                [{f"b_{k}": v for k, v in row.items()} for row in updates],
            )
        left = [d for d in changed if d in self._left]
        if discarded or left:
            self._keep_hits(discarded + left, set(discarded))
        if discarded:
            self._discarded_references.update((d, drafts[d].reference) for d in discarded)
            session.execute(delete(Referral.__table__).where(Referral.__table__.c.id.in_(discarded)))
        return changed, discarded

    def _keep_hits(self, drafts: list[int], discarded: set[int]) -> None:
        """The deconfliction hits on drafts that holders left (`discarded` ones, left with no
        subject, or ones left with fewer holders) follow the holders they matched, keeping what
        two agencies agreed (acknowledged, who leads):
        - all of a hit's matched holders on the draft left it, for one referral of the same
          sender (its party stays right) whose pair with the other side has no hit yet: the hit
          moves there, its sides swapped if the pair's order turns (the matches the move brings
          are added when deconfliction runs next);
        - they left, but not so: the hit goes with a discarded draft, and is removed from one
          that stays (it would show a match the draft no longer holds); deconfliction finds
          the new pair anew;
        - some of them stay: the hit stays, without the matches of those that left."""
        session = self.session
        hits, matches = Hit.__table__, HitMatch.__table__
        rows = sorted({row for start in range(0, len(drafts), 5000) for row in session.execute(
            select(hits.c.id, hits.c.referral_low_id, hits.c.referral_high_id).where(or_(
                hits.c.referral_low_id.in_(drafts[start:start + 5000]),
                hits.c.referral_high_id.in_(drafts[start:start + 5000]))))})
        if not rows:
            return
        matched: dict[tuple[int, str], set[int]] = {}  # (hit, side) -> subjects
        for start in range(0, len(rows), 5000):
            for hit_id, side, subject_id in session.execute(
                select(matches.c.hit_id, matches.c.side, Identifier.subject_id)
                .join(Identifier, Identifier.id == matches.c.identifier_id)
                .where(matches.c.hit_id.in_([row.id for row in rows[start:start + 5000]]))
            ):
                matched.setdefault((hit_id, side), set()).add(subject_id)
        carries = {draft: {subject: state for subject, state in self._left.get(draft, ())} for draft in drafts}
        moves, drops, stale = {}, [], []
        for row in rows:
            for side, mine, other in ((HitSide.LOW, row.referral_low_id, row.referral_high_id),
                                      (HitSide.HIGH, row.referral_high_id, row.referral_low_id)):
                subjects = matched.get((row.id, side.value), set())
                # A holder merged into one on the same draft has not left it: the person is still there.
                gone = {subject for subject in subjects & carries.get(mine, {}).keys()
                        if carries[mine][subject].referral_id != mine}
                if not gone:
                    continue
                if gone != subjects:
                    stale.append((row.id, side, gone))
                    continue
                now_on = {carries[mine][subject].referral_id for subject in subjects}
                if len(now_on) == 1 and None not in now_on and other not in carries:
                    moves[row.id] = (row, mine, other, now_on.pop())
                elif mine not in discarded:
                    drops.append((row.id, mine))
        same_sender = set(session.scalars(select(Referral.id).where(
            Referral.id.in_(sorted({to for *_, to in moves.values()})), Referral.sender_agency_id == self.importer_id)))
        taken = {(low, high) for low, high in session.execute(select(hits.c.referral_low_id, hits.c.referral_high_id)
                                                               .where(or_(hits.c.referral_low_id.in_(sorted(same_sender)),
                                                                          hits.c.referral_high_id.in_(sorted(same_sender)))))}
        entries = []
        for row, gone, other, to in moves.values():
            low, high = sorted((to, other))
            if to not in same_sender or to == other or (low, high) in taken:
                if gone not in discarded:
                    drops.append((row.id, gone))
                continue
            taken.add((low, high))
            values = {"referral_low_id": low, "referral_high_id": high, "version": hits.c.version + 1}
            if (low == other) != (row.referral_low_id == other):  # the sides swap
                for column in ("agency_{}_id", "acknowledged_{}_at", "acknowledged_{}_by_id"):
                    values[column.format("low")] = hits.c[column.format("high")]
                    values[column.format("high")] = hits.c[column.format("low")]
                # An identifier matched on both sides (a subject both referrals hold) keeps its two
                # rows: turned, they are the same pair, and turning them one row at a time would
                # meet the other's unique key.
                on_both = (select(matches.c.identifier_id).where(matches.c.hit_id == row.id)
                           .group_by(matches.c.identifier_id).having(func.count() > 1))
                session.execute(update(matches).where(matches.c.hit_id == row.id,
                                                      matches.c.identifier_id.not_in(on_both)).values(side=case(
                    (matches.c.side == HitSide.LOW.value, HitSide.HIGH.value), else_=HitSide.LOW.value)))
            session.execute(update(hits).where(hits.c.id == row.id).values(values))
            reason = ("its draft was left with no holder" if gone in discarded
                      else "the holders it matched left their draft")
            entries.append(("hit.move", "hit", row.id, {"from_referral": gone, "to_referral": to, "reason": reason}))
        for hit_id, side, subjects in stale:
            # The leavers' matches go, and those of the other side on keys only they shared.
            opposite = HitSide.HIGH if side is HitSide.LOW else HitSide.LOW
            session.execute(delete(matches).where(
                matches.c.hit_id == hit_id, matches.c.side == side.value,
                matches.c.identifier_id.in_(select(Identifier.id).where(Identifier.subject_id.in_(sorted(subjects))))))
            kept_keys = (select(Identifier.match_key).join(matches, matches.c.identifier_id == Identifier.id)
                         .where(matches.c.hit_id == hit_id, matches.c.side == side.value))
            theirs = select(matches.c.identifier_id).where(matches.c.hit_id == hit_id,
                                                           matches.c.side == opposite.value)
            session.execute(delete(matches).where(
                matches.c.hit_id == hit_id, matches.c.side == opposite.value,
                matches.c.identifier_id.in_(select(Identifier.id).where(Identifier.id.in_(theirs),
                                                                        Identifier.match_key.not_in(kept_keys)))))
        if stale:
            session.execute(update(hits).where(hits.c.id.in_(sorted({hit_id for hit_id, *_ in stale})))
                            .values(version=hits.c.version + 1))
        if drops:
            session.execute(delete(hits).where(hits.c.id.in_(sorted({hit_id for hit_id, _ in drops}))))
            entries += [("hit.remove", "hit", hit_id, {"referral": draft, "reason": "the holders it matched left "
                                                       "this draft; deconfliction matches them where they went"})
                        for hit_id, draft in sorted(set(drops))]
        bulk.audit_many(session, self.actor, entries)

    def record_updates(self, notes: dict[int, str]) -> None:
        """Tell the receivers of these sent referrals (by id: where each case is now) what an
        import added to them (`note`): an `update` step in the history both agencies read, a
        notification and an audit entry, written in bulk as `referrals.escalate_priority`
        writes its own. Referrals no longer open are left alone: the holders an import adds to
        on a closed one wait on the review list instead (`plan`)."""
        events, messages, entries = [], [], []
        ids = sorted(notes)
        for start in range(0, len(ids), 5000):
            for row in self.session.execute(
                select(Referral.id, Referral.reference, Referral.status, Referral.sender_agency_id,
                       Referral.receiver_agency_id, Agency.name)
                .join(Agency, Agency.id == Referral.sender_agency_id)
                .where(Referral.id.in_(ids[start:start + 5000]), Referral.status.in_(referrals.OPEN_STATUSES))
                .order_by(Referral.id)
            ):
                note = notes[row.id][:referrals.NOTE_MAX]
                # The system (an import from the command line) acts for the sender.
                events.append((row.id, row.status.value, row.status.value, note,
                               self.actor.agency_id or row.sender_agency_id))
                messages.append((row.receiver_agency_id, row.id,
                                 f"{row.reference} from {row.name}: {notes[row.id]}"[:referrals.NOTIFICATION_MAX]))
                entries.append(("referral.update", "referral", row.id,
                                {"reference": row.reference, "note": note, "source": "tip"}))
        if not events:
            return
        bulk.insert_rows(self.session, ReferralEvent.__table__, (
            "referral_id", "from_status", "to_status", "note", "agency_id"), events, constants={
            "action": "update", "at": bulk.db_value(self.session, ReferralEvent.__table__, "at", self.now),
            "user_id": self.actor.user_id})
        bulk.insert_rows(self.session, Notification.__table__, ("agency_id", "referral_id", "message"), messages,
                         constants={"kind": NotificationKind.REFERRAL_UPDATED.value,
                                    "created_at": bulk.db_value(self.session, Notification.__table__, "created_at",
                                                                self.now)})
        bulk.audit_many(self.session, self.actor, entries)

    def _record(self, result: RouteResult) -> None:
        events, entries = [], []
        references = {}
        if result.created:
            references = dict(self.session.execute(
                select(Referral.id, Referral.reference).where(Referral.id.in_(result.created))).all())
        draft = Status.DRAFT.value
        for referral_id in result.created:
            events.append((referral_id, "create", None, draft, ""))
            entries.append(("referral.create", "referral", referral_id,
                            {"reference": references[referral_id], "source": "tip", "operation": self.operation.code}))
        for referral_id in result.changed:
            events.append((referral_id, "edit", draft, draft, "Account holders updated by the tip pipeline."))
            entries.append(("referral.edit", "referral", referral_id, {"changed": ["holders"], "source": "tip"}))
        for referral_id in result.discarded:
            entries.append(("referral.discard", "referral", referral_id,
                            {"reference": self._discarded_references[referral_id],
                             "reason": "no account holders left on the draft", "source": "tip"}))
        bulk.insert_rows(self.session, ReferralEvent.__table__, ("referral_id", "action", "from_status", "to_status",
                                                                 "note"), events, constants={
            "at": bulk.db_value(self.session, ReferralEvent.__table__, "at", self.now),
            "user_id": self.actor.user_id, "agency_id": self.importer_id,
        })
        bulk.audit_many(self.session, self.actor, entries)


# The summaries routing writes, one template each; `routing_wrote` recognises them by the same
# templates, so that the two cannot drift apart.
_SUMMARIES = {
    "package": ("Provider tip, operation {code}: {count} account holder{s} in {country}, triaged {priority}. "
                "Each holder's accounts and the identifiers that joined them are listed with the referral's "
                "subjects."),
    "single": ("Provider tip, operation {code}: one account holder in {country}, triaged {priority}. The holder's "
               "accounts and the identifiers that joined them are listed with the referral's subjects."),
    "left": ("Provider tip, operation {code}: its account holders moved to other referrals; the subjects added by "
             "hand remain."),
}
# What each placeholder may stand for in a summary routing wrote (the code is the operation's own).
# (A count with thousands separators, or without, as summaries written before them had it.)
_WILDCARDS = {"count": r"(?:\d{1,3}(?:,\d{3})+|\d+)", "s": "s?", "country": ".+", "priority": "P[1-4]"}


def routing_wrote(summary: str | None, code: str) -> bool:
    """Whether a draft of operation `code` still has the summary routing wrote (not a person's)."""
    return any(pattern.fullmatch(summary or "") for pattern in _summary_patterns(code))


@lru_cache(maxsize=64)
def _summary_patterns(code: str) -> tuple[re.Pattern, ...]:
    fields = {"code": re.escape(code), **_WILDCARDS}
    return tuple(re.compile(re.sub(r"\\\{(\w+)\\\}", lambda m: fields[m.group(1)], re.escape(template)), re.DOTALL)
                 for template in _SUMMARIES.values())


def _holders_left(code: str) -> str:
    return _SUMMARIES["left"].format(code=code)


def _summary(code: str, jurisdiction: str, priority: Priority, count: int, packaged: bool) -> str:
    return _SUMMARIES["package" if packaged else "single"].format(
        code=code, count=f"{count:,}", s="s" if count != 1 else "", country=countries.name(jurisdiction),
        priority=priority.value)
