"""Tip imports in the background: one record per import started from the web page, with its
progress while it runs and its outcome afterwards. A new table only.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.db import UTCDateTime

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tip_imports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('operation_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('file_name', sa.String(length=255), nullable=False),
    sa.Column('skip_invalid', sa.Boolean(), nullable=False),
    sa.Column('status', sa.Enum('running', 'done', 'rejected', 'failed', name='tip_import_status',
                                native_enum=False, create_constraint=True), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=False),
    sa.Column('done', sa.Integer(), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('tip_id', sa.Integer(), nullable=True),
    sa.Column('summary', sa.JSON(), nullable=True),
    sa.Column('message', sa.String(length=1000), nullable=False),
    sa.Column('errors', sa.JSON(), nullable=True),
    sa.Column('error_count', sa.Integer(), nullable=False),
    sa.Column('reject_csv', sa.Text(), nullable=True),
    sa.Column('started_at', UTCDateTime(), nullable=False),
    sa.Column('finished_at', UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['operation_id'], ['operations.id'], name=op.f('fk_tip_imports_operation_id_operations')),
    sa.ForeignKeyConstraint(['tip_id'], ['tips.id'], name=op.f('fk_tip_imports_tip_id_tips')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_tip_imports_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tip_imports'))
    )
    with op.batch_alter_table('tip_imports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tip_imports_user_id'), ['user_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('tip_imports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tip_imports_user_id'))
    op.drop_table('tip_imports')
