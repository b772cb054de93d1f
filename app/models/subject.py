"""Subjects (account holders) and their identifiers.

A subject is recorded by one agency and may sit on several referrals (a transfer carries the
same subjects to the new referral). Each identifier keeps the input as typed (`raw`), its
canonical form (`value`) and the keyed hash of that form (`match_key`), on which
deconfliction matches; the index starts with `match_key` and covers `subject_id`, so a batch
of keys resolves to subjects without reading the table.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, ForeignKey, Index, String, Table, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, UTCDateTime, utcnow
from app.models._types import enum_column
from app.models.agency import Agency
from app.services.identifiers import PLATFORMS, IdentifierKind

# Which subjects a referral concerns; a subject may sit on several referrals.
referral_subjects = Table(
    "referral_subjects",
    Base.metadata,
    Column("referral_id", ForeignKey("referrals.id", ondelete="CASCADE"), primary_key=True),
    Column("subject_id", ForeignKey("subjects.id", ondelete="CASCADE"), primary_key=True),
    Column("added_at", UTCDateTime, nullable=False, default=utcnow),
    # Matching goes from an identifier's subject to its referrals: with the referral in the
    # index, the table is never read.
    Index("ix_referral_subjects_subject_id_referral_id", "subject_id", "referral_id"),
)


def identifier_kind_column():
    return enum_column(IdentifierKind, "identifier_kind")


class Subject(Base):
    """An account holder. The recording agency alone adds identifiers to it."""

    __tablename__ = "subjects"

    id: Mapped[int] = mapped_column(primary_key=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"), index=True)
    label: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Who recorded it; null for a tip's account holders (the tip names its importer).
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    agency: Mapped[Agency] = relationship(lazy="joined")
    identifiers: Mapped[list[Identifier]] = relationship(
        back_populates="subject", order_by="Identifier.id", cascade="all, delete-orphan"
    )

    def __repr__(self) -> str:
        return f"<Subject {self.id} {self.label!r}>"


class Identifier(Base):
    __tablename__ = "identifiers"
    __table_args__ = (
        # One identifier per subject and key; the unique index leads with the match key and
        # covers the subject, so matching a batch of keys needs no table reads.
        UniqueConstraint("match_key", "subject_id", name="uq_identifiers_match_key_subject_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"), index=True)
    kind: Mapped[IdentifierKind] = mapped_column(identifier_kind_column())
    platform: Mapped[str | None] = mapped_column(String(32))
    raw: Mapped[str] = mapped_column(String(320))
    value: Mapped[str] = mapped_column(String(320))
    # Hex HMAC-SHA256 of (kind, platform, value) under MATCH_KEY_SECRET.
    match_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Who added it; null for identifiers a tip import wrote (the tip names its importer).
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    subject: Mapped[Subject] = relationship(back_populates="identifiers")

    @property
    def platform_label(self) -> str:
        return PLATFORMS.get(self.platform or "", "")

    def __repr__(self) -> str:
        return f"<Identifier {self.kind} {self.match_key[:8]}>"
