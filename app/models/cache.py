"""Data versions: numbers that change whenever the data behind a cached figure changes."""

from __future__ import annotations

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

# The version the global dashboard's cache is keyed on: on SQLite, triggers bump it on every
# insert, update and delete of referrals, outcomes and operations (migration 0007).
DASHBOARDS = "dashboards"


class DataVersion(Base):
    __tablename__ = "data_versions"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
