"""Provider tips: each import of a tip file, the accounts it listed, and the account holders
the pipeline found behind them (docs/tip-format.md).

An account is stored once per operation under its natural key, platform + normalised
account id, so importing the same file again, or an overlapping one, adds only what is new.
A holder is one person behind one or more accounts; each holder is also a `Subject` of the
importing agency (with its accounts' identifiers), which is how it sits on referrals and how
deconfliction matches it. Holder ids stay stable across imports: a new account that bridges
two holders merges the younger into the older (`merged_into_id`), never the other way.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, CheckConstraint, Float, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, UTCDateTime, utcnow
from app.models._types import SUMMED_COUNT, enum_column
from app.models.agency import Agency
from app.models.operation import Operation
from app.models.referral import Priority, Referral
from app.models.subject import Subject, identifier_kind_column
from app.services.identifiers import IdentifierKind


class TipFormat(enum.StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


class JurisdictionSource(enum.StrEnum):
    EVIDENCE = "evidence"  # weighed from the accounts' country hints and IP geolocations
    MANUAL = "manual"  # set by a person of the lead agency


class HolderRouting(enum.StrEnum):
    """Where the routing step sent a holder."""

    FOCAL_POINT = "focal_point"  # the focal-point agency of the holder's country
    INTERNATIONAL = "international"  # no focal point for the country: an international body
    OWN_AGENCY = "own_agency"  # the importing agency's own country: worked in house, no referral
    UNPLACED = "unplaced"  # no jurisdiction yet: waits on the review list
    NO_RECEIVER = "no_receiver"  # no focal point and no international body in the directory

    @property
    def label(self) -> str:
        return {
            "focal_point": "Focal point",
            "international": "International body (no focal point)",
            "own_agency": "Own agency",
            "unplaced": "No jurisdiction yet",
            "no_receiver": "No receiving agency",
        }[self.value]


UNROUTED = (HolderRouting.INTERNATIONAL, HolderRouting.NO_RECEIVER)


class Tip(Base):
    """One import of a provider tip file into an operation (only completed imports exist: an
    import is one transaction)."""

    __tablename__ = "tips"

    id: Mapped[int] = mapped_column(primary_key=True)
    operation_id: Mapped[int] = mapped_column(ForeignKey("operations.id"), index=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"))
    imported_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    file_name: Mapped[str] = mapped_column(String(255))
    file_sha256: Mapped[str] = mapped_column(String(64))
    file_format: Mapped[TipFormat] = mapped_column(enum_column(TipFormat, "tip_format"))
    rows: Mapped[int] = mapped_column(default=0)
    accepted: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[int] = mapped_column(default=0)
    new_accounts: Mapped[int] = mapped_column(default=0)
    known_accounts: Mapped[int] = mapped_column(default=0)
    new_holders: Mapped[int] = mapped_column(default=0)
    joined_holders: Mapped[int] = mapped_column(default=0)
    merged_holders: Mapped[int] = mapped_column(default=0)
    drafts_created: Mapped[int] = mapped_column(default=0)
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    operation: Mapped[Operation] = relationship(lazy="joined")
    agency: Mapped[Agency] = relationship(lazy="joined")

    def __repr__(self) -> str:
        return f"<Tip {self.id} {self.file_name!r}>"


class TipImportStatus(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"  # committed: `tip_id` names the import's Tip
    REJECTED = "rejected"  # invalid rows and none skipped: nothing written, `errors` says why
    FAILED = "failed"  # refused (not a tip file, no rows) or broke off: nothing written


class TipImport(Base):
    """An import started from the web page and run in the background: its progress while it
    runs, then its outcome (the summary, or the problems and the reject file). The import
    itself is one transaction; this record is written beside it (docs/architecture.md)."""

    __tablename__ = "tip_imports"
    __table_args__ = (
        # One running import per person (a double click starts one): checked by the database,
        # so that two requests at once cannot both pass.
        Index("uq_tip_imports_running_user_id", "user_id", unique=True,
              sqlite_where=text("status = 'running'"), postgresql_where=text("status = 'running'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    operation_id: Mapped[int] = mapped_column(ForeignKey("operations.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)  # who started it, who sees it
    file_name: Mapped[str] = mapped_column(String(255))
    skip_invalid: Mapped[bool] = mapped_column(default=False)
    status: Mapped[TipImportStatus] = mapped_column(enum_column(TipImportStatus, "tip_import_status"),
                                                    default=TipImportStatus.RUNNING)
    stage: Mapped[str] = mapped_column(String(16), default="")  # the importer's stage names
    done: Mapped[int] = mapped_column(default=0)  # of the stage's `total` (bytes while validating)
    total: Mapped[int] = mapped_column(default=0)
    tip_id: Mapped[int | None] = mapped_column(ForeignKey("tips.id"))
    summary: Mapped[dict | None] = mapped_column(JSON)  # the figures of a completed import
    message: Mapped[str] = mapped_column(String(1000), default="")
    errors: Mapped[list | None] = mapped_column(JSON)  # the first problems: [line, field, reason]
    error_count: Mapped[int] = mapped_column(default=0)
    reject_csv: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The process running it (host, process id and that process's start), to tell a running
    # import from one whose process stopped (app/services/tips/imports.py).
    runner: Mapped[str | None] = mapped_column(String(255))
    # When the thread running it last said it is alive: what another server goes by.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    operation: Mapped[Operation] = relationship(lazy="joined")

    @property
    def finished(self) -> bool:
        return self.status is not TipImportStatus.RUNNING

    def __repr__(self) -> str:
        return f"<TipImport {self.id} {self.status}>"


class Holder(Base):
    """An account holder found by clustering a tip's accounts."""

    __tablename__ = "tip_holders"
    __table_args__ = (
        UniqueConstraint("operation_id", "number", name="uq_tip_holders_operation_id_number"),
        CheckConstraint("grade_a >= 0 AND grade_b >= 0 AND grade_c >= 0", name="grades_not_negative"),
        Index("ix_tip_holders_operation_id_needs_review", "operation_id", "needs_review"),
        Index("ix_tip_holders_operation_id_routing", "operation_id", "routing"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    operation_id: Mapped[int] = mapped_column(ForeignKey("operations.id"))
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id"), unique=True)
    number: Mapped[int]  # per operation, in order of discovery: "H-000123"
    accounts: Mapped[int] = mapped_column(default=0)

    # Triage: grade sums over the accounts, risk flags set by investigators, the result.
    grade_a: Mapped[int] = mapped_column(SUMMED_COUNT, default=0)
    grade_b: Mapped[int] = mapped_column(SUMMED_COUNT, default=0)
    grade_c: Mapped[int] = mapped_column(SUMMED_COUNT, default=0)
    risk_access_to_children: Mapped[bool] = mapped_column(default=False)
    risk_position_of_authority: Mapped[bool] = mapped_column(default=False)
    risk_previous_convictions: Mapped[bool] = mapped_column(default=False)
    risk_plans_to_meet: Mapped[bool] = mapped_column(default=False)
    risk_contact_offending: Mapped[bool] = mapped_column(default=False)
    priority: Mapped[Priority] = mapped_column(enum_column(Priority, "holder_priority"))

    # Jurisdiction: the weighed evidence ({"NZ": 3, "AU": 2}), its result and who decided.
    jurisdiction: Mapped[str | None] = mapped_column(String(2))
    confidence: Mapped[float] = mapped_column(Float, default=0.0)
    needs_review: Mapped[bool] = mapped_column(default=False)
    evidence: Mapped[dict] = mapped_column(JSON, default=dict)
    jurisdiction_source: Mapped[JurisdictionSource] = mapped_column(
        enum_column(JurisdictionSource, "jurisdiction_source"), default=JurisdictionSource.EVIDENCE
    )
    jurisdiction_set_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    jurisdiction_set_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Routing: the receiving agency and the draft (or sent) referral the holder is on.
    routing: Mapped[HolderRouting] = mapped_column(enum_column(HolderRouting, "holder_routing"))
    receiver_agency_id: Mapped[int | None] = mapped_column(ForeignKey("agencies.id"))
    referral_id: Mapped[int | None] = mapped_column(ForeignKey("referrals.id", ondelete="SET NULL"), index=True)
    # True: the referral is a package of P3/P4 holders; False: the holder's own referral.
    packaged: Mapped[bool] = mapped_column(default=False)

    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("tip_holders.id"), index=True)
    merged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    operation: Mapped[Operation] = relationship(lazy="joined")
    subject: Mapped[Subject] = relationship(lazy="joined")
    receiver: Mapped[Agency | None] = relationship(lazy="joined")
    referral: Mapped[Referral | None] = relationship()

    @property
    def label(self) -> str:
        return holder_label(self.number)

    def __repr__(self) -> str:
        return f"<Holder {self.id} {self.label}>"


def holder_label(number: int) -> str:
    return f"H-{number:06d}"


class TipAccount(Base):
    """One account of a provider tip, stored once per operation (natural key: platform and
    normalised account id). Identifiers are kept in their canonical forms."""

    __tablename__ = "tip_accounts"
    __table_args__ = (
        UniqueConstraint("operation_id", "platform", "account_key", name="uq_tip_accounts_natural_key"),
        CheckConstraint("uploads_a >= 0 AND uploads_b >= 0 AND uploads_c >= 0", name="uploads_not_negative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    operation_id: Mapped[int] = mapped_column(ForeignKey("operations.id"))
    tip_id: Mapped[int] = mapped_column(ForeignKey("tips.id"), index=True)  # the import that brought it
    holder_id: Mapped[int] = mapped_column(ForeignKey("tip_holders.id"), index=True)
    line: Mapped[int]  # its line in that tip file
    platform: Mapped[str] = mapped_column(String(32))
    account_id: Mapped[str] = mapped_column(String(320))  # as given
    account_key: Mapped[str] = mapped_column(String(320))  # canonical (NFKC + case folding)
    username: Mapped[str | None] = mapped_column(String(320))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(32))
    ip_addresses: Mapped[str] = mapped_column(String(2000), default="")  # canonical, ";"-separated
    country_hint: Mapped[str | None] = mapped_column(String(2))
    ip_country: Mapped[str | None] = mapped_column(String(2))
    uploads_a: Mapped[int] = mapped_column(default=0)
    uploads_b: Mapped[int] = mapped_column(default=0)
    uploads_c: Mapped[int] = mapped_column(default=0)
    first_seen: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<TipAccount {self.platform}:{self.account_key}>"


class TipCommonIdentifier(Base):
    """A joining identifier (e-mail, phone, username) held by more accounts of the operation
    than the common-identifier threshold: it joined nobody. Each import writes the ones it
    met, with their counts over the whole operation."""

    __tablename__ = "tip_common_identifiers"
    __table_args__ = (
        UniqueConstraint("operation_id", "kind", "platform", "value", name="uq_tip_common_identifiers_key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    operation_id: Mapped[int] = mapped_column(ForeignKey("operations.id"), index=True)
    kind: Mapped[IdentifierKind] = mapped_column(identifier_kind_column())
    platform: Mapped[str] = mapped_column(String(32), default="")  # "" for e-mail and phone
    value: Mapped[str] = mapped_column(String(320))
    accounts: Mapped[int]
