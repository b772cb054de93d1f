"""The global dashboard's cache (SQLite): any change of the data shows on the next view,
whoever made it; within a time slice and without a change the aggregates do not run again;
the clock-dependent figures move with the next slice; agencies never share an entry; on
PostgreSQL nothing is cached."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, update

from app.models import Priority, Referral, Status
from app.services import stats
from app.services.dashboard_cache import GlobalDashboardCache
from tests.factories import make_referral

NOW = datetime(2026, 4, 9, 12, 0, 10, tzinfo=timezone.utc)  # 10 s into a one-minute slice


@pytest.fixture
def aggregates(session):
    """How many times the global dashboard's aggregate ran."""
    runs = []

    def count(conn, cursor, statement, *args):
        if "count(*) AS referrals" in statement and "GROUP BY referrals.jurisdiction" in statement:
            runs.append(statement)

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", count)
    yield runs
    event.remove(engine, "before_cursor_execute", count)


def _sent(session, world, hours_ago: float, **kw) -> Referral:
    referral = make_referral(session, world, "sent", **kw)
    referral.sent_at = NOW - timedelta(hours=hours_ago)
    session.flush()
    return referral


def test_a_change_of_the_data_shows_on_the_next_view(session, world):
    cache = GlobalDashboardCache(seconds=60)
    manager = world.users["a_manager"]
    first = _sent(session, world, 1)
    assert cache.global_dashboard(session, manager, stats.Filters(), NOW).headline.sent == 1
    _sent(session, world, 2)
    assert cache.global_dashboard(session, manager, stats.Filters(), NOW).headline.sent == 2
    # A bulk statement, outside the ORM's unit of work, is seen as well.
    session.execute(update(Referral).where(Referral.id == first.id).values(status=Status.WITHDRAWN))
    assert cache.global_dashboard(session, manager, stats.Filters(), NOW).countries[0].open == 1


def test_within_a_slice_the_figures_come_from_the_cache(session, world, aggregates):
    cache = GlobalDashboardCache(seconds=60)
    manager = world.users["a_manager"]
    _sent(session, world, 72 - 0.01, priority=Priority.P2)  # due 36 s after NOW
    before = cache.global_dashboard(session, manager, stats.Filters(), NOW)
    assert before.headline.overdue == 0
    again = cache.global_dashboard(session, manager, stats.Filters(), NOW + timedelta(seconds=40))
    if session.get_bind().dialect.name == "sqlite":
        # 40 s on, due already, but still the slice the figures were made in: at most 60 s old.
        assert again is before and again.headline.overdue == 0 and len(aggregates) == 1
        later = cache.global_dashboard(session, manager, stats.Filters(), NOW + timedelta(seconds=55))
        assert later.headline.overdue == 1 and len(aggregates) == 2  # the next slice
    else:  # PostgreSQL is fast enough: never cached
        assert again.headline.overdue == 1 and len(aggregates) == 2


def test_agencies_never_share_an_entry(session, world):
    cache = GlobalDashboardCache(seconds=60)
    _sent(session, world, 1)  # a -> b
    _sent(session, world, 1, sender="c", receiver="b")
    seen = {key: cache.global_dashboard(session, world.users[f"{key}_manager"], stats.Filters(), NOW).headline.sent
            for key in ("a", "b", "c", "i")}
    assert seen == {"a": 1, "b": 2, "c": 1, "i": 0}


def test_the_filters_are_part_of_the_key(session, world):
    cache = GlobalDashboardCache(seconds=60)
    manager = world.users["a_manager"]
    _sent(session, world, 1, priority=Priority.P1)
    _sent(session, world, 1, priority=Priority.P3)
    assert cache.global_dashboard(session, manager, stats.Filters(), NOW).headline.sent == 2
    assert cache.global_dashboard(session, manager, stats.Filters(priority=Priority.P1), NOW).headline.sent == 1


def test_no_cache_when_switched_off(session, world, aggregates):
    cache = GlobalDashboardCache(seconds=0)
    _sent(session, world, 1)
    for _ in range(2):
        cache.global_dashboard(session, world.users["a_manager"], stats.Filters(), NOW)
    assert len(aggregates) == 2
