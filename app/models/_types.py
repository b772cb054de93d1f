"""Column helpers shared by the models."""

from __future__ import annotations

import enum
from typing import TypeVar

from sqlalchemy import BigInteger, Enum, Integer

E = TypeVar("E", bound=enum.Enum)

# A grade count summed over many accounts (a holder's, a package referral's): a tip's counts
# can pass 2^31 summed, so 64-bit on PostgreSQL; SQLite's INTEGER is 64-bit already.
SUMMED_COUNT = BigInteger().with_variant(Integer(), "sqlite")


def enum_column(enum_cls: type[E], name: str) -> Enum:
    """A non-native enum stored as its values, guarded by a named CHECK constraint.

    Native enums cannot be diffed by alembic and differ between SQLite and PostgreSQL.
    """
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=max(len(m.value) for m in enum_cls),
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )
