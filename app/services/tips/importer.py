"""Importing a provider tip: validate every row, then in one transaction store the new
accounts, cluster the operation's accounts into holders, place and triage the holders, route
them into draft referrals and match them against every other referral (docs/tip-format.md).

All or nothing: if any row is bad nothing is written, unless the caller skips invalid rows
(then the good ones are written and the bad ones come back as a reject file). The whole write
is one transaction that the caller commits (the request, or the CLI command), so a killed
import leaves the database as it was, and running it again completes it. Re-importing the
same file, or an overlapping one, adds only accounts not seen before (natural key: platform
and normalised account id, per operation).

Holder ids are stable: the operation's accounts are clustered again on every import with each
existing holder's accounts held together; a cluster of new accounts only is a new holder, new
accounts that join one holder join it, and a cluster that bridges two or more holders merges
them into the oldest (recorded on the absorbed holder and on the audit trail). An identifier
that becomes common later does not split holders already formed.

The importing agency must be the operation's lead agency: a signed-in importer must be a
liaison officer or manager of it; the CLI without --as imports for it as the system.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from operator import itemgetter

from sqlalchemy import bindparam, delete, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from app.db import dialect_insert, utcnow
from app.models import (
    Holder,
    Identifier,
    JurisdictionSource,
    Operation,
    Priority,
    Referral,
    RISK_FLAGS,
    Subject,
    Tip,
    TipAccount,
    TipCommonIdentifier,
    TipFormat,
    referral_subjects,
)
from app.models.tip import holder_label
from app.services import DomainError, Forbidden, NotFound, audit, countries, deconfliction, referrals
from app.services.access import visible_operations
from app.services.audit import Actor
from app.services.identifiers import IdentifierKind
from app.services.tips import bulk, clustering, files, holders, jurisdiction, reader
from app.services.tips.routing import (
    HOLDER_STATE_COLUMNS,
    RISK_COLUMNS,
    HolderState,
    RouteResult,
    Router,
    state_from_row,
)
from app.services.tips.validation import Account, Validation, validate
from app.services.triage import priority_from_flags

# Testing hook (documented in docs/tip-format.md): with this variable set to a number of
# seconds, the import pauses that long right after writing the accounts, inside its
# transaction, and says so on stderr, so that a test can kill the process at that point.
PAUSE_ENV = "HANDOFF_TEST_PAUSE_IMPORT_AFTER_ACCOUNTS"
# New identifiers per deconfliction refresh (bench/bench_matching.py measures batches this size).
MATCH_BATCH = 160_000
IDENTIFIER_SLICE = 100_000
# Subjects up to which matching reads what a tip's referrals gained through those subjects (an
# IN list each), past which through the referrals: a follow-up's few holders sit on packages of
# thousands, and a full tip's gains are most of what its referrals hold.
GAINS_BY_SUBJECT_MAX = 10_000

Progress = Callable[[str, int, int], None]


class TipRejected(DomainError):
    """Some rows are invalid and the import was not told to skip them: nothing was written."""

    def __init__(self, validation: Validation, reject_csv: str):
        bad = len(validation.bad_lines)
        if validation.header_error:
            problem = validation.errors[0]
            named = "" if problem.field == reader.WHOLE_RECORD else f" ({problem.field})"
            message = f"Nothing was imported: {problem.reason}{named}."
        elif not validation.accounts:
            message = f"Nothing was imported: all {validation.rows:,} rows are invalid. Correct them and import again."
        else:
            message = (f"Nothing was imported: {bad:,} of {validation.rows:,} rows are invalid. Correct them, or "
                       "import with invalid rows skipped.")
        if validation.ignored_columns:
            # Said now, not only once imported: a known account stays as first imported, so an
            # "E-mail" column read as nothing would lose its addresses for good.
            message += f" Columns not read, as they are no tip field: {', '.join(validation.ignored_columns)}."
        super().__init__(message, field="file")
        self.validation = validation
        self.errors = validation.errors
        self.reject_csv = reject_csv


def record_refusal(session: Session, actor: Actor, operation: Operation, file_name: str,
                   refused: DomainError | None) -> None:
    """The audit entry of an import that wrote nothing: refused (bad rows, a file that is no
    tip, no permission) or broken off (`refused` None). Its caller has rolled the import back
    and commits this alone."""
    detail = {"operation": operation.code, "file": file_name,
              "reason": refused.message if refused else "broke off"}
    if isinstance(refused, TipRejected):
        detail |= {"rows": refused.validation.rows, "problems": len(refused.errors)}
    audit.record(session, actor, "tip.import", "operation", operation.id, outcome="failure", detail=detail)


@dataclass
class ImportResult:
    tip: Tip
    rows: int
    accepted: int
    rejected: int
    errors: list
    reject_csv: str | None
    new_accounts: int = 0
    known_accounts: int = 0
    differing_known: int = 0  # known accounts the file gives other identifiers, countries or counts
    new_holders: int = 0
    joined_holders: int = 0
    merges: list[tuple[int, list[int]]] = field(default_factory=list)  # (survivor, absorbed) holder ids
    routing: RouteResult = field(default_factory=RouteResult)
    hits: deconfliction.RefreshResult | None = None
    common_identifiers: int = 0
    ignored_columns: list[str] = field(default_factory=list)  # of the header, no tip field
    timings: dict[str, float] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)  # stage -> peak resident memory so far (MB)


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def importing_agency(session: Session, actor: Actor, operation: Operation) -> int:
    """The agency an import runs for: the operation's lead agency, whose liaison officer or
    manager the signed-in importer must be."""
    user = actor.user
    if user is None:
        return operation.lead_agency_id
    if user.agency_id != operation.lead_agency_id:
        visible = session.scalar(visible_operations(user).where(Operation.id == operation.id).with_only_columns(
            Operation.id))
        if visible is None:
            raise NotFound("No such operation.")
        raise Forbidden(f"Only the operation's lead agency ({operation.lead_agency.name}) imports its tips.")
    if not user.can_work_referrals:
        raise Forbidden("Only liaison officers and managers import tips.")
    return user.agency_id


def import_tip(session: Session, actor: Actor, operation_id: int, data: bytes, file_name: str, *,
               skip_invalid: bool = False, require_extension: bool = False, workers: int | None = None,
               progress: Progress | None = None, now: datetime | None = None) -> ImportResult:
    """Validate and import a tip file (its bytes) into an operation. Raises DomainError for a
    file that is not a UTF-8 CSV or JSON Lines tip, TipRejected when rows are invalid and
    `skip_invalid` is off; flushes, never commits."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    operation = session.get(Operation, operation_id)
    if operation is None:
        raise NotFound("No such operation.")
    agency_id = importing_agency(session, actor, operation)
    if require_extension:
        files.check_name(file_name)
    files.check_content(data)
    fmt = files.detect_format(file_name, data)
    settings = deconfliction.settings(session)
    config = session.info.get("config") or {}
    if workers is None:
        workers = int(config.get("TIP_IMPORT_WORKERS") or 0) or None
    with _no_cyclic_gc():
        try:
            validation = validate(data, fmt, deconfliction._secret(session), workers=workers, progress=progress)
        except reader.MediaInTip as found:
            raise files.media_refusal(found.line) from None
    timings["validate"] = time.perf_counter() - started
    validation.seen.clear()  # the duplicate check is done: 150,000 keys less to carry
    # A file refused whole (its header) has no rows to correct: no reject file.
    reject = (files.reject_csv(validation.columns, validation.errors, validation.bad_records)
              if validation.errors and not validation.header_error else None)
    # Skipping the bad rows leaves something to import, or nothing is (no empty tip on record).
    if validation.header_error or (validation.errors and not (skip_invalid and validation.accounts)):
        raise TipRejected(validation, reject)
    if not validation.rows:
        raise DomainError("The file holds no rows.", field="file")

    peaks = {"validate": _peak_mb()}
    writer = _Writer(session, actor, operation, agency_id, settings.common_threshold, now, progress,
                     timings, peaks)
    tip = Tip(operation_id=operation.id, agency_id=agency_id, imported_by_id=actor.user_id,
              file_name=files.stored_name(file_name), file_sha256=hashlib.sha256(data).hexdigest(),
              file_format=TipFormat(fmt), rows=validation.rows, accepted=len(validation.accounts),
              rejected=len(validation.bad_lines), imported_at=writer.now)
    result = ImportResult(tip=tip, rows=validation.rows, accepted=len(validation.accounts),
                          rejected=len(validation.bad_lines), errors=validation.errors, reject_csv=reject,
                          ignored_columns=validation.ignored_columns, timings=timings, peaks=peaks)
    with bulk.waiting_for_the_write_lock(session, config.get("TIP_IMPORT_LOCK_WAIT_SECONDS", 600)), \
            bulk.large_page_cache(session), bulk.prepared_statements(session), bulk.without_jit(session), \
            _no_cyclic_gc():
        writer.write(tip, validation.accounts, result)
    timings["total"] = time.perf_counter() - started
    return result


