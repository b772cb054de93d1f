"""Database plumbing: declarative base, UTC datetime type, one engine and session per app.

The request commits once: views and services only flush; `commit_request` runs after a
successful response and the session is always closed (rolled back if not committed) at
teardown.
"""

from __future__ import annotations

import functools
from datetime import datetime, timezone

from flask import Flask, current_app, g
from sqlalchemy import DateTime, MetaData, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def dialect_insert(session: Session, table):
    """INSERT for the session's engine, with its ON CONFLICT clauses (upserts)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - the two supported engines
        raise RuntimeError(f"Unsupported database {name!r}")
    return insert(table)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC.

    SQLite has no time zone support and `DateTime(timezone=True)` would silently drop
    offsets there, so every value is converted to UTC before it is stored.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc)


def _sqlite_pragmas(busy_timeout_ms: int, dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.close()


def make_engine(url: str, echo: bool = False, busy_timeout_ms: int = 10_000) -> Engine:
    # psycopg prepares a statement after five runs, and PostgreSQL then reuses a generic plan.
    # The same statement serves a blind check of 10 keys and a tip of 150,000, a country of
    # twelve referrals and one of fifteen thousand: one plan fits neither, so statements are
    # not prepared and each run is planned for its parameters. (Forcing custom plans server-side
    # instead would also re-plan the foreign-key check of every row a bulk insert writes.)
    is_postgresql = url.startswith("postgresql")
    engine = create_engine(url, echo=echo, future=True,
                           connect_args={"prepare_threshold": None} if is_postgresql else {})
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", functools.partial(_sqlite_pragmas, busy_timeout_ms))
    return engine


class Database:
    """Binds an engine and a session factory to each app (the init_app pattern)."""

    def init_app(self, app: Flask) -> None:
        engine = make_engine(app.config["DATABASE_URL"], echo=app.config.get("SQL_ECHO", False),
                             busy_timeout_ms=app.config.get("SQLITE_BUSY_TIMEOUT_MS", 10_000))
        app.extensions["handoff_db"] = {
            "engine": engine,
            "sessionmaker": sessionmaker(bind=engine, expire_on_commit=False),
        }
        app.teardown_appcontext(self._close_session)

    @property
    def engine(self) -> Engine:
        return current_app.extensions["handoff_db"]["engine"]

    @property
    def session(self) -> Session:
        """The session of the current app context, created on first use."""
        if "db_session" not in g:
            g.db_session = current_app.extensions["handoff_db"]["sessionmaker"]()
        return g.db_session

    def commit_request(self) -> None:
        if "db_session" in g:
            g.db_session.commit()

    @staticmethod
    def _close_session(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()  # anything not committed is rolled back here
