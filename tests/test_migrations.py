"""The migrations build the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
import warnings

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SAWarning

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
        if conn.dialect.name != "sqlite":
            diff = compare_metadata(context, Base.metadata)
        else:
            # SQLAlchemy does not reflect SQLite's expression indexes, so the comparison skips
            # them: each is looked for by name instead.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index",
                                        SAWarning)
                warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression-based index")
                diff = compare_metadata(context, Base.metadata)
            present = set(conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index'").scalars())
            diff += [("missing expression index", name) for name in sorted(_expression_indexes() - present)]
    engine.dispose()
    return diff


def _expression_indexes() -> set[str]:
    return {index.name for table in Base.metadata.tables.values() for index in table.indexes
            if not all(isinstance(part, Column) for part in index.expressions)}


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


def test_agency_names_are_unique_whatever_their_case(empty_database):
    command.upgrade(alembic_config(empty_database), "head")
    engine = create_engine(empty_database)
    insert = text("INSERT INTO agencies (name, kind, desk_email, desk_phone, timezone, is_focal_point, created_at) "
                  "VALUES (:name, 'police', 'desk@example.org', '+64 4 555 0100', 'UTC', false, '2026-12-01')")
    with engine.connect() as conn:
        conn.execute(insert, {"name": "Alpha Police"})
        with pytest.raises(IntegrityError):
            conn.execute(insert, {"name": "ALPHA police"})
    engine.dispose()


def test_a_missing_expression_index_would_be_noticed(empty_database):
    command.upgrade(alembic_config(empty_database), "head")
    engine = create_engine(empty_database)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX uq_agencies_lower_name"))
    engine.dispose()
    assert _diff(empty_database) != []


# An agency as a migration test writes it, below the models (`id`, `name`).
AGENCY_ROW = ("INSERT INTO agencies (id, name, kind, desk_email, desk_phone, timezone, is_focal_point, created_at) "
              "VALUES (:id, :name, 'police', 'desk@example.org', '+64 4 555 0100', 'UTC', true, '2026-12-01')")


def test_agencies_copied_on_sqlite_keep_the_rows_that_refer_to_them(empty_database):
    """0014 copies `agencies` on SQLite (its name's constraint cannot be dropped in place): the
    users and operations naming an agency keep it, and its foreign keys hold afterwards."""
    config = alembic_config(empty_database)
    command.upgrade(config, "0013")
    engine = create_engine(empty_database)
    with engine.begin() as conn:
        conn.execute(text(AGENCY_ROW), {"id": 7, "name": "Alpha Police"})
        conn.execute(text("INSERT INTO operations (code, lead_agency_id, opened_on, description, created_at) "
                          "VALUES ('OP-1', 7, '2026-12-01', '', '2026-12-01')"))
    command.upgrade(config, "head")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT a.name FROM operations o JOIN agencies a ON a.id = o.lead_agency_id")
                            ).scalar_one() == "Alpha Police"
        if conn.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
    engine.dispose()
    assert _diff(empty_database) == []


def test_common_identifiers_keep_their_counts_as_case_count(empty_database):
    """0015 renames common_identifiers.referral_count to case_count; the marks keep their
    counts, both ways."""
    config = alembic_config(empty_database)
    command.upgrade(config, "0014")
    engine = create_engine(empty_database)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO common_identifiers (match_key, kind, platform, value, referral_count, "
                          "marked_at, updated_at) VALUES ('k1', 'ip', NULL, '192.0.2.1', 7, '2026-12-01', "
                          "'2026-12-01')"))
    command.upgrade(config, "head")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT case_count FROM common_identifiers")).scalar_one() == 7
    engine.dispose()
    command.downgrade(config, "0014")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT referral_count FROM common_identifiers")).scalar_one() == 7
    engine.dispose()


def test_addresses_and_agency_names_are_stored_nfkc_and_clashes_refuse_the_migration(empty_database):
    """0016 rewrites what was stored as typed in the form the app stores now (a full-width
    letter as the plain one), and refuses, naming them, rows that would become one."""
    config = alembic_config(empty_database)
    command.upgrade(config, "0015")
    engine = create_engine(empty_database)
    user = ("INSERT INTO users (id, email, name, password_hash, role, agency_id, is_active, timezone, created_at, "
            "failed_logins, password_changed_at) VALUES (:id, :email, 'U', '-', 'viewer', 7, true, 'UTC', "
            "'2026-12-01', 0, '2026-12-01')")
    with engine.begin() as conn:
        conn.execute(text(AGENCY_ROW), {"id": 7, "name": "\uff37ellington Unit"})
        conn.execute(text(user), {"id": 1, "email": "\uff55ser@Example.org"})
        conn.execute(text(user), {"id": 2, "email": "user@example.org"})
    with pytest.raises(RuntimeError, match="would be the same once normalised"):
        command.upgrade(config, "0016")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM users WHERE id = 2"))
    command.upgrade(config, "head")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT email FROM users")).scalar_one() == "user@example.org"
        assert conn.execute(text("SELECT name FROM agencies")).scalar_one() == "Wellington Unit"
    engine.dispose()