class _Writer:
    def __init__(self, session: Session, actor: Actor, operation: Operation, agency_id: int, threshold: int,
                 now: datetime | None, progress: Progress | None, timings: dict[str, float], peaks: dict[str, float]):
        self.session = session
        self.actor = actor
        self.operation = operation
        self.agency_id = agency_id
        self.threshold = threshold
        self.clock_given = now
        self.now = now or utcnow()
        self.progress = progress or (lambda stage, done, total: None)
        self.timings = timings
        self.peaks = peaks
        self._clock = time.perf_counter()

    def _lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._clock
        self._clock = now
        self.peaks[name] = _peak_mb()

    def write(self, tip: Tip, accounts: list[Account], result: ImportResult) -> None:
        """Everything after validation."""
        session = self.session
        op = self.operation
        # Imports into one operation serialise (the second sees the first's accounts), and so
        # do decisions on its holders, which wait for no import.
        holders.lock_operation(session, op.id, wait=True)
        session.add(tip)
        session.flush()  # on SQLite this takes the write lock for the whole import
        if self.clock_given is None:
            # The import's time is once it holds the locks: a step it waited for (a transfer
            # that let its holders go, say) comes before what it adds.
            self.now = tip.imported_at = utcnow()
        self._clock = time.perf_counter()

        existing = self._stored_near(accounts)
        known = {(row.platform, row.account_key): row for row in existing}
        new = []
        for account in accounts:
            stored = known.get(account.natural_key)
            if stored is None:
                new.append(account)
            elif _stored_otherwise(stored, account):
                # A known account is kept as first imported: the summary says how many the file
                # gives otherwise, so that a provider's corrected tip is not taken as applied.
                result.differing_known += 1
        result.known_accounts = len(accounts) - len(new)
        result.new_accounts = len(new)
        self._lap("load")
        if not new:
            self._finish(tip, result, [])
            return

        # --- clustering ---------------------------------------------------------------------
        self.progress("cluster", 0, len(new))
        new_keys = [clustering.joining_keys(a.platform, a.username, a.email, a.phone) for a in new]
        counts: Counter = Counter(key for keys in new_keys for key in keys)
        # Only a stored account that shares a key with a new one can join it (stored holders
        # stay whole): a small tip into a large operation clusters the few it touches, and
        # counts its keys over every stored account (all read above), to tell which are common.
        emails = {value for kind, _platform, value in counts if kind is IdentifierKind.EMAIL}
        phones = {value for kind, _platform, value in counts if kind is IdentifierKind.PHONE}
        usernames = {(platform, value) for kind, platform, value in counts if kind is IdentifierKind.USERNAME}
        related = []
        keys_per_account: list[list] = []
        for row in existing:
            if row.email in emails or row.phone in phones or (row.platform, row.username) in usernames:
                keys = [key for key in clustering.joining_keys(row.platform, row.username, row.email, row.phone)
                        if key in counts]
                counts.update(keys)
                keys.append(("holder", row.holder_id))  # its holder stays whole
                keys_per_account.append(keys)
                related.append(row)
        keys_per_account += new_keys
        common = {key for key, n in counts.items() if n > self.threshold}
        labels = clustering.cluster(keys_per_account, common)
        n_old = len(related)
        holders_of: dict[int, set[int]] = defaultdict(set)
        new_of: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            if index < n_old:
                holders_of[label].add(related[index].holder_id)
            else:
                new_of[label].append(index - n_old)
        merge_into: dict[int, int] = {}
        for label, holder_ids in holders_of.items():
            if len(holder_ids) > 1:
                survivor = min(holder_ids)  # the oldest
                absorbed = sorted(holder_ids - {survivor})
                result.merges.append((survivor, absorbed))
                merge_into.update((h, survivor) for h in absorbed)
        # Each new account's holder: an existing one (the survivor), or a new one in file order.
        holder_of_new: list[int | None] = [None] * len(new)
        joined: set[int] = set()
        new_accounts_of: Counter = Counter()  # existing holder id -> new accounts it gains
        new_groups: list[list[int]] = []
        for label, members in sorted(new_of.items(), key=lambda item: item[1][0]):
            existing_ids = holders_of.get(label)
            if existing_ids:
                holder_id = min(existing_ids)
                joined.add(holder_id)
                new_accounts_of[holder_id] += len(members)
                for m in members:
                    holder_of_new[m] = holder_id
            else:
                new_groups.append(members)
        self._lap("cluster")

        # --- new holders: ids, numbers, subjects ------------------------------------------
        holder_ids = bulk.allocate_ids(session, Holder.__table__, len(new_groups))
        subject_ids = bulk.allocate_ids(session, Subject.__table__, len(new_groups))
        first_number = (session.scalar(select(Holder.number).where(Holder.operation_id == op.id)
                                       .order_by(Holder.number.desc()).limit(1)) or 0) + 1
        for holder_id, members in zip(holder_ids, new_groups):
            for m in members:
                holder_of_new[m] = holder_id

        # --- placement and triage of every holder that changed ------------------------------
        affected_existing = sorted(joined | {s for s, _ in result.merges})
        evidence: dict[int, list[tuple]] = defaultdict(list)  # holder id -> (hint, ip country) of each account
        grades: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])  # holder id -> summed grade counts
        affected = set(affected_existing)
        # The stored accounts of the holders that changed (survivors of a merge take their
        # absorbed holders' accounts), then the new accounts: both have the same fields.
        changed = sorted(affected | merge_into.keys())
        stored_rows = sorted((row for start in range(0, len(changed), 5000) for row in session.execute(
            select(TipAccount.id, *STORED_ACCOUNT).where(TipAccount.holder_id.in_(changed[start:start + 5000])))),
            key=itemgetter(0))  # in the order stored, as a holder's evidence lists them
        stored = ((merge_into.get(row.holder_id, row.holder_id), row) for row in stored_rows)
        for holder_id, account in chain(stored, zip(holder_of_new, new)):
            evidence[holder_id].append((account.country_hint, account.ip_country))
            summed = grades[holder_id]
            summed[0] += account.uploads_a
            summed[1] += account.uploads_b
            summed[2] += account.uploads_c

        states: dict[int, HolderState] = {}
        old_rows = {}
        absorbed_ids = sorted(merge_into)
        for start in range(0, len(affected_existing) + len(absorbed_ids), 5000):
            part = (affected_existing + absorbed_ids)[start:start + 5000]
            for row in session.execute(select(*HOLDER_STATE_COLUMNS, Holder.jurisdiction_source,
                                              Holder.jurisdiction_set_by_id, Holder.number, Holder.needs_review)
                                       .where(Holder.id.in_(part))):
                old_rows[row.id] = row
                states[row.id] = state_from_row(row)
        # A merged holder carries the risk flags investigators set on any of its parts, and the
        # jurisdiction a person set on one of them (the survivor's own, else the oldest part's).
        decided = {h: row for h, row in old_rows.items() if row.jurisdiction_source is JurisdictionSource.MANUAL}
        for survivor, absorbed in result.merges:
            merged = [any(flag) for flag in zip(states[survivor].flags, *(states[a].flags for a in absorbed))]
            states[survivor].flags = tuple(merged)
            if survivor not in decided:
                part = next((decided[a] for a in absorbed if a in decided), None)
                if part is not None:
                    decided[survivor] = part
                    states[survivor].jurisdiction, states[survivor].changed = part.jurisdiction, True
        placements = {}
        # Most holders' evidence is one of a few thousand shapes ("NZ" hinted, "NZ" located):
        # each shape is weighed, and its evidence written as the JSON column's text, once (as
        # text, because psycopg would serialise a JSON value again for every row it copies).
        weighed: dict[tuple, tuple[jurisdiction.Placement, str]] = {}
        for holder_id, items in evidence.items():
            shape = tuple(items)
            known = weighed.get(shape)
            if known is None:
                placement = jurisdiction.place(shape)
                known = weighed[shape] = (placement, json.dumps(placement.evidence))
            placement, evidence_json = known
            a, b, c = grades[holder_id]
            state = states.get(holder_id)
            flags = state.flags if state else (False,) * 5
            level = priority_from_flags(flags, a, b, c)
            manual = holder_id in decided
            placements[holder_id] = (placement, len(items), manual, evidence_json)
            if state is None:
                state = states[holder_id] = HolderState(  # a new holder; its subject id follows
                    id=holder_id, subject_id=0, priority=level, jurisdiction=placement.country, changed=True, new=True)
            state.grade_a, state.grade_b, state.grade_c = a, b, c
            if state.priority != level:
                state.priority, state.changed = level, True
            if not manual and state.jurisdiction != placement.country:
                state.jurisdiction, state.changed = placement.country, True
        for holder_id, subject_id in zip(holder_ids, subject_ids):
            states[holder_id].subject_id = subject_id
        self._lap("place")

        # --- routing (planned before writing: new holders point at their drafts) ----------
        self.progress("route", 0, len(placements))
        router = Router(session, self.actor, op, self.agency_id, now=self.now)
        # A merged holder stays on the sent referral of one of its parts; the import raises that
        # referral if the holder is now more urgent than it.
        sent_priority = router.follow_sent([(states[survivor], [states[a] for a in absorbed])
                                            for survivor, absorbed in result.merges])
        for holder_id in absorbed_ids:
            router.detach(states[holder_id], into=states[merge_into[holder_id]])
        router.plan([states[h] for h in sorted(placements)])
        router.create_drafts()
        self._lap("route")

        # --- writes ------------------------------------------------------------------------
        self.progress("write", 0, len(new))
        now_db = bulk.db_value(session, Subject.__table__, "created_at", self.now)
        # The subjects and identifiers an import writes name no creator (created_by_id stays
        # null, as for every import from the command line): the tip names its importer and the
        # audit trail the import. Checked row by row (a role that may not skip triggers, see
        # bulk.write_checked), a key on 700,000 rows that all hold the same user cost
        # PostgreSQL about 5 s of a full tip.
        bulk.insert_rows(session, Subject.__table__, ("id", "label"), [
            (subject_id, f"{op.code} {holder_label(first_number + i)}") for i, subject_id in enumerate(subject_ids)
        ], constants={"agency_id": self.agency_id, "created_at": now_db})
        holder_table = Holder.__table__
        new_holder_rows = []
        for i, holder_id in enumerate(holder_ids):
            state = states[holder_id]
            placement, count, _manual, evidence_json = placements[holder_id]
            new_holder_rows.append((
                holder_id, state.subject_id, first_number + i, count, state.grade_a, state.grade_b,
                state.grade_c, state.priority.value, state.jurisdiction, placement.confidence,
                placement.needs_review, evidence_json, state.routing.value, state.receiver_agency_id,
                state.referral_id, state.packaged,
            ))
        bulk.insert_rows(session, holder_table, (
            "id", "subject_id", "number", "accounts", "grade_a", "grade_b", "grade_c", "priority", "jurisdiction",
            "confidence", "needs_review", "evidence", "routing", "receiver_agency_id", "referral_id", "packaged",
        ), new_holder_rows, constants={
            "operation_id": op.id, **dict.fromkeys(RISK_COLUMNS, False),
            "jurisdiction_source": JurisdictionSource.EVIDENCE.value, "jurisdiction_set_by_id": None,
            "jurisdiction_set_at": None, "merged_into_id": None, "merged_at": None, "created_at": now_db,
            "updated_at": now_db,
        })
        updates = []
        for holder_id in affected_existing:
            state = states[holder_id]
            placement, count, manual, _json = placements[holder_id]
            confidence = (round(placement.evidence.get(state.jurisdiction, 0) / max(1, sum(placement.evidence.values())), 3)
                          if manual else placement.confidence)
            source = decided.get(holder_id)
            updates.append({
                "id": holder_id, "accounts": count, "grade_a": state.grade_a, "grade_b": state.grade_b,
                "grade_c": state.grade_c, **dict(zip(RISK_COLUMNS, state.flags)), "priority": state.priority,
                "jurisdiction": state.jurisdiction,
                "jurisdiction_source": JurisdictionSource.MANUAL if source else JurisdictionSource.EVIDENCE,
                "jurisdiction_set_by_id": source.jurisdiction_set_by_id if source else None,
                "jurisdiction_set_at": source.jurisdiction_set_at if source else None,
                "confidence": confidence,
                # Evidence decides unless a person did: then only a person takes the holder
                # off the review list (an earlier merge may have put it there).
                "needs_review": state.for_review or (old_rows[holder_id].needs_review if manual
                                                     else placement.needs_review),
                "evidence": placement.evidence, "routing": state.routing,
                "receiver_agency_id": state.receiver_agency_id, "referral_id": state.referral_id,
                "packaged": state.packaged, "updated_at": self.now,
            })
        bulk.update_rows(session, holder_table, "id", updates)
        bulk.update_rows(session, holder_table, "id", [
            {"id": a, "merged_into_id": merge_into[a], "merged_at": self.now, "referral_id": states[a].referral_id,
             "packaged": states[a].packaged, "updated_at": self.now}
            for a in absorbed_ids
        ])
        moves = [{"absorbed": a, "survivor": survivor} for survivor, absorbed in result.merges for a in absorbed]
        if moves:  # one executemany for every merged holder's accounts
            accounts_table = TipAccount.__table__
            session.execute(update(accounts_table).where(accounts_table.c.holder_id == bindparam("absorbed"))
                            .values(holder_id=bindparam("survivor")), moves)
            # Holders merged into an absorbed one earlier point where their accounts are now.
            session.execute(update(holder_table).where(holder_table.c.merged_into_id == bindparam("absorbed"))
                            .values(merged_into_id=bindparam("survivor")), moves)
        self._lap("write holders")

        account_table = TipAccount.__table__
        seen_at = bulk.converter(session, account_table, "first_seen")  # last_seen is of the same type
        bulk.insert_rows(session, account_table, (
            "holder_id", "line", "platform", "account_id", "account_key", "username", "email", "phone",
            "ip_addresses", "country_hint", "ip_country", "uploads_a", "uploads_b", "uploads_c", "first_seen",
            "last_seen"), [
            (holder_id, a.line, a.platform, a.account_id, a.account_key, a.username, a.email, a.phone,
             ";".join(a.ips), a.country_hint, a.ip_country, a.uploads_a, a.uploads_b, a.uploads_c,
             seen_at(a.first_seen), seen_at(a.last_seen))
            for a, holder_id in zip(new, holder_of_new)
        ], constants={"operation_id": op.id, "tip_id": tip.id})
        self._lap("write accounts")
        self.progress("write", len(new), len(new))
        _pause_for_tests()

        # --- identifiers of the holders' subjects ---------------------------------------------
        subject_of = {h: s.subject_id for h, s in states.items()}
        have: dict[int, set[str]] = defaultdict(set)
        joined_subjects = [subject_of[h] for h in sorted(joined)]
        for start in range(0, len(joined_subjects), 5000):
            for subject_id, key in session.execute(
                select(Identifier.subject_id, Identifier.match_key)
                .where(Identifier.subject_id.in_(joined_subjects[start:start + 5000]))
            ):
                have[subject_id].add(key)
        # Written in slices as they are built, so that they never all sit in memory at once.
        weight: Counter = Counter()  # subject -> identifiers added (what matching will have to do)
        rows = []
        for account, holder_id in zip(new, holder_of_new):
            subject_id = subject_of[holder_id]
            seen = have[subject_id]
            for kind, platform, raw, value, key in account.identifiers:
                if key not in seen:
                    seen.add(key)
                    rows.append((subject_id, kind, platform, raw, value, key))
            if len(rows) >= IDENTIFIER_SLICE:
                self._write_identifiers(rows, now_db, weight)
                rows = []
        self._write_identifiers(rows, now_db, weight)
        for survivor, absorbed in result.merges:
            self._copy_identifiers(subject_of[survivor], [subject_of[a] for a in absorbed])
        self._lap("write identifiers")

        del rows, have, keys_per_account, labels, evidence
        accounts.clear()  # the validated rows (the caller's list) are written: free them
        new.clear()
        holder_of_new.clear()

        router.write_links()
        self._write_common(counts, common)
        result.common_identifiers = len(common)
        route = router.finish()
        result.routing = route
        # A holder sent already stays on its referral, which follows it up if the new accounts
        # made it more urgent.
        previous = {h: sent_priority[h][0] if h in sent_priority else old_rows[h].priority for h in affected_existing}
        holders.escalate_sent_referrals(session, self.actor, [  # once per referral, where it is now
            (router.current_id(states[h].referral_id), previous[h], states[h].priority, holders.escalation_reason(
                holder_label(old_rows[h].number), previous[h], states[h].priority,
                f"with the accounts of tip {tip.file_name} (import {tip.id})"))
            for h in affected_existing
        ], self.now)
        self._record_sent_news(router, tip, affected_existing, states, old_rows, new_accounts_of,
                               dict(result.merges), sent_priority)
        self._lap("route")

        # --- deconfliction: one set-based refresh for every referral that changed ------------
        self.progress("match", 0, 1)
        sent_with_new = set()
        for holder_id in sorted(joined | {s for s, _ in result.merges}):
            state = states[holder_id]
            if state.referral_id and state.referral_id not in route.touched:
                sent_with_new.add(state.referral_id)
        # A holder that joined a case after its transfer sits on the successor, where what its
        # sender did not record matches nothing (`deconfliction._carried_over`): what it gained
        # matches on the referral the case came in on, which carries it too.
        sent_with_new |= set(referrals.came_in_on(session, session.scalars(select(Referral.id).where(
            Referral.id.in_(sorted(sent_with_new)), Referral.transferred_from_id.is_not(None)))).values())
        referral_ids = sorted(set(route.to_match) | sent_with_new)
        per_referral: Counter = Counter()
        for state in states.values():
            if state.referral_id:
                per_referral[state.referral_id] += weight.get(state.subject_id, 0)
        gained = set(weight) | {subject_of[survivor] for survivor, _ in result.merges}
        gained.update(state.subject_id for _, state in router.links)
        result.hits = self._match(referral_ids, per_referral, gained)
        self._lap("match")
        self.progress("match", 1, 1)
        # The next import, and the pages, plan their reads with these tables' new sizes. The
        # audit chain first: ANALYZE locks the tables against another import's until the commit,
        # and an import that holds the chain (its drafts are audited) must not wait for them.
        audit.lock_chain(session)
        bulk.analyze_grown(session, {
            TipAccount.__table__: result.new_accounts, Holder.__table__: len(holder_ids),
            Subject.__table__: len(holder_ids), Identifier.__table__: sum(weight.values()),
            referral_subjects: len(router.links), Referral.__table__: len(route.created)})
        self._lap("statistics")

        result.new_holders = len(holder_ids)
        result.joined_holders = len(joined)
        self._finish(tip, result, result.merges)

    def _stored_near(self, accounts: list[Account]) -> list:
        """The operation's stored accounts that the file's accounts can meet, in the order they
        were stored: the same account (natural key), or one sharing a joining key with one of
        them. A small tip into a large operation reads a few, not every stored account."""
        session = self.session
        if session.scalar(select(TipAccount.id).where(TipAccount.operation_id == self.operation.id).limit(1)) is None:
            return []  # the operation's first tip
        emails, phones, natural, usernames = set(), set(), set(), set()
        for a in accounts:
            natural.add(f"{a.platform}{_SEPARATOR}{a.account_key}")
            if a.email:
                emails.add(a.email)
            if a.phone:
                phones.add(a.phone)
            if a.username:
                usernames.add(f"{a.platform}{_SEPARATOR}{a.username}")

        def among(column, values: set, name: str):
            return column.in_(select(bulk.text_values(session, name, values).c.value))

        separator = literal(_SEPARATOR)
        return session.execute(select(*STORED_ACCOUNT).where(TipAccount.operation_id == self.operation.id, or_(
            among(TipAccount.platform + separator + TipAccount.account_key, natural, "natural_keys"),
            among(TipAccount.email, emails, "emails"),
            among(TipAccount.phone, phones, "phones"),
            among(TipAccount.platform + separator + TipAccount.username, usernames, "usernames"),
        )).order_by(TipAccount.id)).all()

    def _record_sent_news(self, router: Router, tip: Tip, affected: list[int], states: dict[int, HolderState],
                          old_rows: dict, new_accounts_of: Counter, merged_from: dict[int, list[int]],
                          followed: dict[int, tuple[Priority, int]]) -> None:
        """A sent referral whose holders gained accounts, by new rows or a merge, or that a
        merged holder joined, says so in its history and tells its receiver: once per referral
        and import, whether or not its priority rose."""
        news: dict[int, list[str]] = defaultdict(list)
        for h in affected:
            if not router.stays(states[h].referral_id):
                continue  # on no referral, or on a draft (routed above)
            referral_id = router.current_id(states[h].referral_id)  # two holders may reach it two ways
            label = holder_label(old_rows[h].number)
            elsewhere = (f" (it is now placed in {countries.name(states[h].jurisdiction)}: the sending agency "
                         "reviews it)" if states[h].for_review and states[h].jurisdiction else "")
            if h in followed:
                news[referral_id].append(f"holder {label} joined this referral by a merge with holder "
                                         f"{holder_label(old_rows[followed[h][1]].number)}, which is on it{elsewhere}")
            elif h in merged_from:
                parts = ", ".join(holder_label(old_rows[a].number) for a in merged_from[h])
                news[referral_id].append(f"holder {label} took in the accounts of holder {parts} by a merge{elsewhere}")
            if h in followed or h in merged_from:
                # Risk flags investigators found on a part now belong to the whole person.
                turned = referrals.turn_on_risk_flags(self.session, referral_id, [
                    name for name, on in zip(RISK_COLUMNS, states[h].flags) if on])
                if turned:
                    news[referral_id].append(f"its risk flags now include what was found on the holders merged: "
                                             f"{', '.join(RISK_FLAGS[name].lower() for name in turned)}")
            if new_accounts_of[h]:
                count = new_accounts_of[h]
                news[referral_id].append(f"{count} new account{'s' if count != 1 else ''} of holder {label}")
        # A part that was sent on a referral of its own keeps it, and its receiver learns where the
        # person's accounts went (deconfliction tells both receivers about each other).
        for survivor, parts in merged_from.items():
            on = router.current_id(states[survivor].referral_id)
            for part in parts:
                if not router.stays(states[part].referral_id):
                    continue
                referral_id = router.current_id(states[part].referral_id)
                if referral_id != on:  # the other holder is not this receiver's to see: not named
                    news[referral_id].append(
                        f"holder {holder_label(old_rows[part].number)} turned out to be the same person as another "
                        "holder of the operation, which took in its accounts; the sending agency follows them up "
                        "there")
        router.record_updates({referral_id: f"Tip {tip.file_name} (import {tip.id}): {'; '.join(items)}."
                               for referral_id, items in news.items()})

    def _match(self, referral_ids: list[int], identifiers: Counter,
               subjects: set[int]) -> deconfliction.RefreshResult | None:
        """`deconfliction.refresh_hits` for the referrals the import created or changed: set-based,
        over batches of referrals holding about MATCH_BATCH new identifiers each (one batch for
        all but the largest tips), so that memory stays bounded. What each referral gained in
        this import (identifiers written to `subjects`, subjects linked) is matched against every
        stored identifier, the import's own included, so the hits are the same as one call's;
        what it held before was matched when it came.

        A small tip's gains are read through its few subjects; a large one's (past the bound on
        an IN list) through its referrals, after `_needing_refresh` has set aside those whose
        refresh could find nothing."""
        small = len(subjects) <= GAINS_BY_SUBJECT_MAX and len(referral_ids) <= deconfliction.IN_LIST_MAX
        referral_ids = referral_ids if small else self._needing_refresh(referral_ids, identifiers)
        subjects_hint = sorted(subjects) if small else None
        if not referral_ids:
            return None
        total = deconfliction.RefreshResult()
        batch: list[int] = []
        size = 0
        for referral_id in referral_ids:
            batch.append(referral_id)
            size += max(1, identifiers.get(referral_id, 0))
            if size >= MATCH_BATCH:
                self._refresh(batch, total, subjects_hint)
                batch, size = [], 0
        if batch:
            self._refresh(batch, total, subjects_hint)
        return total

    def _needing_refresh(self, referral_ids: list[int], identifiers: Counter) -> list[int]:
        """The referrals among these whose refresh can find anything; refreshing the others
        would write nothing. A hit needs a match key that the referral gained in this import
        held through another subject too, and so does a common identifier unless a subject
        sits on several referrals (a transfer): at import scale almost every identifier is its
        holder's alone. A referral whose shared keys are all common can only mark them common,
        and one refresh per common key does that (with the referral holding the fewest
        identifiers). A key marked common that no longer is (`gained_since` reads the marked
        keys too) is a shared key like any other: the refresh unmarks it and raises the hits
        of all its holders, the import's or not (`deconfliction.refresh_hits`)."""
        session = self.session
        shared_keys = (select(Identifier.match_key).group_by(Identifier.match_key)
                       .having(func.count() > 1).scalar_subquery())
        on_several = (select(referral_subjects.c.subject_id).group_by(referral_subjects.c.subject_id)
                      .having(func.count() > 1).scalar_subquery())
        holding: dict[str, set[int]] = defaultdict(set)  # shared key -> referrals of ours holding it
        needed: set[int] = set()
        # Each part groups every stored identifier again: parts as large as the parameter limit
        # allows (SQLite's is 32,766), one part for a full tip's 7,700 drafts.
        for start in range(0, len(referral_ids), 30_000):
            part = referral_ids[start:start + 30_000]
            for referral_id, key in session.execute(
                select(referral_subjects.c.referral_id, Identifier.match_key)
                .join(Identifier, Identifier.subject_id == referral_subjects.c.subject_id)
                .where(referral_subjects.c.referral_id.in_(part), Identifier.match_key.in_(shared_keys),
                       *deconfliction.gained_since(self.now))
            ):
                holding[key].add(referral_id)
            needed.update(session.scalars(select(referral_subjects.c.referral_id).where(
                referral_subjects.c.referral_id.in_(part), referral_subjects.c.subject_id.in_(on_several))))
        if holding:
            common = deconfliction.match_batch(session, sorted(holding), shared_only=True).common
            for key, holding_referrals in sorted(holding.items()):
                if key not in common:
                    needed.update(holding_referrals)
            for key in sorted(common & holding.keys()):
                if not holding[key] & needed:
                    needed.add(min(holding[key], key=lambda r: (identifiers.get(r, 0), r)))
        return [referral_id for referral_id in referral_ids if referral_id in needed]

    def _refresh(self, batch: list[int], total: deconfliction.RefreshResult, subjects: list[int] | None) -> None:
        part = deconfliction.refresh_hits(self.session, self.actor, batch, now=self.now, since=self.now,
                                          subjects=subjects)
        total.created.extend(part.created)
        created = set(total.created)
        total.updated.extend(h for h in part.updated if h not in created)
        total.common = sorted(set(total.common) | set(part.common))
        total.uncommon = sorted(set(total.uncommon) | set(part.uncommon))

    def _write_identifiers(self, rows: list, created_at, weight: Counter) -> None:
        """Rows (subject id, kind, platform, raw, value, match key), all created at `created_at`
        (as the driver receives it)."""
        weight.update(map(itemgetter(0), rows))  # by subject
        rows.sort(key=itemgetter(5))  # by match key: the (match_key, subject_id) index fills in runs
        bulk.insert_rows(self.session, Identifier.__table__, ("subject_id", "kind", "platform", "raw", "value",
                                                              "match_key"), rows, constants={"created_at": created_at})

    def _copy_identifiers(self, survivor_subject: int, absorbed_subjects: list[int]) -> None:
        """The absorbed holders' identifiers, added to the survivor's subject (one INSERT ... SELECT):
        one per match key the survivor lacks. Two absorbed holders may hold the same key written
        two ways (an address in two spellings, a common phone that joined neither of them)."""
        source = Identifier.__table__.alias("source")
        chosen = Identifier.__table__.alias("chosen")
        target = Identifier.__table__
        already = select(target.c.id).where(target.c.subject_id == survivor_subject,
                                            target.c.match_key == source.c.match_key)
        first_of_each_key = (
            select(func.min(source.c.id))
            .where(source.c.subject_id.in_(absorbed_subjects), ~already.exists())
            .group_by(source.c.match_key)
        )
        self.session.execute(insert(target).from_select(
            ["subject_id", "kind", "platform", "raw", "value", "match_key", "created_at"],
            select(literal(survivor_subject), chosen.c.kind, chosen.c.platform, chosen.c.raw, chosen.c.value,
                   chosen.c.match_key, literal(self.now, target.c.created_at.type))
            .where(chosen.c.id.in_(first_of_each_key)),
        ))

    def _write_common(self, counts: Counter, common: set) -> None:
        """The common identifiers this import met, with their counts over the whole operation;
        the ones of earlier imports that it did not meet stay as they are (counts only grow),
        and one it met that is no longer common (the threshold was raised) is taken off."""
        table = TipCommonIdentifier.__table__
        stale = [row.id for row in self.session.execute(
            select(table.c.id, table.c.kind, table.c.platform, table.c.value).where(
                table.c.operation_id == self.operation.id))
            if (row.kind, row.platform, row.value) in counts and (row.kind, row.platform, row.value) not in common]
        if stale:
            self.session.execute(delete(table).where(table.c.id.in_(stale)))
        if not common:
            return
        statement = dialect_insert(self.session, table)
        statement = statement.on_conflict_do_update(index_elements=["operation_id", "kind", "platform", "value"],
                                                    set_={"accounts": statement.excluded.accounts})
        self.session.execute(statement, [
            {"operation_id": self.operation.id, "kind": kind, "platform": platform, "value": value,
             "accounts": counts[(kind, platform, value)]}
            for kind, platform, value in sorted(common)
        ])

    def _finish(self, tip: Tip, result: ImportResult, merges) -> None:
        tip.new_accounts = result.new_accounts
        tip.known_accounts = result.known_accounts
        tip.new_holders = result.new_holders
        tip.joined_holders = result.joined_holders
        tip.merged_holders = sum(len(absorbed) for _, absorbed in merges)
        tip.drafts_created = len(result.routing.created)
        self.session.flush()
        entries = [("tip.holders_merge", "holder", survivor, {"absorbed": absorbed, "tip": tip.id})
                   for survivor, absorbed in merges]
        entries.append(("tip.import", "tip", tip.id, {
            "operation": self.operation.code, "file": tip.file_name, "sha256": tip.file_sha256, "rows": tip.rows,
            "accepted": tip.accepted, "rejected": tip.rejected, "new_accounts": tip.new_accounts,
            "known_accounts": tip.known_accounts, "differing_known": result.differing_known,
            "new_holders": tip.new_holders,
            "joined_holders": tip.joined_holders, "merged_holders": tip.merged_holders,
            "drafts_created": tip.drafts_created, "drafts_changed": len(result.routing.changed),
            "drafts_discarded": len(result.routing.discarded),
        }))
        bulk.audit_many(self.session, self.actor, entries)
        self._lap("finish")


