from __future__ import annotations

from flask import Flask, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import OperationalError

from app.extensions import db
from app.services import Forbidden, NotFound

CSRF_MESSAGE = "The form expired or was not sent from this site. Reload the page and try again."
BUSY_MESSAGE = ("The database is busy: a tip import is writing its rows. Nothing was saved; try again in a "
                "minute.")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(NotFound)
    def not_found_domain(exc: NotFound):
        return render_template("error.html", code=404, message="Not found."), 404

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
        return render_template("error.html", code=413, message=message, path=request.path), 413

    @app.errorhandler(Forbidden)
    def forbidden_domain(exc: Forbidden):
        return render_template("error.html", code=403, message=exc.message), 403

    @app.errorhandler(CSRFError)
    def csrf_refused(exc: CSRFError):
        return render_template("error.html", code=400, message=CSRF_MESSAGE), 400

    @app.errorhandler(OperationalError)
    def database_unavailable(exc: OperationalError):
        # SQLite has one writer: a request that waited out SQLITE_BUSY_TIMEOUT_MS for it
        # (an import holds it while it writes) is told to try again, not that something broke.
        db.session.rollback()
        if "database is locked" not in str(exc.orig):
            raise exc  # any other: Flask logs it and answers with the 500 page
        return (render_template("error.html", code=503, message=BUSY_MESSAGE, path=request.path), 503,
                {"Retry-After": "60"})

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
        return render_template("error.html", code=code, message=text or message, path=request.path), code

    return handler
