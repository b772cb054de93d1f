"""Jinja helpers: times in the viewer's time zone, country names, identifier kinds and
platforms as people name them, durations."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import Flask
from flask_login import current_user

from app.db import utcnow
from app.services import countries
from app.services.deconfliction import KIND_LABELS
from app.services.identifiers import PLATFORMS


def viewer_zone() -> ZoneInfo:
    name = current_user.display_timezone if current_user.is_authenticated else "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def localtime(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M %Z") -> str:
    if value is None:
        return "-"
    return value.astimezone(viewer_zone()).strftime(fmt)


def provider_time(value: datetime | None) -> str:
    """A time a provider reported. A day alone (stored as its midnight UTC) shows as the UTC
    date it names: in the viewer's zone, west of UTC, it would be the day before. A time of
    day shows in the viewer's zone, as every time does."""
    if value is None:
        return "-"
    in_utc = value.astimezone(timezone.utc)
    if in_utc.time() == time.min:
        return in_utc.strftime("%Y-%m-%d")
    return localtime(value)


def duration(delta: timedelta) -> str:
    seconds = int(abs(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


def nav_links() -> list[tuple[str, str]]:
    """Navigation entries for the signed-in user's role."""
    links = [("admin.operations", "Operations")]
    links.insert(0, ("dashboards.global_view", "Dashboards"))
    if current_user.is_authenticated:
        links.append(("hits.index", "Hits"))
        if current_user.can_work_referrals:
            links.append(("hits.check", "Blind check"))
            links.append(("tips.index", "Tips"))
        links.append(("hits.notifications", _notifications_label()))
    if current_user.is_authenticated and current_user.role.value in ("admin", "manager"):
        links.append(("admin.audit_trail", "Audit"))
    if current_user.is_authenticated and current_user.role.value == "admin":
        links += [("admin.agencies", "Agencies"), ("admin.users_index", "Users")]
        links.append(("hits.common_identifiers", "Common identifiers"))
    return links


def _notifications_label() -> str:
    from sqlalchemy.exc import SQLAlchemyError

    from app.extensions import db
    from app.services.deconfliction import unread_count

    try:
        unread = unread_count(db.session, current_user)
    except SQLAlchemyError:  # e.g. on the error page of a failed transaction
        return "Notifications"
    return f"Notifications ({unread})" if unread else "Notifications"


def identifier_kind(kind) -> str:
    """"E-mail", "IP address": a kind as the pages name it, not its stored value."""
    return KIND_LABELS.get(kind, str(kind))


def platform_name(platform: str | None) -> str:
    """"X (Twitter)" for "x"; "-" for none."""
    return PLATFORMS.get(platform, platform) if platform else "-"


def register(app: Flask) -> None:
    app.add_template_filter(localtime)
    app.add_template_filter(provider_time)
    app.add_template_filter(duration)
    app.add_template_filter(countries.name, "country")
    app.add_template_filter(identifier_kind)
    app.add_template_filter(platform_name)
    app.add_template_global(utcnow, "utcnow")
    app.add_template_global(nav_links)
