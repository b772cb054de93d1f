from __future__ import annotations

import enum
from datetime import date, datetime, timedelta

from sqlalchemy import CheckConstraint, ColumnElement, ForeignKey, Index, Select, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, UTCDateTime, utcnow
from app.models._types import SUMMED_COUNT, enum_column
from app.models.agency import Agency
from app.models.operation import Operation
from app.models.user import User


class Status(enum.StrEnum):
    DRAFT = "draft"
    SENT = "sent"
    ACKNOWLEDGED = "acknowledged"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    TRANSFERRED = "transferred"
    WITHDRAWN = "withdrawn"
    CLOSED = "closed"

    @property
    def is_open(self) -> bool:
        return self in (Status.DRAFT, Status.SENT, Status.ACKNOWLEDGED, Status.ACCEPTED)


class Priority(enum.StrEnum):
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"
    P4 = "P4"

    @property
    def acknowledge_within(self) -> timedelta:
        return timedelta(hours=24) if self is Priority.P1 else timedelta(hours=72)


class TLP(enum.StrEnum):
    RED = "RED"
    AMBER_STRICT = "AMBER+STRICT"
    AMBER = "AMBER"
    GREEN = "GREEN"
    CLEAR = "CLEAR"


class HandlingCode(enum.StrEnum):
    ONWARD_PERMITTED = "H1"
    CONSENT_REQUIRED = "H2"

    @property
    def label(self) -> str:
        return {
            "H1": "H1 - onward transfer permitted",
            "H2": "H2 - onward transfer needs the sender's consent",
        }[self.value]


RISK_FLAGS: dict[str, str] = {
    "risk_access_to_children": "Access to children",
    "risk_position_of_authority": "Position of authority",
    "risk_previous_convictions": "Previous convictions",
    "risk_plans_to_meet": "Plans to meet a child",
    "risk_contact_offending": "Indications of contact offending",
}


