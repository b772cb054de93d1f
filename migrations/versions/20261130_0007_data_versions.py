"""Data versions: a table of numbers that change whenever the data behind a cached figure
changes. On SQLite, triggers bump the 'dashboards' version on every insert, update and
delete of referrals, outcomes and operations, whoever makes it (the app, an import, a bulk
statement); the global dashboard's cache is keyed on it. PostgreSQL computes the dashboards
within their targets and has no triggers.

A later migration that rebuilds one of these tables on SQLite (batch_alter_table copies it
into a new table) drops its triggers: it must create them again (see TRIGGERS below).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

WATCHED = ('referrals', 'outcomes', 'operations')
EVENTS = ('insert', 'update', 'delete')
# The first bump starts from a random number: a version row deleted and made again (a test
# emptying the tables) must not repeat a version an earlier cache entry was keyed on.
BUMP = """
CREATE TRIGGER {name} AFTER {event} ON {table}
BEGIN
    INSERT OR IGNORE INTO data_versions (name, version) VALUES ('dashboards', random() & 281474976710655);
    UPDATE data_versions SET version = version + 1 WHERE name = 'dashboards';
END
"""


def _trigger_name(table: str, event: str) -> str:
    return f'bump_dashboards_on_{event}_{table}'


def upgrade() -> None:
    op.create_table('data_versions',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_data_versions'))
    )
    if op.get_bind().dialect.name == 'sqlite':
        for table in WATCHED:
            for event in EVENTS:
                op.execute(BUMP.format(name=_trigger_name(table, event), event=event.upper(), table=table))


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        for table in WATCHED:
            for event in EVENTS:
                op.execute(f'DROP TRIGGER IF EXISTS {_trigger_name(table, event)}')
    op.drop_table('data_versions')
