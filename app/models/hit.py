"""Deconfliction hits, their matched identifiers, notifications and common identifiers.

A hit joins two referrals that hold the same identifier through different subjects. It is
stored once per unordered pair (`referral_low_id < referral_high_id`), with the sending
agency of each side copied beside it so that the access scope is a plain column test. A hit
between two referrals of the same agency is a possible duplicate.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, UTCDateTime, utcnow
from app.models._types import enum_column
from app.models.agency import Agency
from app.models.subject import identifier_kind_column
from app.services.identifiers import IdentifierKind


class HitStatus(enum.StrEnum):
    NEW = "new"
    ACKNOWLEDGED = "acknowledged"  # by both agencies
    RESOLVED = "resolved"  # a lead agency was agreed


class HitSide(enum.StrEnum):
    LOW = "low"
    HIGH = "high"


class Hit(Base):
    __tablename__ = "hits"
    __table_args__ = (
        UniqueConstraint("referral_low_id", "referral_high_id", name="uq_hits_referral_pair"),
        CheckConstraint("referral_low_id < referral_high_id", name="ordered_pair"),
        CheckConstraint(
            "lead_agency_id IS NULL OR lead_agency_id = agency_low_id OR lead_agency_id = agency_high_id",
            name="lead_is_a_party",
        ),
        Index("ix_hits_agency_low_id_status", "agency_low_id", "status"),
        Index("ix_hits_agency_high_id_status", "agency_high_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(default=1)
    referral_low_id: Mapped[int] = mapped_column(ForeignKey("referrals.id", ondelete="CASCADE"))
    referral_high_id: Mapped[int] = mapped_column(ForeignKey("referrals.id", ondelete="CASCADE"), index=True)
    # The sending agency of each referral: the two parties of the hit.
    agency_low_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"))
    agency_high_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"))
    status: Mapped[HitStatus] = mapped_column(enum_column(HitStatus, "hit_status"), default=HitStatus.NEW)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    acknowledged_low_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_low_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    acknowledged_high_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_high_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    lead_agency_id: Mapped[int | None] = mapped_column(ForeignKey("agencies.id"))
    resolution_note: Mapped[str] = mapped_column(String(1000), default="")
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    agency_low: Mapped[Agency] = relationship(foreign_keys=[agency_low_id], lazy="joined")
    agency_high: Mapped[Agency] = relationship(foreign_keys=[agency_high_id], lazy="joined")
    lead_agency: Mapped[Agency | None] = relationship(foreign_keys=[lead_agency_id], lazy="joined")
    matches: Mapped[list[HitMatch]] = relationship(
        back_populates="hit", order_by="HitMatch.id", cascade="all, delete-orphan"
    )

    __mapper_args__ = {"version_id_col": version}

    @property
    def is_duplicate(self) -> bool:
        return self.agency_low_id == self.agency_high_id

    def sides_of(self, agency_id: int) -> list[HitSide]:
        """The sides an agency holds: one, or both for a possible duplicate."""
        sides = []
        if self.agency_low_id == agency_id:
            sides.append(HitSide.LOW)
        if self.agency_high_id == agency_id:
            sides.append(HitSide.HIGH)
        return sides

    def referral_id_of(self, side: HitSide) -> int:
        return self.referral_low_id if side is HitSide.LOW else self.referral_high_id

    def agency_id_of(self, side: HitSide) -> int:
        return self.agency_low_id if side is HitSide.LOW else self.agency_high_id

    def acknowledged_at_of(self, side: HitSide) -> datetime | None:
        return self.acknowledged_low_at if side is HitSide.LOW else self.acknowledged_high_at

    def __repr__(self) -> str:
        return f"<Hit {self.id} {self.referral_low_id}-{self.referral_high_id} {self.status}>"


class HitMatch(Base):
    """One identifier of one side that matched: which of its own identifiers each side sees."""

    __tablename__ = "hit_matches"
    __table_args__ = (
        UniqueConstraint("hit_id", "side", "identifier_id", name="uq_hit_matches_hit_side_identifier"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    hit_id: Mapped[int] = mapped_column(ForeignKey("hits.id", ondelete="CASCADE"))
    side: Mapped[HitSide] = mapped_column(enum_column(HitSide, "hit_side"))
    identifier_id: Mapped[int] = mapped_column(ForeignKey("identifiers.id", ondelete="CASCADE"), index=True)
    kind: Mapped[IdentifierKind] = mapped_column(identifier_kind_column())
    match_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    hit: Mapped[Hit] = relationship(back_populates="matches")


class NotificationKind(enum.StrEnum):
    HIT_NEW = "hit_new"
    HIT_UPDATED = "hit_updated"  # new matching identifiers
    HIT_ACKNOWLEDGED = "hit_acknowledged"
    HIT_RESOLVED = "hit_resolved"
    PRIORITY_RAISED = "priority_raised"  # a sent referral became more urgent: its receiver is told
    REFERRAL_UPDATED = "referral_updated"  # an import added to what a sent referral concerns


class Notification(Base):
    """An in-app message to every user of one agency."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_agency_id_id", "agency_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"))
    kind: Mapped[NotificationKind] = mapped_column(enum_column(NotificationKind, "notification_kind"))
    hit_id: Mapped[int | None] = mapped_column(ForeignKey("hits.id", ondelete="CASCADE"), index=True)
    referral_id: Mapped[int | None] = mapped_column(ForeignKey("referrals.id", ondelete="CASCADE"), index=True)
    message: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotificationCursor(Base):
    """How far a user has read their agency's notifications (everything after is unread)."""

    __tablename__ = "notification_cursors"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True,
                                         autoincrement=False)
    last_seen_id: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class CommonIdentifier(Base):
    """An identifier held by more cases than the threshold (a VPN exit address, say): a
    referral and the referrals its transfers made are one case.

    It raises no hits. Marked when deconfliction meets it, unmarked when deconfliction meets
    it no longer common (or when an administrator rechecks every mark); listed for admins
    with its canonical value, since a value this widespread identifies no one case.
    """

    __tablename__ = "common_identifiers"

    match_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[IdentifierKind] = mapped_column(identifier_kind_column())
    platform: Mapped[str | None] = mapped_column(String(32))
    value: Mapped[str] = mapped_column(String(320))
    case_count: Mapped[int]  # the cases holding it when last met
    marked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