# Between a platform and a value in the keys `_stored_near` matches on: no platform has it.
_SEPARATOR = "\x1f"

# What an import reads of a stored account: its holder, natural key, identifiers and evidence.
STORED_ACCOUNT = (TipAccount.holder_id, TipAccount.platform, TipAccount.account_key, TipAccount.username,
                  TipAccount.email, TipAccount.phone, TipAccount.ip_addresses, TipAccount.country_hint,
                  TipAccount.ip_country, TipAccount.uploads_a, TipAccount.uploads_b, TipAccount.uploads_c)


def _stored_otherwise(row, account: Account) -> bool:
    """Whether the file gives a known account other identifiers, countries or counts than the
    ones stored (canonical forms on both sides; its addresses in any order)."""
    return (row.username, row.email, row.phone, set(filter(None, row.ip_addresses.split(";"))), row.country_hint,
            row.ip_country, row.uploads_a, row.uploads_b, row.uploads_c) != (
        account.username, account.email, account.phone, set(account.ips), account.country_hint, account.ip_country,
        account.uploads_a, account.uploads_b, account.uploads_c)


@contextmanager
def _no_cyclic_gc():
    """The pipeline holds a few million small objects, almost none in reference cycles; the
    cyclic collector would scan them again and again (10 to 20% of the time). Reference
    counting still frees everything; the collector runs again afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _pause_for_tests() -> None:
    seconds = os.environ.get(PAUSE_ENV)
    if seconds:
        print(f"import paused after writing accounts ({PAUSE_ENV})", file=sys.stderr, flush=True)
        time.sleep(float(seconds))
