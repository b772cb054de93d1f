"""Dashboards: one covering index on referrals (jurisdiction, sent_at, then every column the
dashboard figures read), which replaces the plain index on jurisdiction it starts with.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

COLUMNS = ['jurisdiction', 'sent_at', 'status', 'priority', 'sender_agency_id', 'receiver_agency_id',
           'operation_id', 'acknowledged_at', 'accepted_at', 'id']


def upgrade() -> None:
    with op.batch_alter_table('referrals') as batch_op:
        batch_op.create_index('ix_referrals_dashboard', COLUMNS, unique=False)
        batch_op.drop_index('ix_referrals_jurisdiction')


def downgrade() -> None:
    with op.batch_alter_table('referrals') as batch_op:
        batch_op.create_index('ix_referrals_jurisdiction', ['jurisdiction'], unique=False)
        batch_op.drop_index('ix_referrals_dashboard')
