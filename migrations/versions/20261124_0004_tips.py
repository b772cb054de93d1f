"""Provider tips: imports of tip files, their accounts (natural key: operation, platform and
normalised account id), the account holders found behind them (each also a subject), and the
identifiers common in an operation. New tables only: no existing table changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.db import UTCDateTime

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tip_common_identifiers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('operation_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Enum('email', 'phone', 'username', 'account_id', 'ip', name='identifier_kind', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('platform', sa.String(length=32), nullable=False),
    sa.Column('value', sa.String(length=320), nullable=False),
    sa.Column('accounts', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['operation_id'], ['operations.id'], name=op.f('fk_tip_common_identifiers_operation_id_operations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tip_common_identifiers')),
    sa.UniqueConstraint('operation_id', 'kind', 'platform', 'value', name='uq_tip_common_identifiers_key')
    )
    with op.batch_alter_table('tip_common_identifiers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tip_common_identifiers_operation_id'), ['operation_id'], unique=False)

    op.create_table('tips',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('operation_id', sa.Integer(), nullable=False),
    sa.Column('agency_id', sa.Integer(), nullable=False),
    sa.Column('imported_by_id', sa.Integer(), nullable=True),
    sa.Column('file_name', sa.String(length=255), nullable=False),
    sa.Column('file_sha256', sa.String(length=64), nullable=False),
    sa.Column('file_format', sa.Enum('csv', 'jsonl', name='tip_format', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('accepted', sa.Integer(), nullable=False),
    sa.Column('rejected', sa.Integer(), nullable=False),
    sa.Column('new_accounts', sa.Integer(), nullable=False),
    sa.Column('known_accounts', sa.Integer(), nullable=False),
    sa.Column('new_holders', sa.Integer(), nullable=False),
    sa.Column('joined_holders', sa.Integer(), nullable=False),
    sa.Column('merged_holders', sa.Integer(), nullable=False),
    sa.Column('drafts_created', sa.Integer(), nullable=False),
    sa.Column('imported_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['agency_id'], ['agencies.id'], name=op.f('fk_tips_agency_id_agencies')),
    sa.ForeignKeyConstraint(['imported_by_id'], ['users.id'], name=op.f('fk_tips_imported_by_id_users')),
    sa.ForeignKeyConstraint(['operation_id'], ['operations.id'], name=op.f('fk_tips_operation_id_operations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tips'))
    )
    with op.batch_alter_table('tips', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tips_operation_id'), ['operation_id'], unique=False)

    op.create_table('tip_holders',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('operation_id', sa.Integer(), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('accounts', sa.Integer(), nullable=False),
    sa.Column('grade_a', sa.Integer(), nullable=False),
    sa.Column('grade_b', sa.Integer(), nullable=False),
    sa.Column('grade_c', sa.Integer(), nullable=False),
    sa.Column('risk_access_to_children', sa.Boolean(), nullable=False),
    sa.Column('risk_position_of_authority', sa.Boolean(), nullable=False),
    sa.Column('risk_previous_convictions', sa.Boolean(), nullable=False),
    sa.Column('risk_plans_to_meet', sa.Boolean(), nullable=False),
    sa.Column('risk_contact_offending', sa.Boolean(), nullable=False),
    sa.Column('priority', sa.Enum('P1', 'P2', 'P3', 'P4', name='holder_priority', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('jurisdiction', sa.String(length=2), nullable=True),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.Column('needs_review', sa.Boolean(), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('jurisdiction_source', sa.Enum('evidence', 'manual', name='jurisdiction_source', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('jurisdiction_set_by_id', sa.Integer(), nullable=True),
    sa.Column('jurisdiction_set_at', UTCDateTime(), nullable=True),
    sa.Column('routing', sa.Enum('focal_point', 'international', 'own_agency', 'unplaced', 'no_receiver', name='holder_routing', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('receiver_agency_id', sa.Integer(), nullable=True),
    sa.Column('referral_id', sa.Integer(), nullable=True),
    sa.Column('packaged', sa.Boolean(), nullable=False),
    sa.Column('merged_into_id', sa.Integer(), nullable=True),
    sa.Column('merged_at', UTCDateTime(), nullable=True),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('updated_at', UTCDateTime(), nullable=False),
    sa.CheckConstraint('grade_a >= 0 AND grade_b >= 0 AND grade_c >= 0', name=op.f('ck_tip_holders_grades_not_negative')),
    sa.ForeignKeyConstraint(['jurisdiction_set_by_id'], ['users.id'], name=op.f('fk_tip_holders_jurisdiction_set_by_id_users')),
    sa.ForeignKeyConstraint(['merged_into_id'], ['tip_holders.id'], name=op.f('fk_tip_holders_merged_into_id_tip_holders')),
    sa.ForeignKeyConstraint(['operation_id'], ['operations.id'], name=op.f('fk_tip_holders_operation_id_operations')),
    sa.ForeignKeyConstraint(['receiver_agency_id'], ['agencies.id'], name=op.f('fk_tip_holders_receiver_agency_id_agencies')),
    sa.ForeignKeyConstraint(['referral_id'], ['referrals.id'], name=op.f('fk_tip_holders_referral_id_referrals'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['subject_id'], ['subjects.id'], name=op.f('fk_tip_holders_subject_id_subjects')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tip_holders')),
    sa.UniqueConstraint('operation_id', 'number', name='uq_tip_holders_operation_id_number'),
    sa.UniqueConstraint('subject_id', name=op.f('uq_tip_holders_subject_id'))
    )
    with op.batch_alter_table('tip_holders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tip_holders_merged_into_id'), ['merged_into_id'], unique=False)
        batch_op.create_index('ix_tip_holders_operation_id_needs_review', ['operation_id', 'needs_review'], unique=False)
        batch_op.create_index('ix_tip_holders_operation_id_routing', ['operation_id', 'routing'], unique=False)
        batch_op.create_index(batch_op.f('ix_tip_holders_referral_id'), ['referral_id'], unique=False)

    op.create_table('tip_accounts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('operation_id', sa.Integer(), nullable=False),
    sa.Column('tip_id', sa.Integer(), nullable=False),
    sa.Column('holder_id', sa.Integer(), nullable=False),
    sa.Column('line', sa.Integer(), nullable=False),
    sa.Column('platform', sa.String(length=32), nullable=False),
    sa.Column('account_id', sa.String(length=320), nullable=False),
    sa.Column('account_key', sa.String(length=320), nullable=False),
    sa.Column('username', sa.String(length=320), nullable=True),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('phone', sa.String(length=32), nullable=True),
    sa.Column('ip_addresses', sa.String(length=2000), nullable=False),
    sa.Column('country_hint', sa.String(length=2), nullable=True),
    sa.Column('ip_country', sa.String(length=2), nullable=True),
    sa.Column('uploads_a', sa.Integer(), nullable=False),
    sa.Column('uploads_b', sa.Integer(), nullable=False),
    sa.Column('uploads_c', sa.Integer(), nullable=False),
    sa.Column('first_seen', UTCDateTime(), nullable=True),
    sa.Column('last_seen', UTCDateTime(), nullable=True),
    sa.CheckConstraint('uploads_a >= 0 AND uploads_b >= 0 AND uploads_c >= 0', name=op.f('ck_tip_accounts_uploads_not_negative')),
    sa.ForeignKeyConstraint(['holder_id'], ['tip_holders.id'], name=op.f('fk_tip_accounts_holder_id_tip_holders')),
    sa.ForeignKeyConstraint(['operation_id'], ['operations.id'], name=op.f('fk_tip_accounts_operation_id_operations')),
    sa.ForeignKeyConstraint(['tip_id'], ['tips.id'], name=op.f('fk_tip_accounts_tip_id_tips')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tip_accounts')),
    sa.UniqueConstraint('operation_id', 'platform', 'account_key', name='uq_tip_accounts_natural_key')
    )
    with op.batch_alter_table('tip_accounts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tip_accounts_holder_id'), ['holder_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_tip_accounts_tip_id'), ['tip_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('tip_accounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tip_accounts_tip_id'))
        batch_op.drop_index(batch_op.f('ix_tip_accounts_holder_id'))

    op.drop_table('tip_accounts')
    with op.batch_alter_table('tip_holders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tip_holders_referral_id'))
        batch_op.drop_index('ix_tip_holders_operation_id_routing')
        batch_op.drop_index('ix_tip_holders_operation_id_needs_review')
        batch_op.drop_index(batch_op.f('ix_tip_holders_merged_into_id'))

    op.drop_table('tip_holders')
    with op.batch_alter_table('tips', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tips_operation_id'))

    op.drop_table('tips')
    with op.batch_alter_table('tip_common_identifiers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tip_common_identifiers_operation_id'))

    op.drop_table('tip_common_identifiers')
