"""Agency names unique whatever their case, by a unique index on lower(name) instead of a
unique constraint on the column. The app always refused a name differing from another only in
case; the database now refuses it too. On PostgreSQL a column under a plain unique constraint
is part of the row's key, so renaming an agency locked its row against every transaction
adding a row that names it (a referral, a history step), and a rename could deadlock with
them; an expression index is no key, and a rename now takes the same lock as any other edit.

SQLite drops a constraint by copying the table (alembic's batch mode); the environment turns
foreign keys off while migrations run, as SQLite asks for a table that others refer to, and
checks them all before it commits (migrations/env.py). Batch mode copies a SQLite table from
what SQLAlchemy reflects of it, which skips expression indexes: a later migration that copies
`agencies` must create this index again.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    clashes = op.get_bind().execute(sa.text(
        "SELECT lower(name) FROM agencies GROUP BY lower(name) HAVING count(*) > 1")).scalars().all()
    if clashes:
        raise RuntimeError("Agencies whose names differ only in case: " + ", ".join(sorted(clashes))
                           + ". Rename all but one of each, then migrate again.")
    with op.batch_alter_table('agencies', schema=None) as batch_op:
        batch_op.drop_constraint('uq_agencies_name', type_='unique')
    op.create_index('uq_agencies_lower_name', 'agencies', [sa.text('lower(name)')], unique=True)


def downgrade() -> None:
    op.drop_index('uq_agencies_lower_name', table_name='agencies')
    with op.batch_alter_table('agencies', schema=None) as batch_op:
        batch_op.create_unique_constraint('uq_agencies_name', ['name'])
