from __future__ import annotations

from flask import Flask, Response, flash, jsonify, redirect, render_template, request
from flask_login.utils import login_url
from werkzeug.http import HTTP_STATUS_CODES
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import OperationalError

from app.extensions import db, login_manager
from app.services import Forbidden, NotFound

CSRF_MESSAGE = "The form expired or was not sent from this site. Reload the page and try again."
BUSY_MESSAGE = ("The database is busy: a tip import is writing its rows. Nothing was saved; try again in a "
                "minute.")


def register_error_handlers(app: Flask) -> None:
    @login_manager.unauthorized_handler
    def sign_in_first():
        # A browser goes to the sign-in page, as Flask-Login would send it; a JSON export is
        # told 401, which a script can act on, not given a page to follow.
        if wants_problem():
            return error_answer(401, "Sign in first.")
        flash(login_manager.login_message, login_manager.login_message_category)
        return redirect(login_url(login_manager.login_view, next_url=request.url))

    @app.errorhandler(NotFound)
    def not_found_domain(exc: NotFound):
        return error_answer(404, "Not found.")

    @app.errorhandler(413)
    def too_large(exc):
        # Which limit was passed: the whole request's, or one of Werkzeug's on a multipart form
        # (as the upload form): on the text of one field (a file counts only towards the
        # request's) or on the number of fields.
        whole = app.config.get("MAX_CONTENT_LENGTH")
        field_text = app.config.get("MAX_FORM_MEMORY_SIZE")
        length = request.content_length
        if whole and (length is None or length > whole):
            limit = f"a request, a tip file included, at most {_size(whole)}"
        else:
            # Werkzeug raises the same error for both: only a form smaller than the text limit
            # cannot have passed it.
            limit = f"a form at most {app.config.get('MAX_FORM_PARTS') or 1000:,} fields"
            if field_text and length is not None and length > field_text:
                limit = f"the text of one form field at most {_size(field_text)}, and {limit}"
        message = (f"That was too large to accept. Send less at once (a blind check takes at most "
                   f"{app.config.get('BLIND_CHECK_LIMIT', 0):,} identifiers; {limit}).")
        return error_answer(413, message)

    @app.errorhandler(Forbidden)
    def forbidden_domain(exc: Forbidden):
        return error_answer(403, exc.message)

    @app.errorhandler(CSRFError)
    def csrf_refused(exc: CSRFError):
        return error_answer(400, CSRF_MESSAGE)

    @app.errorhandler(OperationalError)
    def database_unavailable(exc: OperationalError):
        # SQLite has one writer: a request that waited out SQLITE_BUSY_TIMEOUT_MS for it
        # (an import holds it while it writes) is told to try again, not that something broke.
        db.session.rollback()
        if "database is locked" not in str(exc.orig):
            raise exc  # any other: Flask logs it and answers with the 500 page
        answer = error_answer(503, BUSY_MESSAGE)
        answer.headers["Retry-After"] = "60"
        return answer

    for code, message in (
        (400, "The request could not be understood."),
        (403, "You may not do that."),
        (404, "Not found."),
        (405, "That method is not allowed here."),
        (429, "Too many attempts from your address. Wait a few minutes and try again."),
        (500, "Something went wrong on our side. Nothing was saved."),
    ):
        app.register_error_handler(code, _page(code, message))


def _size(limit: int) -> str:
    return f"{limit / 2**20:,.0f} MB" if limit >= 2**20 else f"{limit / 1024:,.0f} KB"


def _page(code: int, message: str):
    def handler(exc):
        if code == 500:
            db.session.rollback()  # the page reads the signed-in user: not in the failed transaction
        text = getattr(exc, "description", None) if code == 400 else None
        return error_answer(code, text or message)

    return handler


def wants_problem() -> bool:
    """Whether the request asked for JSON: an export ending in `.json` (or a client that
    prefers JSON to HTML), which reads an error as problem+json (RFC 9457), not a page."""
    if request.path.endswith(".json"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json", "application/problem+json"])
    return best is not None and best != "text/html"


def error_answer(code: int, message: str) -> Response:
    """The error page, or for a JSON request the same message as problem+json."""
    if wants_problem():
        answer = jsonify(type="about:blank", title=HTTP_STATUS_CODES.get(code, "Error"), status=code,
                         detail=message)
        answer.status_code = code
        answer.mimetype = "application/problem+json"
        return answer
    return Response(render_template("error.html", code=code, message=message, path=request.path), code)
