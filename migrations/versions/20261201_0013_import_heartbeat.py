"""When a running web import last said it is alive: tip_imports.heartbeat_at, written every
half minute by the thread that runs it, so that a server which cannot see the import's process
(it runs on another server) can tell a stopped import from a running one within minutes
instead of hours.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.db import UTCDateTime

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('tip_imports', sa.Column('heartbeat_at', UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tip_imports', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
