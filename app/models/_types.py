"""Column helpers shared by the models."""

from __future__ import annotations

import enum
from typing import TypeVar

from sqlalchemy import Enum

E = TypeVar("E", bound=enum.Enum)


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
