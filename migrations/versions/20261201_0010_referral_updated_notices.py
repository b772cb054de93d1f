"""Notifications of the kind 'referral_updated': an import added accounts to a holder on a
sent referral, or a merged holder joined one, and its receiving agency is told.

On SQLite the notifications table is copied (batch mode) to change its kind CHECK constraint.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

KINDS = ('hit_new', 'hit_updated', 'hit_acknowledged', 'hit_resolved', 'priority_raised')


def _kind(*values: str) -> sa.Enum:
    return sa.Enum(*values, name='notification_kind', native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.alter_column('kind', existing_type=_kind(*KINDS), type_=_kind(*KINDS, 'referral_updated'),
                              existing_nullable=False)


def downgrade() -> None:
    op.execute("DELETE FROM notifications WHERE kind = 'referral_updated'")
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.alter_column('kind', existing_type=_kind(*KINDS, 'referral_updated'), type_=_kind(*KINDS),
                              existing_nullable=False)
