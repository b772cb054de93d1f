"""Lean bulk writes for the tip pipeline and the scenario simulation.

A tip writes hundreds of thousands of rows in one transaction. The ORM would spend most of
the time on bookkeeping, so the big tables are written here: ids are reserved in blocks
(a PostgreSQL sequence; on SQLite the transaction holds the write lock, so `max(id)` is
safe), rows go in with the driver's `executemany` on SQLite and `COPY ... FROM STDIN` on
PostgreSQL, and audit entries are chained in Python and inserted in one statement.

Callers give values as the driver receives them: enum values as text, JSON as `json.dumps`
text (what SQLAlchemy's JSON type writes), other types through the column's own SQLAlchemy
bind processor (`converter` for a column's values, `db_value` for a constant, e.g.
`UTCDateTime`), so what lands in the database is exactly what the ORM would have written.
Nothing here commits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

from sqlalchemy import JSON, Connection, String, Table, bindparam, cast, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import AuditEntry, AuditHead
from app.services import audit
from app.services.audit import Actor


def dialect_name(session: Session) -> str:
    return session.get_bind().dialect.name


def db_value(session: Session, table: Table, column: str, value: Any) -> Any:
    """`value` as the driver receives it for this column (for constants of a bulk write)."""
    if value is None:
        return None
    processor = _bind_processor(table.c[column].type, session.get_bind().dialect)
    return processor(value) if processor else value


def _bind_processor(type_, dialect):
    # The dialect's own implementation (SQLite's DATETIME writes text in SQLAlchemy's format),
    # as compiled statements use it.
    return type_.dialect_impl(dialect).bind_processor(dialect)


def large_page_cache(session: Session, kib: int = 131_072):
    """On SQLite, a page cache big enough for the indexes a tip touches (128 MiB by default,
    instead of 2 MiB) for the duration of a bulk write. Random inserts into a large index
    otherwise spill pages all the time; 256 MiB was no faster for a full tip and cost 100 MB
    more of peak memory."""
    return sqlite_setting(session.connection(), "cache_size", -int(kib))


def waiting_for_the_write_lock(session: Session, seconds: float):
    """On SQLite, wait up to `seconds` (instead of a request's few) for the database's one write
    lock, which another import may hold while it writes. On PostgreSQL imports into one
    operation wait for each other by a row lock."""
    return sqlite_setting(session.connection(), "busy_timeout", int(seconds * 1000))


@contextmanager
def sqlite_setting(connection: Connection, name: str, value: int):
    """A PRAGMA of this SQLite connection set for a while and put back afterwards (nothing on
    another engine)."""
    if connection.dialect.name != "sqlite":
        yield
        return
    previous = connection.exec_driver_sql(f"PRAGMA {name}").scalar()
    connection.exec_driver_sql(f"PRAGMA {name} = {int(value)}")
    try:
        yield
    finally:
        connection.exec_driver_sql(f"PRAGMA {name} = {int(previous)}")


@contextmanager
def prepared_statements(session: Session):
    """On PostgreSQL, statements prepared on first use for the duration of a bulk write: the
    engine does not prepare them (app/db.py), so each row of an executemany would be parsed
    and planned again; the setting of the connection is restored afterwards."""
    if dialect_name(session) != "postgresql":
        yield
        return
    driver = session.connection().connection.driver_connection
    previous = driver.prepare_threshold
    driver.prepare_threshold = 0
    try:
        yield
    finally:
        driver.prepare_threshold = previous


@contextmanager
def without_jit(session: Session):
    """On PostgreSQL, no JIT compilation of plans for the duration of an import: its reads run
    on tables whose statistics predate the rows it has just written, so the planner expects
    millions of rows where there are a hundred and compiles the plan for them (a quarter of a
    second for the deconfliction query of a full tip, to run it in a tenth)."""
    if dialect_name(session) != "postgresql":
        yield
        return
    with _local_setting(session.connection(), "jit", "off"):
        yield


@contextmanager
def _local_setting(connection: Connection, name: str, value: str):
    """A PostgreSQL setting changed for this transaction only, and put back afterwards. Not
    after an error: the failed transaction, or savepoint, is rolled back, and that puts it back."""
    previous = connection.execute(text("SELECT current_setting(:name)"), {"name": name}).scalar()
    connection.execute(text("SELECT set_config(:name, :value, true)"), {"name": name, "value": value})
    yield
    connection.execute(text("SELECT set_config(:name, :value, true)"), {"name": name, "value": previous})


def analyze_grown(session: Session, added: Mapping[Table, int]) -> list[str]:
    """On PostgreSQL, ANALYZE each of these tables that this transaction grew by more than
    autovacuum waits for (50 rows and a tenth of what the planner thought it held), at once
    rather than a minute after the commit, or never where autovacuum is off. A follow-up tip's
    routing planned for the empty tables a full tip had just filled took 7 s instead of 0.1 s.
    Inside the transaction, so that the rows it wrote count. (A rollback undoes the column
    statistics but not the table's size estimate, which PostgreSQL writes in place: after a
    rolled-back import the planner expects too many rows until the next ANALYZE, which costs
    little.) ANALYZE locks each table against another ANALYZE until the commit: the caller
    takes its other locks first. Returns the tables analyzed."""
    if dialect_name(session) != "postgresql":
        return []
    connection = session.connection()
    estimates = dict(connection.execute(
        text("SELECT relname, reltuples FROM pg_class WHERE oid = ANY(CAST(:names AS regclass[]))"),
        {"names": [_qualified(connection, table) for table in added]}).all())
    grown = [table for table, rows in added.items()
             if rows > 50 + 0.1 * max(estimates.get(table.name, 0), 0)]  # reltuples is -1 until analyzed
    # A sample of 3,000 rows instead of 30,000: the sizes are what the next plans were missing,
    # and it costs a full tip 0.15 s instead of 0.7; autovacuum refines the rest later.
    with _local_setting(connection, "default_statistics_target", "10"):
        for table in grown:
            connection.exec_driver_sql(f"ANALYZE {_qualified(connection, table)}")
    return [table.name for table in grown]


def text_values(session: Session, name: str, values: Iterable[str]):
    """These strings as a one-column table (`.c.value`), bound as the one JSON parameter `name`:
    a set of any size in one statement on either engine, whatever the drivers' limits on the
    number of parameters."""
    param = bindparam(name, json.dumps(sorted(set(values))), type_=String)
    if dialect_name(session) == "postgresql":
        return func.json_array_elements_text(cast(param, JSON)).table_valued("value").render_derived(name)
    return func.json_each(param).table_valued("value").alias(name)


def allocate_ids(session: Session, table: Table, count: int) -> list[int]:
    """Reserve `count` primary keys of `table` for rows this transaction will insert."""
    if count <= 0:
        return []
    if dialect_name(session) == "postgresql":
        # The sequence's name looked up once: per row, the look-up costs 4 µs of the 5.
        sequence = session.execute(text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": table.name}).scalar()
        # One array rather than a row per id: 90,000 rows cost the client a tenth of a second.
        return session.execute(
            text("SELECT array_agg(id ORDER BY id) FROM"
                 " (SELECT nextval(CAST(:sequence AS regclass)) AS id FROM generate_series(1, :n)) AS reserved"),
            {"sequence": sequence, "n": count},
        ).scalar()
    # SQLite: take the write lock first (a write statement does, even one touching no row), so
    # no other connection can insert between reading max(id) and our inserts. Ids reserved
    # earlier in this transaction but not inserted yet are remembered on the session.
    session.execute(text(f"UPDATE {table.name} SET id = id WHERE 1 = 0"))
    reserved = session.info.setdefault("tips_reserved_ids", {})
    transaction = session.get_transaction()
    if reserved.get("transaction") is not transaction:
        reserved.clear()
        reserved["transaction"] = transaction
    start = max((session.execute(select(func.max(table.c.id))).scalar() or 0) + 1, reserved.get(table.name, 0))
    reserved[table.name] = start + count
    return list(range(start, start + count))


def insert_rows(session: Session, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
                constants: Mapping[str, Any] | None = None) -> int:
    """Insert rows (tuples in `columns` order), given as the driver expects them: plain
    str/int/bool/None, enum values as text; `converter` and `db_value` turn other values into
    that. `constants` are columns with the same value in every row (given the same way)."""
    session.flush()
    return write_checked(session.connection(), table, columns, rows, constants=constants)


class MissingReference(Exception):
    """A bulk write named a row that does not exist where a foreign key requires one."""


def write_checked(connection: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
                  constants: Mapping[str, Any] | None = None) -> int:
    """`write_raw` into `table`, its foreign keys checked once per distinct value instead of
    once per row where PostgreSQL lets this role do so.

    PostgreSQL checks a foreign key with a trigger that runs a query for every row written:
    1.5 million of them for a full tip, about 10 s, as long as writing the rows themselves.
    When the role may set `session_replication_role` (a superuser, or PostgreSQL 15's
    `GRANT SET ON PARAMETER`) and the table's only triggers are its foreign keys', the COPY
    runs with triggers off (as pg_restore's --disable-triggers does, for this statement only),
    and then each foreign key's distinct values are looked up in one statement that takes the
    trigger's lock (FOR KEY SHARE), so no referenced row can be deleted before the commit.
    All of it runs in a savepoint: a value with no row raises MissingReference and leaves
    nothing of the write behind, whatever the caller does next. Otherwise, and on SQLite, the
    database checks every row itself."""
    constants = dict(constants or {})
    references = _references(table, columns, constants)
    name = _qualified(connection, table)
    if references is None or not _may_skip_triggers(connection, table, name, references):
        return write_raw(connection, name, columns, rows, constants=constants)
    rows = rows if isinstance(rows, list) else list(rows)
    with connection.begin_nested():
        with _local_setting(connection, "session_replication_role", "replica"):
            count = write_raw(connection, name, columns, rows, constants=constants)
        for child, parent, position in references:
            values = {constants[child.name]} if position is None else set(map(itemgetter(position), rows))
            values.discard(None)
            if values:
                _lock_referenced(connection, table, child, parent, values)
    return count


def _qualified(connection: Connection, table: Table) -> str:
    """The table's name as SQL: quoted where it must be, with its schema if it has one."""
    return connection.dialect.identifier_preparer.format_table(table)


def _references(table: Table, columns: Sequence[str], constants: Mapping[str, Any]) -> list[tuple] | None:
    """(column, referenced column, its place in a row or None for a constant) for each foreign
    key of `table` that a write with these columns sets. None when a key cannot be checked per
    value: a key of several columns, or one left to a default that may name a row."""
    references = []
    for constraint in table.foreign_key_constraints:
        if len(constraint.elements) != 1:
            return None
        element = constraint.elements[0]
        child = element.parent
        if child.name in columns:
            references.append((child, element.column, list(columns).index(child.name)))
        elif child.name in constants:
            references.append((child, element.column, None))
        elif child.default is not None or child.server_default is not None:
            return None
    return references


def _may_skip_triggers(connection: Connection, table: Table, name: str, references: list[tuple]) -> bool:
    """PostgreSQL only: this role may turn triggers off; the table is a plain one whose every
    trigger belongs to one of its foreign keys (not a trigger of its own, nor a deferrable
    unique constraint's recheck), and whose foreign keys in the database are the ones the
    models declare; the tables they reference are plain ones too. The table is locked as the
    COPY would lock it first, so no trigger or key can be added before the commit."""
    if connection.dialect.name != "postgresql":
        return False
    if connection.dialect.server_version_info >= (15,):
        privileged = "has_parameter_privilege('session_replication_role', 'SET')"
    else:
        privileged = "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
    if not connection.exec_driver_sql(f"SELECT {privileged}").scalar():
        return False
    connection.exec_driver_sql(f"LOCK TABLE {name} IN ROW EXCLUSIVE MODE")
    parents = sorted({_qualified(connection, parent.table) for _child, parent, _position in references})
    return bool(connection.execute(text(
        "SELECT (SELECT relkind = 'r' AND NOT relhassubclass FROM pg_class WHERE oid = CAST(:table AS regclass))"
        " AND NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = CAST(:table AS regclass) AND NOT"
        "  (tgisinternal AND tgconstraint IN (SELECT oid FROM pg_constraint WHERE contype = 'f')))"
        " AND (SELECT count(*) FROM pg_constraint WHERE conrelid = CAST(:table AS regclass) AND contype = 'f')"
        "  = :declared"
        " AND NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = ANY(CAST(:parents AS regclass[]))"
        "  AND (relkind <> 'r' OR relhassubclass))"
    ), {"table": name, "declared": len(table.foreign_key_constraints), "parents": parents}).scalar())


def _lock_referenced(connection: Connection, table: Table, child, parent, values: set) -> None:
    """The referenced rows of these values, locked as a foreign-key trigger locks them; raises
    MissingReference when some value has none. The values are compared as the child column's
    type without its length or precision, as the trigger compares them (a cast to the parent's
    type could cut a value down to one that exists)."""
    value_type = re.sub(r"\(.*\)", "", child.type.compile(dialect=connection.dialect))
    column = connection.dialect.identifier_preparer.quote(parent.name)
    referenced = (f"SELECT {column} FROM ONLY {_qualified(connection, parent.table)}"
                  f" WHERE {column} = ANY(CAST(:values AS {value_type}[]))")
    parameters = {"values": sorted(values)}
    # Counted, not fetched: the values of a full tip's 90,000 holders cost the client a quarter
    # of a second to read back. They are read only to name the missing ones.
    locked = connection.execute(text(f"SELECT count(*) FROM ({referenced} FOR KEY SHARE) AS locked"),
                                parameters).scalar()
    if locked < len(values):
        present = {str(value) for value in connection.execute(text(referenced), parameters).scalars()}
        missing = sorted(str(value) for value in values if str(value) not in present)
        raise MissingReference(
            f"{table.name}.{child.name}: no row of {parent.table.name} has {parent.name} "
            f"{', '.join(missing[:5])}{' and more' if len(missing) > 5 else ''}"
        )


def write_raw(connection: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
              constants: Mapping[str, Any] | None = None) -> int:
    """Rows straight through the driver in the connection's transaction: `executemany` on
    SQLite, `COPY ... FROM STDIN` on PostgreSQL (also the benchmarks' baseline).

    On SQLite the `constants` are written into the statement once, as literals: the driver
    binds every parameter of every row anew, which costs about a third of a wide row's insert.
    COPY has no such place, so on PostgreSQL they are appended to each row."""
    constants = dict(constants or {})
    names = ", ".join(f'"{name}"' for name in (*columns, *constants))
    if connection.dialect.name == "postgresql":
        tail = tuple(constants.values())
        count = 0
        statement = f"COPY {table} ({names}) FROM STDIN"
        try:
            with connection.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row((*row, *tail) if tail else row)
                    count += 1
        except connection.dialect.loaded_dbapi.Error as error:  # as SQLAlchemy reports a failed statement
            raise DBAPIError.instance(statement, None, error, connection.dialect.loaded_dbapi.Error,
                                      dialect=connection.dialect) from error
        return count
    rows = rows if isinstance(rows, list) else list(rows)
    if rows:
        values = ", ".join(["?"] * len(columns) + [_sqlite_literal(value) for value in constants.values()])
        connection.exec_driver_sql(f"INSERT INTO {table} ({names}) VALUES ({values})", rows)
    return len(rows)


def _sqlite_literal(value: Any) -> str:
    """A driver value as an SQLite literal, stored exactly as the bound value would be. No
    floats: SQLite's reading of decimal text can land one unit in the last place away from the
    bound double."""
    if value is None:
        return "NULL"
    if isinstance(value, bool | int) and -2**63 <= value < 2**63:
        return str(int(value))
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("a constant of a bulk write cannot hold a NUL character")
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQLite literal for a constant of type {type(value).__name__}")


def converter(session: Session, table: Table, column: str, limit: int = 4096):
    """A function turning a (hashable) value of the column into what the driver receives (None
    stays None), remembering its first `limit` results: a tip's dates repeat (day precision),
    and converting each of 300,000 of them anew costs a second."""
    processor = _bind_processor(table.c[column].type, session.get_bind().dialect)
    if processor is None:
        return lambda value: value
    results: dict[Any, Any] = {None: None}

    def convert(value):
        result = results.get(value, _MISSING)
        if result is _MISSING:
            result = processor(value)
            if len(results) < limit:
                results[value] = result
        return result

    return convert


_MISSING = object()


def update_rows(session: Session, table: Table, key: str, rows: list[dict[str, Any]]) -> None:
    """UPDATE ... WHERE key = :key for each row (one executemany); every row has the same keys."""
    if not rows:
        return
    from sqlalchemy import bindparam

    columns = [name for name in rows[0] if name != key]
    statement = (
        update(table)
        .where(table.c[key] == bindparam(f"b_{key}"))
        .values({name: bindparam(f"b_{name}") for name in columns})
    )
    session.connection().execute(statement, [{f"b_{k}": v for k, v in row.items()} for row in rows])


def audit_many(session: Session, actor: Actor, entries: Sequence[tuple], *, address: str | None = None) -> None:
    """Append entries (action, object_type, object_id, detail[, actor]) to the audit trail,
    chained exactly as `audit.record` chains them (same fields, same hash), in a handful of
    statements. An entry's own actor, when given, replaces `actor` for it.

    The first entry goes through `audit.record` (it creates the chain's head if needed); the
    rest advance the head once, so concurrent writers still serialise on the head row."""
    if not entries:
        return
    first, rest = entries[0], entries[1:]
    action, object_type, object_id, detail, *own = first
    audit.record(session, own[0] if own else actor, action, object_type, object_id, detail=detail)
    if not rest:
        return
    head = session.execute(
        update(AuditHead).where(AuditHead.id == 1).values(seq=AuditHead.seq + len(rest))
        .returning(AuditHead.seq, AuditHead.last_hash)
    ).one()
    seq = head.seq - len(rest)
    prev_hash = head.last_hash
    at = utcnow().replace(microsecond=0)
    rows = []
    for action, object_type, object_id, detail, *own in rest:
        who = own[0] if own else actor
        seq += 1
        detail_text = detail if isinstance(detail, str) else json.dumps(detail or {}, sort_keys=True, default=str)
        fields = dict(
            seq=seq, at=at, user_id=who.user_id, agency_id=who.agency_id,
            address=who.address if address is None else address, action=action, object_type=object_type,
            object_id=None if object_id is None else str(object_id), outcome="success", detail=detail_text,
        )
        digest = audit.entry_hash(prev_hash, **fields)
        rows.append({**fields, "prev_hash": prev_hash, "hash": digest})
        prev_hash = digest
    for start in range(0, len(rows), 20_000):
        session.execute(insert(AuditEntry.__table__), rows[start:start + 20_000])
    session.execute(update(AuditHead).where(AuditHead.id == 1).values(last_hash=prev_hash))
