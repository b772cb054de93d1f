"""The migrations build the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

import app.models  # noqa: F401
from app.db import Base
from migrations.config import alembic_config
from tests.conftest import PG_SKIP_REASON


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path):
    if request.param == "sqlite":
        yield "sqlite:///" + str(tmp_path / "fresh.db")
        return
    server = os.environ.get("TEST_DATABASE_URL")
    if not server:
        pytest.skip(PG_SKIP_REASON)
    name = f"handoff_mig_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(server).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _diff(url: str):
    engine = create_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    return diff


def test_upgrade_from_empty_matches_the_models(empty_database):
    command.upgrade(alembic_config(empty_database), "head")
    assert _diff(empty_database) == []


def test_downgrade_to_base_and_up_again(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    engine = create_engine(empty_database)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    command.upgrade(config, "head")
    assert _diff(empty_database) == []


def test_drift_would_be_noticed(empty_database):
    """The comparison is not blind: a model column the migrations lack shows up."""
    from sqlalchemy import Column, Integer

    command.upgrade(alembic_config(empty_database), "head")
    table = Base.metadata.tables["agencies"]
    extra = Column("not_migrated", Integer)
    table.append_column(extra)
    try:
        assert any(d[0] == "add_column" for d in _diff(empty_database))
    finally:
        table._columns.remove(extra)
