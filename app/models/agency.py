from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow
from app.models._types import enum_column


class AgencyKind(enum.StrEnum):
    POLICE = "police"
    CUSTOMS = "customs"
    GOVERNMENT = "government"
    INTERNATIONAL = "international"

    @property
    def label(self) -> str:
        return {
            "police": "Police",
            "customs": "Customs",
            "government": "Government department",
            "international": "International body",
        }[self.value]


class Agency(Base):
    __tablename__ = "agencies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))  # unique whatever its case: uq_agencies_lower_name
    kind: Mapped[AgencyKind] = mapped_column(enum_column(AgencyKind, "agency_kind"))
    # ISO 3166-1 alpha-2; None for international bodies.
    country_code: Mapped[str | None] = mapped_column(String(2), index=True)
    desk_email: Mapped[str] = mapped_column(String(254))
    desk_phone: Mapped[str] = mapped_column(String(32))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # The agency that receives referrals for its country (the routing directory).
    is_focal_point: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<Agency {self.name!r}>"


# An expression index, not a unique constraint on the column: PostgreSQL treats a column that a
# foreign key could reference as part of the row's key, and a rename would then lock the
# agency's row against every step writing a row that names it (docs/architecture.md, "Row
# locks let references through").
Index("uq_agencies_lower_name", func.lower(Agency.name), unique=True)
