"""The global dashboard on SQLite, from a small in-process cache.

SQLite has no parallel scans and no percentile aggregate: at 100,000 referrals the global
dashboard's aggregates take most of a second there, while PostgreSQL answers within its
target and is never cached. An entry is keyed on everything the figures depend on:

- the viewer's agency (the access scope), the filters and the sort;
- the data version: a number SQLite triggers bump on every insert, update and delete of
  referrals, outcomes and operations (migration 0007), so the next request after any change,
  from any process or statement, computes afresh;
- the time slice: "overdue" moves with the clock alone, so an entry serves only within the
  slice of `seconds` it was computed in. That is how stale a figure can be: never after a
  change of the data, at most `seconds` for the figures that depend on the time.

Entries are read-only: views must not change a dashboard they are given.
"""

from __future__ import annotations

import threading
from datetime import datetime

from cachetools import LRUCache
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import DASHBOARDS, DataVersion
from app.services import stats


class GlobalDashboardCache:
    def __init__(self, seconds: int, maxsize: int = 128):
        self.seconds = seconds
        self._entries: LRUCache = LRUCache(maxsize)
        self._lock = threading.Lock()

    def global_dashboard(self, session: Session, user, filters: stats.Filters, now: datetime,
                         sort: str = "referrals", descending: bool = True) -> stats.GlobalDashboard:
        key = self._key(session, user, filters, now, sort, descending)
        if key is None:
            return stats.global_dashboard(session, user, filters, now=now, sort=sort, descending=descending)
        with self._lock:
            dashboard = self._entries.get(key)
        if dashboard is None:
            dashboard = stats.global_dashboard(session, user, filters, now=now, sort=sort, descending=descending)
            with self._lock:
                self._entries[key] = dashboard
        return dashboard

    def _key(self, session: Session, user, filters, now: datetime, sort: str, descending: bool):
        if self.seconds <= 0 or session.get_bind().dialect.name != "sqlite":
            return None
        version = session.scalar(select(DataVersion.version).where(DataVersion.name == DASHBOARDS))
        if version is None:  # nothing has changed since the tables were made: nothing to key on
            return None
        return (user.agency_id, filters, sort, descending, version, int(now.timestamp()) // self.seconds)
