"""Matching: the index of referral_subjects by subject carries the referral too, so that a
match goes from an identifier's subject to its referrals without reading the table. It
replaces the index on subject_id alone.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_referral_subjects_subject_id_referral_id', 'referral_subjects',
                    ['subject_id', 'referral_id'], unique=False)
    op.drop_index('ix_referral_subjects_subject_id', table_name='referral_subjects')


def downgrade() -> None:
    op.create_index('ix_referral_subjects_subject_id', 'referral_subjects', ['subject_id'], unique=False)
    op.drop_index('ix_referral_subjects_subject_id_referral_id', table_name='referral_subjects')
