"""Blueprints, one package per feature: thin views and their forms."""

from __future__ import annotations

import re
from datetime import date
from functools import wraps
from urllib.parse import urlsplit

from flask import abort, current_app, flash, request
from flask_login import current_user, login_required

from wtforms.validators import ValidationError

from app.services import DomainError, Forbidden, NotFound
from app.services.audit import Actor


def current_actor() -> Actor:
    user = current_user._get_current_object() if current_user.is_authenticated else None
    return Actor(user=user, address=request.remote_addr)


def filter_args(form) -> dict[str, str]:
    """A list's filters as query arguments for its pager and export links: the filter form's
    own fields only, so that no other argument (`endpoint`, `_external`) reaches url_for."""
    return {k: v for k, v in request.args.items() if k in form._fields and k != "page"}


# Dates a person types into a form or a filter: wide enough for any referral, narrow enough
# that a day added (a filter's end) or a month counted (a timeline) stays within Python's dates.
EARLIEST_DATE, LATEST_DATE = date(2000, 1, 1), date(2099, 12, 31)
DATE_RANGE_MESSAGE = f"Choose a date from {EARLIEST_DATE} to {LATEST_DATE}."


def plausible_date(form, field) -> None:
    """A WTForms validator: the field's date (`parsed`, else `data`) lies in the range above."""
    value = getattr(field, "parsed", field.data)
    if isinstance(value, date) and not EARLIEST_DATE <= value <= LATEST_DATE:
        raise ValidationError(DATE_RANGE_MESSAGE)


# Control characters but tab, line feed and carriage return (C0, DEL and C1): PostgreSQL
# refuses a NUL in text, and the rest are paste accidents no reader of the page would see.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def plain_text(form, field) -> None:
    """A WTForms validator for free text: no control characters but tabs and line breaks."""
    if field.data and _CONTROL_CHARACTERS.search(field.data):
        raise ValidationError("Remove the control characters (such as NUL) from this text; "
                              "tabs and line breaks may stay.")


def country_code(value):
    """A WTForms filter: a country code in a link as typed ("nz") is the listed one ("NZ")."""
    return value.strip().upper() if isinstance(value, str) else value


def safe_next(target: str | None) -> str | None:
    """Only a path on this site: no scheme, no host, no protocol-relative or backslash tricks."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def passwords():
    return current_app.extensions["handoff_passwords"]


def _undo(exc: DomainError) -> None:
    """A service refused: nothing it flushed stays. NotFound and Forbidden are answers of
    their own, not form errors, so they go on to their error pages (404, 403)."""
    if isinstance(exc, (NotFound, Forbidden)):
        raise exc
    from app.extensions import db

    db.session.rollback()


def form_refused(form, exc: DomainError) -> None:
    """Undo the refused call and put the reason beside the field it names, or at the top of
    the form."""
    _undo(exc)
    target = getattr(form, exc.field, None) if exc.field else None
    if target is not None:
        target.errors = list(target.errors) + [exc.message]
    else:
        form.form_errors.append(exc.message)


def flash_refused(exc: DomainError) -> None:
    """Undo the refused call and show the reason on the next page (for one-button actions)."""
    _undo(exc)
    flash(exc.message, "error")


def form_status(*forms) -> int:
    """422 when a form carries errors (so the request does not commit), else 200."""
    return 422 if any(f.errors or f.form_errors for f in forms) else 200


def roles_required(*roles):
    """Signed in with one of these roles, else 403 (anonymous users are sent to sign in)."""

    def decorator(view):
        @wraps(view)
        @login_required
        def wrapper(*args, **kwargs):
            if current_user.role not in roles:
                abort(403)
            return view(*args, **kwargs)

        return wrapper

    return decorator
