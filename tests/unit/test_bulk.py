"""Bulk writes on PostgreSQL check foreign keys once per distinct value instead of once per
row: a missing parent is still refused, referenced rows are still locked until the commit,
and a role that may not turn triggers off, or a table with a trigger of its own, gets the
database's own per-row checks."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Column, ForeignKey, ForeignKeyConstraint, Integer, MetaData, String, Table, Text, \
    UniqueConstraint, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from app.services.tips import bulk


@pytest.fixture
def probe(pg_app):
    """(engine, parent table, child table): two real tables (other connections must see them)
    with parents 1 to 3 committed, dropped afterwards."""
    engine = pg_app.extensions["handoff_db"]["engine"]
    suffix = uuid.uuid4().hex[:8]
    metadata = MetaData()
    parent = Table(f"bulk_parent_{suffix}", metadata, Column("id", Integer, primary_key=True),
                   Column("code", String(4), unique=True))
    child = Table(f"bulk_child_{suffix}", metadata, Column("id", Integer, primary_key=True),
                  Column("parent_id", ForeignKey(parent.c.id)), Column("label", String(40)),
                  Column("code", Text, ForeignKey(parent.c.code)), Column("previous_id", ForeignKey(f"bulk_child_{suffix}.id")))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(parent.insert(), [{"id": 1, "code": "abcd"}, {"id": 2, "code": "efgh"}, {"id": 3, "code": None}])
    try:
        yield engine, parent, child
    finally:
        metadata.drop_all(engine)


def _children(engine, child) -> list[tuple]:
    """(id, parent_id, label) of every stored child row."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(
            select(child.c.id, child.c.parent_id, child.c.label).order_by(child.c.id))]


def test_rows_naming_existing_parents_are_written_and_a_missing_parent_is_refused(probe):
    engine, parent, child = probe
    with engine.begin() as conn:
        written = bulk.write_checked(conn, child, ("id", "parent_id"), [(1, 1), (2, 3), (3, 3), (4, None)],
                                     constants={"label": "first"})
    assert written == 4
    assert _children(engine, child) == [(1, 1, "first"), (2, 3, "first"), (3, 3, "first"), (4, None, "first")]

    with engine.connect() as conn, pytest.raises(bulk.MissingReference) as refused:
        with conn.begin():
            bulk.write_checked(conn, child, ("id", "parent_id", "label"), [(5, 2, "x"), (6, 9, "y"), (7, 8, "z")])
    assert f"{child.name}.parent_id" in str(refused.value) and "8, 9" in str(refused.value)
    with engine.connect() as conn, pytest.raises(bulk.MissingReference, match=f"no row of {parent.name} has id 7"):
        with conn.begin():
            bulk.write_checked(conn, child, ("id", "label"), [(8, "x")], constants={"parent_id": 7})
    assert [row[0] for row in _children(engine, child)] == [1, 2, 3, 4]  # nothing of the refused writes


def test_every_foreign_key_of_the_rows_is_checked_as_the_database_would(probe):
    engine, parent, child = probe
    with engine.begin() as conn:  # rows naming rows of the same write, and a parent by its code
        bulk.write_checked(conn, child, ("id", "previous_id", "code"), [(1, None, "abcd"), (2, 1, "efgh"), (3, 2, None)])
    assert [row[0] for row in _children(engine, child)] == [1, 2, 3]
    with engine.connect() as conn, pytest.raises(bulk.MissingReference, match=rf"{child.name}.previous_id: .* 9$"):
        with conn.begin():
            bulk.write_checked(conn, child, ("id", "parent_id", "previous_id"), [(4, 1, 3), (5, 2, 9)])
    # "abcdXYZ" is no code of a parent, though cut to the parent column's four characters it is.
    with engine.connect() as conn, pytest.raises(bulk.MissingReference, match="has code abcdXYZ"):
        with conn.begin():
            bulk.write_checked(conn, child, ("id", "code"), [(6, "abcdXYZ")])
    assert [row[0] for row in _children(engine, child)] == [1, 2, 3]


def test_a_refused_bulk_write_leaves_nothing_even_when_the_caller_commits(probe):
    engine, parent, child = probe
    with engine.connect() as conn:
        with conn.begin():
            bulk.write_checked(conn, child, ("id", "parent_id"), [(1, 1)])
            with pytest.raises(bulk.MissingReference):
                bulk.write_checked(conn, child, ("id", "parent_id"), [(2, 2), (3, 99)])
            assert conn.exec_driver_sql("SHOW session_replication_role").scalar() == "origin"
            bulk.write_checked(conn, child, ("id", "parent_id"), [(4, 3)])  # the transaction goes on
    assert _children(engine, child) == [(1, 1, None), (4, 3, None)]


def test_foreign_keys_are_checked_per_row_again_after_a_bulk_write(probe):
    engine, parent, child = probe
    with engine.connect() as conn:
        with conn.begin():
            bulk.write_checked(conn, child, ("id", "parent_id"), [(1, 1)])
            assert conn.exec_driver_sql("SHOW session_replication_role").scalar() == "origin"
        with pytest.raises(IntegrityError, match="foreign key"), conn.begin():
            conn.execute(child.insert().values(id=2, parent_id=99))


