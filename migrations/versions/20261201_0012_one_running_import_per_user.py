"""One running web import per person: a partial unique index on tip_imports(user_id) where
the status is 'running', so that two uploads at once (a double click) cannot both start one.
Imports recorded as running beside a later running one of the same person (none should be)
are marked failed first, as interrupted, so that the index can be built.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

RUNNING = sa.text("status = 'running'")


def upgrade() -> None:
    op.execute(
        "UPDATE tip_imports SET status = 'failed', message = 'The import stopped when the server process running "
        "it stopped, and wrote nothing. Upload the file again.', finished_at = started_at "
        "WHERE status = 'running' AND id NOT IN "
        "(SELECT max(id) FROM tip_imports WHERE status = 'running' GROUP BY user_id)"
    )
    op.create_index('uq_tip_imports_running_user_id', 'tip_imports', ['user_id'], unique=True,
                    sqlite_where=RUNNING, postgresql_where=RUNNING)


def downgrade() -> None:
    op.drop_index('uq_tip_imports_running_user_id', table_name='tip_imports')
