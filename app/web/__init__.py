"""Blueprints, one package per feature: thin views and their forms."""

from __future__ import annotations

from functools import wraps
from urllib.parse import urlsplit

from flask import abort, current_app, request
from flask_login import current_user, login_required

from app.services.audit import Actor


def current_actor() -> Actor:
    user = current_user._get_current_object() if current_user.is_authenticated else None
    return Actor(user=user, address=request.remote_addr)


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


def form_refused(form, exc) -> None:
    """Put a service's refusal beside the field it names, or at the top of the form."""
    target = getattr(form, exc.field, None) if exc.field else None
    if target is not None:
        target.errors = list(target.errors) + [exc.message]
    else:
        form.form_errors.append(exc.message)


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