class Referral(Base):
    __tablename__ = "referrals"
    __table_args__ = (
        CheckConstraint("sender_agency_id <> receiver_agency_id", name="distinct_agencies"),
        CheckConstraint("grade_a >= 0 AND grade_b >= 0 AND grade_c >= 0", name="grades_not_negative"),
        Index("ix_referrals_status_sent_at", "status", "sent_at"),
        # Every dashboard figure filters on jurisdiction and the sending date and reads only
        # these columns: both engines answer from the index without touching the table.
        Index("ix_referrals_dashboard", "jurisdiction", "sent_at", "status", "priority", "sender_agency_id",
              "receiver_agency_id", "operation_id", "acknowledged_at", "accepted_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    reference: Mapped[str] = mapped_column(String(32), unique=True)
    version: Mapped[int] = mapped_column(default=1)
    operation_id: Mapped[int | None] = mapped_column(ForeignKey("operations.id"), index=True)
    sender_agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"), index=True)
    receiver_agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"), index=True)
    jurisdiction: Mapped[str] = mapped_column(String(2))
    priority: Mapped[Priority] = mapped_column(enum_column(Priority, "referral_priority"))
    status: Mapped[Status] = mapped_column(enum_column(Status, "referral_status"), default=Status.DRAFT)

    risk_access_to_children: Mapped[bool] = mapped_column(default=False)
    risk_position_of_authority: Mapped[bool] = mapped_column(default=False)
    risk_previous_convictions: Mapped[bool] = mapped_column(default=False)
    risk_plans_to_meet: Mapped[bool] = mapped_column(default=False)
    risk_contact_offending: Mapped[bool] = mapped_column(default=False)

    # Material is only ever described: grade counts and a short text, never files.
    grade_a: Mapped[int] = mapped_column(SUMMED_COUNT, default=0)
    grade_b: Mapped[int] = mapped_column(SUMMED_COUNT, default=0)
    grade_c: Mapped[int] = mapped_column(SUMMED_COUNT, default=0)
    material_description: Mapped[str] = mapped_column(String(500), default="")

    tlp: Mapped[TLP] = mapped_column(enum_column(TLP, "referral_tlp"), default=TLP.RED)
    handling_code: Mapped[HandlingCode] = mapped_column(
        enum_column(HandlingCode, "referral_handling_code"), default=HandlingCode.CONSENT_REQUIRED
    )
    transfer_consent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    summary: Mapped[str] = mapped_column(Text, default="")

    transferred_from_id: Mapped[int | None] = mapped_column(ForeignKey("referrals.id"), index=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    declined_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    transferred_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    withdrawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    sender: Mapped[Agency] = relationship(foreign_keys=[sender_agency_id], lazy="joined")
    receiver: Mapped[Agency] = relationship(foreign_keys=[receiver_agency_id], lazy="joined")
    operation: Mapped[Operation | None] = relationship(lazy="joined")
    transferred_from: Mapped[Referral | None] = relationship(remote_side=[id])
    events: Mapped[list[ReferralEvent]] = relationship(
        back_populates="referral", order_by="ReferralEvent.id", cascade="all, delete-orphan"
    )
    outcomes: Mapped[list[Outcome]] = relationship(
        back_populates="referral", order_by="Outcome.id", cascade="all, delete-orphan"
    )

    # Optimistic locking: an UPDATE whose version no longer matches fails instead of
    # silently overwriting someone else's change.
    __mapper_args__ = {"version_id_col": version}

    @property
    def acknowledge_due(self) -> datetime | None:
        if self.sent_at is None:
            return None
        return self.sent_at + self.priority.acknowledge_within

    def is_overdue(self, now: datetime | None = None) -> bool:
        due = self.acknowledge_due
        return self.status is Status.SENT and due is not None and (now or utcnow()) > due

    @property
    def risk_flags(self) -> list[str]:
        return [label for attr, label in RISK_FLAGS.items() if getattr(self, attr)]

    def __repr__(self) -> str:
        return f"<Referral {self.reference} {self.status}>"


def came_in_on_select(condition: ColumnElement[bool]) -> Select:
    """(start, came_in_on) for each referral meeting `condition`: the referral its case came in
    on, the first of the transfers that led to it (itself if none did). One recursive query up
    the chains, for a statement of its own or inside another."""
    chain = (select(Referral.id.label("start"), Referral.id, Referral.transferred_from_id)
             .where(condition).cte("chain", recursive=True))
    chain = chain.union_all(select(chain.c.start, Referral.id, Referral.transferred_from_id)
                            .join(chain, Referral.id == chain.c.transferred_from_id))
    return select(chain.c.start, chain.c.id.label("came_in_on")).where(chain.c.transferred_from_id.is_(None))


class ReferralEvent(Base):
    """One entry of a referral's history: a transition or another recorded step."""

    __tablename__ = "referral_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    referral_id: Mapped[int] = mapped_column(ForeignKey("referrals.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    action: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str | None] = mapped_column(String(20))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"))
    note: Mapped[str] = mapped_column(String(1000), default="")

    referral: Mapped[Referral] = relationship(back_populates="events")
    user: Mapped[User | None] = relationship(lazy="joined")
    agency: Mapped[Agency] = relationship(lazy="joined")


class Outcome(Base):
    """What came of an accepted referral, reported back to the sender."""

    __tablename__ = "outcomes"
    __table_args__ = (
        CheckConstraint(
            "arrests >= 0 AND charges >= 0 AND children_safeguarded >= 0", name="counts_not_negative"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    referral_id: Mapped[int] = mapped_column(ForeignKey("referrals.id", ondelete="CASCADE"), index=True)
    occurred_on: Mapped[date]
    arrests: Mapped[int] = mapped_column(default=0)
    charges: Mapped[int] = mapped_column(default=0)
    children_safeguarded: Mapped[int] = mapped_column(default=0)
    note: Mapped[str] = mapped_column(String(1000), default="")
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"))

    referral: Mapped[Referral] = relationship(back_populates="outcomes")


class ReferenceCounter(Base):
    """Per-year counter behind the human-readable references (HND-2026-000123)."""

    __tablename__ = "reference_counters"

    year: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    last_value: Mapped[int] = mapped_column(default=0)
