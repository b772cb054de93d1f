"""Notifications about referrals, and the process behind a background import.

- notifications.referral_id (nullable, indexed, cascades with its referral) and the kind
  'priority_raised': a sent referral made more urgent tells its receiving agency.
- tip_imports.runner: which process runs an import, so that one whose process stopped shows
  as interrupted instead of running for ever.

On SQLite the notifications table is copied (batch mode) to change its kind CHECK constraint.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

HIT_KINDS = ('hit_new', 'hit_updated', 'hit_acknowledged', 'hit_resolved')


def _kind(*values: str) -> sa.Enum:
    return sa.Enum(*values, name='notification_kind', native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.alter_column('kind', existing_type=_kind(*HIT_KINDS), type_=_kind(*HIT_KINDS, 'priority_raised'),
                              existing_nullable=False)
        batch_op.add_column(sa.Column('referral_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_notifications_referral_id_referrals'), 'referrals',
                                    ['referral_id'], ['id'], ondelete='CASCADE')
        batch_op.create_index(batch_op.f('ix_notifications_referral_id'), ['referral_id'], unique=False)
    with op.batch_alter_table('tip_imports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('runner', sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tip_imports', schema=None) as batch_op:
        batch_op.drop_column('runner')
    op.execute("DELETE FROM notifications WHERE kind = 'priority_raised'")
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notifications_referral_id'))
        batch_op.drop_constraint(batch_op.f('fk_notifications_referral_id_referrals'), type_='foreignkey')
        batch_op.drop_column('referral_id')
        batch_op.alter_column('kind', existing_type=_kind(*HIT_KINDS, 'priority_raised'), type_=_kind(*HIT_KINDS),
                              existing_nullable=False)
