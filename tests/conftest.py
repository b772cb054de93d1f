"""Fixtures: a database per engine for the whole run, emptied after every test.

SQLite always runs. PostgreSQL runs when TEST_DATABASE_URL names a server: the run creates
a database of its own there and drops it at the end.
"""

from __future__ import annotations

import os
import re
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app import create_app
from app.cli import upgrade_database
from app.db import Base
from app.extensions import db as app_db

PG_SKIP_REASON = "TEST_DATABASE_URL is not set: PostgreSQL tests skipped (.ci/run sets it)"


@pytest.fixture(scope="session")
def database_urls(tmp_path_factory):
    urls = {"sqlite": "sqlite:///" + str(tmp_path_factory.mktemp("db") / "handoff.db")}
    upgrade_database(urls["sqlite"])
    server_url = os.environ.get("TEST_DATABASE_URL")
    admin_engine = None
    if server_url:
        name = f"handoff_test_{uuid.uuid4().hex[:10]}"
        admin_engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
        with admin_engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        urls["postgresql"] = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        upgrade_database(urls["postgresql"])
    yield urls
    if admin_engine is not None:
        with admin_engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin_engine.dispose()


def _empty_all_tables(engine) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE " + ", ".join(tables) + " RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))


def _make_app(url: str, **overrides):
    config = {"DATABASE_URL": url}
    config.update(overrides)
    app = create_app(config, config_name="testing")
    return app


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_name(request, database_urls):
    if request.param not in database_urls:
        pytest.skip(PG_SKIP_REASON)
    return request.param


def _app_for(url):
    app = _make_app(url)
    yield app
    engine = app.extensions["handoff_db"]["engine"]
    _empty_all_tables(engine)
    engine.dispose()


@pytest.fixture
def app(database_urls):
    """The app on SQLite (web tests)."""
    yield from _app_for(database_urls["sqlite"])


@pytest.fixture
def any_app(engine_name, database_urls):
    """The app on each engine in turn (domain tests that must hold on both)."""
    yield from _app_for(database_urls[engine_name])


@pytest.fixture
def pg_app(database_urls):
    if "postgresql" not in database_urls:
        pytest.skip(PG_SKIP_REASON)
    yield from _app_for(database_urls["postgresql"])


@pytest.fixture
def session(any_app):
    with any_app.app_context():
        yield app_db.session


@pytest.fixture
def world(any_app, session):
    from tests.factories import build_world

    return build_world(session, any_app.extensions["handoff_passwords"])


def committed_world(app):
    """The test world built and committed, for tests that go through requests."""
    from tests.factories import build_world

    with app.app_context():
        world = build_world(app_db.session, app.extensions["handoff_passwords"])
        app_db.session.commit()
    return world


@pytest.fixture
def web_world(app):
    return committed_world(app)


@pytest.fixture
def client(app):
    return app.test_client()


CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def csrf_token_from(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


class Browser:
    """A test client that signs in and submits forms with their CSRF token, like a person."""

    def __init__(self, client):
        self.client = client

    def token(self, path: str = "/login") -> str:
        return csrf_token_from(self.client.get(path).get_data(as_text=True))

    def login(self, email: str, password: str = "correct-horse-battery", next_path: str | None = None):
        url = "/login" + (f"?next={next_path}" if next_path else "")
        return self.client.post(url, data={"email": email, "password": password, "csrf_token": self.token()})

    def get(self, path: str, **kwargs):
        return self.client.get(path, **kwargs)

    def post(self, path: str, data: dict | None = None, token_from: str = "/referrals", **kwargs):
        payload = dict(data or {})
        payload.setdefault("csrf_token", self.token(token_from))
        return self.client.post(path, data=payload, **kwargs)


@pytest.fixture
def browser(client):
    return Browser(client)


def pytest_report_header(config):
    if os.environ.get("TEST_DATABASE_URL"):
        return "engines: SQLite and PostgreSQL (a fresh database on TEST_DATABASE_URL's server, dropped afterwards)"
    return f"engines: SQLite only; {PG_SKIP_REASON}"
