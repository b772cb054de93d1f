"""Deconfliction: subjects, identifiers, hits, notifications, common identifiers.

Subjects and their identifiers with match keys, hits with their matched identifiers,
notifications and their read cursors, and the identifiers marked common.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.db import UTCDateTime

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('common_identifiers',
    sa.Column('match_key', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.Enum('email', 'phone', 'username', 'account_id', 'ip', name='identifier_kind', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('platform', sa.String(length=32), nullable=True),
    sa.Column('value', sa.String(length=320), nullable=False),
    sa.Column('referral_count', sa.Integer(), nullable=False),
    sa.Column('marked_at', UTCDateTime(), nullable=False),
    sa.Column('updated_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('match_key', name=op.f('pk_common_identifiers'))
    )
    op.create_table('notification_cursors',
    sa.Column('user_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('last_seen_id', sa.Integer(), nullable=False),
    sa.Column('updated_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_notification_cursors_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_notification_cursors'))
    )
    op.create_table('subjects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('agency_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['agency_id'], ['agencies.id'], name=op.f('fk_subjects_agency_id_agencies')),
    sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name=op.f('fk_subjects_created_by_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subjects'))
    )
    with op.batch_alter_table('subjects', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_subjects_agency_id'), ['agency_id'], unique=False)

    op.create_table('hits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('referral_low_id', sa.Integer(), nullable=False),
    sa.Column('referral_high_id', sa.Integer(), nullable=False),
    sa.Column('agency_low_id', sa.Integer(), nullable=False),
    sa.Column('agency_high_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('new', 'acknowledged', 'resolved', name='hit_status', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('updated_at', UTCDateTime(), nullable=False),
    sa.Column('acknowledged_low_at', UTCDateTime(), nullable=True),
    sa.Column('acknowledged_low_by_id', sa.Integer(), nullable=True),
    sa.Column('acknowledged_high_at', UTCDateTime(), nullable=True),
    sa.Column('acknowledged_high_by_id', sa.Integer(), nullable=True),
    sa.Column('lead_agency_id', sa.Integer(), nullable=True),
    sa.Column('resolution_note', sa.String(length=1000), nullable=False),
    sa.Column('resolved_at', UTCDateTime(), nullable=True),
    sa.Column('resolved_by_id', sa.Integer(), nullable=True),
    sa.CheckConstraint('lead_agency_id IS NULL OR lead_agency_id = agency_low_id OR lead_agency_id = agency_high_id', name=op.f('ck_hits_lead_is_a_party')),
    sa.CheckConstraint('referral_low_id < referral_high_id', name=op.f('ck_hits_ordered_pair')),
    sa.ForeignKeyConstraint(['acknowledged_high_by_id'], ['users.id'], name=op.f('fk_hits_acknowledged_high_by_id_users')),
    sa.ForeignKeyConstraint(['acknowledged_low_by_id'], ['users.id'], name=op.f('fk_hits_acknowledged_low_by_id_users')),
    sa.ForeignKeyConstraint(['agency_high_id'], ['agencies.id'], name=op.f('fk_hits_agency_high_id_agencies')),
    sa.ForeignKeyConstraint(['agency_low_id'], ['agencies.id'], name=op.f('fk_hits_agency_low_id_agencies')),
    sa.ForeignKeyConstraint(['lead_agency_id'], ['agencies.id'], name=op.f('fk_hits_lead_agency_id_agencies')),
    sa.ForeignKeyConstraint(['referral_high_id'], ['referrals.id'], name=op.f('fk_hits_referral_high_id_referrals'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['referral_low_id'], ['referrals.id'], name=op.f('fk_hits_referral_low_id_referrals'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['resolved_by_id'], ['users.id'], name=op.f('fk_hits_resolved_by_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hits')),
    sa.UniqueConstraint('referral_low_id', 'referral_high_id', name='uq_hits_referral_pair')
    )
    with op.batch_alter_table('hits', schema=None) as batch_op:
        batch_op.create_index('ix_hits_agency_high_id_status', ['agency_high_id', 'status'], unique=False)
        batch_op.create_index('ix_hits_agency_low_id_status', ['agency_low_id', 'status'], unique=False)
        batch_op.create_index(batch_op.f('ix_hits_referral_high_id'), ['referral_high_id'], unique=False)

    op.create_table('identifiers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Enum('email', 'phone', 'username', 'account_id', 'ip', name='identifier_kind', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('platform', sa.String(length=32), nullable=True),
    sa.Column('raw', sa.String(length=320), nullable=False),
    sa.Column('value', sa.String(length=320), nullable=False),
    sa.Column('match_key', sa.String(length=64), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name=op.f('fk_identifiers_created_by_id_users')),
    sa.ForeignKeyConstraint(['subject_id'], ['subjects.id'], name=op.f('fk_identifiers_subject_id_subjects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_identifiers')),
    sa.UniqueConstraint('match_key', 'subject_id', name='uq_identifiers_match_key_subject_id')
    )
    with op.batch_alter_table('identifiers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_identifiers_subject_id'), ['subject_id'], unique=False)

    op.create_table('referral_subjects',
    sa.Column('referral_id', sa.Integer(), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=False),
    sa.Column('added_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['referral_id'], ['referrals.id'], name=op.f('fk_referral_subjects_referral_id_referrals'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['subject_id'], ['subjects.id'], name=op.f('fk_referral_subjects_subject_id_subjects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('referral_id', 'subject_id', name=op.f('pk_referral_subjects'))
    )
    with op.batch_alter_table('referral_subjects', schema=None) as batch_op:
        batch_op.create_index('ix_referral_subjects_subject_id', ['subject_id'], unique=False)

    op.create_table('hit_matches',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('hit_id', sa.Integer(), nullable=False),
    sa.Column('side', sa.Enum('low', 'high', name='hit_side', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('identifier_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Enum('email', 'phone', 'username', 'account_id', 'ip', name='identifier_kind', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('match_key', sa.String(length=64), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['hit_id'], ['hits.id'], name=op.f('fk_hit_matches_hit_id_hits'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['identifier_id'], ['identifiers.id'], name=op.f('fk_hit_matches_identifier_id_identifiers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hit_matches')),
    sa.UniqueConstraint('hit_id', 'side', 'identifier_id', name='uq_hit_matches_hit_side_identifier')
    )
    with op.batch_alter_table('hit_matches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hit_matches_identifier_id'), ['identifier_id'], unique=False)

    op.create_table('notifications',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('agency_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Enum('hit_new', 'hit_updated', 'hit_acknowledged', 'hit_resolved', name='notification_kind', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('hit_id', sa.Integer(), nullable=True),
    sa.Column('message', sa.String(length=500), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['agency_id'], ['agencies.id'], name=op.f('fk_notifications_agency_id_agencies')),
    sa.ForeignKeyConstraint(['hit_id'], ['hits.id'], name=op.f('fk_notifications_hit_id_hits'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications'))
    )
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.create_index('ix_notifications_agency_id_id', ['agency_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_notifications_hit_id'), ['hit_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notifications_hit_id'))
        batch_op.drop_index('ix_notifications_agency_id_id')

    op.drop_table('notifications')
    with op.batch_alter_table('hit_matches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hit_matches_identifier_id'))

    op.drop_table('hit_matches')
    with op.batch_alter_table('referral_subjects', schema=None) as batch_op:
        batch_op.drop_index('ix_referral_subjects_subject_id')

    op.drop_table('referral_subjects')
    with op.batch_alter_table('identifiers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_identifiers_subject_id'))

    op.drop_table('identifiers')
    with op.batch_alter_table('hits', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hits_referral_high_id'))
        batch_op.drop_index('ix_hits_agency_low_id_status')
        batch_op.drop_index('ix_hits_agency_high_id_status')

    op.drop_table('hits')
    with op.batch_alter_table('subjects', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_subjects_agency_id'))

    op.drop_table('subjects')
    op.drop_table('notification_cursors')
    op.drop_table('common_identifiers')