def test_a_referenced_parent_cannot_be_deleted_before_the_bulk_write_commits(probe):
    engine, parent, child = probe
    with engine.connect() as writer, engine.connect() as other:
        transaction = writer.begin()
        bulk.write_checked(writer, child, ("id", "parent_id"), [(1, 2)])
        with pytest.raises(OperationalError, match="lock timeout"), other.begin():
            other.exec_driver_sql("SET LOCAL lock_timeout = '300ms'")
            other.execute(parent.delete().where(parent.c.id == 2))
        with other.begin():  # a parent no row names goes at once
            other.execute(parent.delete().where(parent.c.id == 1))
        transaction.commit()
    assert _children(engine, child) == [(1, 2, None)]


def test_a_role_that_may_not_turn_triggers_off_has_every_row_checked_by_the_database(probe):
    engine, parent, child = probe
    role = f"bulk_probe_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} NOLOGIN")
        conn.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE ON {parent.name}, {child.name} TO {role}")
    try:
        with engine.connect() as conn:
            with conn.begin():
                conn.exec_driver_sql(f"SET LOCAL ROLE {role}")
                assert bulk.write_checked(conn, child, ("id", "parent_id"), [(1, 3), (2, 3)]) == 2
            with pytest.raises(IntegrityError, match="foreign key"), conn.begin():
                conn.exec_driver_sql(f"SET LOCAL ROLE {role}")
                bulk.write_checked(conn, child, ("id", "parent_id"), [(3, 1), (4, 9)])
        assert _children(engine, child) == [(1, 3, None), (2, 3, None)]
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")


def test_a_table_with_a_trigger_of_its_own_keeps_its_triggers(probe):
    engine, parent, child = probe
    with engine.begin() as conn:
        conn.execute(text(f"CREATE FUNCTION {child.name}_label() RETURNS trigger LANGUAGE plpgsql AS "
                          "$$ BEGIN NEW.label := 'set by trigger'; RETURN NEW; END $$"))
        conn.execute(text(f"CREATE TRIGGER label_rows BEFORE INSERT ON {child.name} "
                          f"FOR EACH ROW EXECUTE FUNCTION {child.name}_label()"))
    try:
        with engine.begin() as conn:
            bulk.write_checked(conn, child, ("id", "parent_id"), [(1, 1)])
        assert _children(engine, child) == [(1, 1, "set by trigger")]
        with engine.connect() as conn, pytest.raises(IntegrityError, match="foreign key"), conn.begin():
            bulk.write_checked(conn, child, ("id", "parent_id"), [(2, 9)])
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TRIGGER label_rows ON {child.name}"))
            conn.execute(text(f"DROP FUNCTION {child.name}_label()"))


def test_an_import_turns_jit_off_only_while_it_writes(pg_app):
    from app.extensions import db

    with pg_app.app_context():
        session = db.session
        before = session.execute(text("SHOW jit")).scalar()
        with bulk.without_jit(session):
            assert session.execute(text("SHOW jit")).scalar() == "off"
        assert session.execute(text("SHOW jit")).scalar() == before
        session.rollback()


def test_keys_of_several_columns_and_deferred_unique_checks_are_left_to_the_database(pg_app):
    engine = pg_app.extensions["handoff_db"]["engine"]
    suffix = uuid.uuid4().hex[:8]
    metadata = MetaData()
    pair = Table(f"bulk_pair_{suffix}", metadata, Column("a", Integer, primary_key=True),
                 Column("b", Integer, primary_key=True))
    by_pair = Table(f"bulk_by_pair_{suffix}", metadata, Column("id", Integer, primary_key=True),
                    Column("a", Integer), Column("b", Integer),
                    ForeignKeyConstraint(["a", "b"], [pair.c.a, pair.c.b]))
    deferred = Table(f"bulk_deferred_{suffix}", metadata, Column("id", Integer, primary_key=True),
                     Column("pair_a", Integer), UniqueConstraint("pair_a", deferrable=True, initially="DEFERRED"))
    metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(pair.insert().values(a=1, b=1))
        with engine.connect() as conn, pytest.raises(IntegrityError, match="foreign key"), conn.begin():
            bulk.write_checked(conn, by_pair, ("id", "a", "b"), [(1, 1, 1), (2, 1, 2)])
        # A deferrable unique constraint is checked by a trigger at the commit: it must fire.
        with engine.connect() as conn, pytest.raises(IntegrityError, match="duplicate key"), conn.begin():
            bulk.write_checked(conn, deferred, ("id", "pair_a"), [(1, 5), (2, 5)])
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(by_pair)).scalar() == 0
            assert conn.execute(select(func.count()).select_from(deferred)).scalar() == 0
    finally:
        metadata.drop_all(engine)


def test_a_transaction_that_grew_a_table_gives_the_planner_its_size_before_it_commits(probe):
    engine, parent, child = probe

    def planned_rows(conn, table) -> float:
        return conn.execute(text("SELECT reltuples FROM pg_class WHERE relname = :name"), {"name": table.name}).scalar()

    with engine.connect() as conn, conn.begin():
        session = Session(bind=conn)
        conn.execute(child.insert(), [{"id": i, "parent_id": 1} for i in range(1, 81)])
        assert planned_rows(conn, child) < 80  # what the planner would plan the next reads with
        assert bulk.analyze_grown(session, {child: 80, parent: 0}) == [child.name]
        assert planned_rows(conn, child) == 80
        # A few rows more than it knows of are not worth a new look, as autovacuum would judge.
        conn.execute(child.insert(), [{"id": i, "parent_id": 2} for i in range(81, 101)])
        assert bulk.analyze_grown(session, {child: 20}) == []
