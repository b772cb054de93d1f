"""Users' e-mail addresses and agencies' names in the form the app now stores them: NFKC, so
that a full-width letter is the plain one (an address also in lower case, as sign-in looks it
up). Rows written before were stored as typed: an address with a full-width letter would no
longer be found at sign-in. Data only; no table changes.

Two rows that become the same address, or names the same but for case, refuse the migration,
naming them: rename or remove all but one of each, then migrate again. The old forms are not
kept, so the downgrade leaves the rows as they are.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def _email(address: str) -> str:
    return unicodedata.normalize("NFKC", address.strip()).lower()


def _name(name: str) -> str:
    return unicodedata.normalize("NFKC", name).strip()


def _normalise(table: str, column: str, form, clash_key) -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text(f"SELECT id, {column} FROM {table}")).all()
    keys = defaultdict(list)
    for row_id, value in rows:
        keys[clash_key(form(value))].append(value)
    clashes = sorted(" and ".join(repr(v) for v in values) for values in keys.values() if len(values) > 1)
    if clashes:
        raise RuntimeError(f"{table}.{column}: these would be the same once normalised: " + "; ".join(clashes)
                           + ". Rename or remove all but one of each, then migrate again.")
    changed = [{"row_id": row_id, "value": form(value)} for row_id, value in rows if form(value) != value]
    if changed:
        bind.execute(sa.text(f"UPDATE {table} SET {column} = :value WHERE id = :row_id"), changed)


def upgrade() -> None:
    _normalise("users", "email", _email, lambda email: email)
    _normalise("agencies", "name", _name, str.lower)


def downgrade() -> None:
    pass  # the forms typed before are not kept
