"""The domain, free of Flask. Services read through `access`, write through the models and
`audit`, and flush; they never commit (the request or CLI command does, once)."""

import math
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm.exc import StaleDataError


class DomainError(Exception):
    """A refusal a person can act on; `field` names the form field it belongs to, if any."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(DomainError):
    """The object does not exist or is outside the user's scope; both look the same."""

    def __init__(self, message: str = "Not found."):
        super().__init__(message)


class Forbidden(DomainError):
    """Visible, but this user or agency may not do that."""


class Conflict(DomainError):
    """The object was changed since it was loaded (by someone else, or by a second click)."""


def _changed_meanwhile(what: str) -> str:
    return f"This {what} was changed since you loaded the page. Reload it and try again."


def check_version(obj, expected_version: int | None, what: str) -> None:
    """Refuse a change made from a page that showed an older version of `obj`."""
    if expected_version is not None and obj.version != expected_version:
        raise Conflict(_changed_meanwhile(what))


def flush_or_conflict(session, what: str) -> None:
    """Flush; a row whose version moved under us (version_id_col) is a Conflict."""
    try:
        session.flush()
    except StaleDataError as exc:
        raise Conflict(_changed_meanwhile(what)) from exc


def require_worker(actor, message: str = "Your role may read referrals but not work them.") -> None:
    """Only liaison officers and managers work referrals and what hangs off them."""
    if actor.user is None or not actor.user.can_work_referrals:
        raise Forbidden(message)


@dataclass
class Page:
    """One page of a list, with the total it was cut from."""

    items: list
    total: int
    page: int
    per_page: int
    overdue_ids: set[int] = field(default_factory=set)  # referral lists mark the late ones

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


def paginate(session, query, page: int, per_page: int, *order) -> Page:
    """Count the (scoped, filtered) query and fetch one page of it in the given order; past the
    last page, the last (a page number of twenty digits is no offset any database takes). A
    query of one entity gives its objects; of an entity and columns joined to it, rows."""
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    page = min(max(1, page), max(1, math.ceil(total / per_page)))
    result = session.execute(query.order_by(*order).limit(per_page).offset((page - 1) * per_page)).unique()
    items = list(result.scalars() if len(query.column_descriptions) == 1 else result)
    return Page(items, total, page, per_page)
