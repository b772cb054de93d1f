"""Common identifiers count cases, not referrals: common_identifiers.referral_count is renamed
case_count. A key is common when more cases than the threshold hold it, a case being a
referral and the referrals its transfers made; the column has held that count since the
matching counted by case, and its name said otherwise. The values stay as they are.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('common_identifiers', schema=None) as batch_op:
        batch_op.alter_column('referral_count', new_column_name='case_count')


def downgrade() -> None:
    with op.batch_alter_table('common_identifiers', schema=None) as batch_op:
        batch_op.alter_column('case_count', new_column_name='referral_count')
