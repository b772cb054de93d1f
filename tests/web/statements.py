"""Counting the SQL a request runs: a page whose statements grow with its rows looks each row's
details up on its own."""

from __future__ import annotations

from contextlib import contextmanager

from sqlalchemy import event


@contextmanager
def statements(app):
    """The statements the app's engine runs meanwhile, as a list that fills in."""
    engine = app.extensions["handoff_db"]["engine"]
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
