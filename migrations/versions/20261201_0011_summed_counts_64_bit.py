"""Grade counts summed over a tip's accounts (tip_holders, referrals) as 64-bit integers on
PostgreSQL: a holder's or a package's sum can pass 2^31. SQLite's INTEGER is 64-bit already,
so nothing changes there (and its tables are not copied).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

COLUMNS = [(table, f'grade_{grade}') for table in ('referrals', 'tip_holders') for grade in 'abc']


def upgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        return
    for table, column in COLUMNS:
        op.alter_column(table, column, existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        return
    for table, column in COLUMNS:
        op.alter_column(table, column, existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
