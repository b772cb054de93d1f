"""Application factory: bind extensions, register blueprints, errors and CLI. No queries here."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask
from werkzeug.routing import IntegerConverter

from config import config_class, load


def create_app(test_config: dict[str, Any] | None = None, config_name: str | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_object(config_class(config_name))
    load(app.config, test_config)
    os.makedirs(app.instance_path, exist_ok=True)
    if not app.config.get("DATABASE_URL"):
        app.config["DATABASE_URL"] = "sqlite:///" + os.path.join(app.instance_path, "handoff.db")
    for key in ("SECRET_KEY", "MATCH_KEY_SECRET"):
        if not app.config.get(key):
            raise RuntimeError(f"Set HANDOFF_{key}: it must be the same on every worker.")

    register_extensions(app)
    app.url_map.converters["int"] = DatabaseIntegerConverter
    register_blueprints(app)
    register_request_hooks(app)
    register_template_helpers(app)
    register_cli(app)
    return app


def register_extensions(app: Flask) -> None:
    from app.extensions import csrf, db, limiter, login_manager
    from app.services.dashboard_cache import GlobalDashboardCache
    from app.services.security import Policy, resume_session
    from app.services.users import Passwords

    db.init_app(app)
    # Services stay free of Flask: they read deconfliction settings (match key secret,
    # thresholds) from the configuration attached to every session of this app.
    app.extensions["handoff_db"]["sessionmaker"].configure(info={"config": app.config})
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please sign in."
    login_manager.session_protection = "strong"
    limiter.init_app(app)
    app.extensions["handoff_passwords"] = Passwords(
        app.config["ARGON2_TIME_COST"], app.config["ARGON2_MEMORY_COST"], app.config["ARGON2_PARALLELISM"]
    )
    app.extensions["handoff_security_policy"] = Policy.from_config(app.config)
    app.extensions["handoff_dashboard_cache"] = GlobalDashboardCache(app.config["DASHBOARD_CACHE_SECONDS"])

    @login_manager.user_loader
    def load_user(session_token: str):
        # Flask-Login keeps the server-side session token, not the user id: a revoked,
        # idle or expired session signs the browser out on its next request.
        return resume_session(db.session, app.extensions["handoff_security_policy"], session_token)


def register_blueprints(app: Flask) -> None:
    from app.web.admin import bp as admin_bp
    from app.web.auth import bp as auth_bp
    from app.web.errors import register_error_handlers
    from app.web.hits import bp as hits_bp
    from app.web.referrals import bp as referrals_bp

    app.register_blueprint(auth_bp)
    app.register_blueprint(referrals_bp)
    app.register_blueprint(hits_bp)
    app.register_blueprint(admin_bp, url_prefix="/admin")
    from app.web.dashboards import bp as dashboards_bp
    app.register_blueprint(dashboards_bp, url_prefix="/dashboards")
    from app.web.tips import bp as tips_bp
    app.register_blueprint(tips_bp, url_prefix="/tips")
    register_error_handlers(app)


class DatabaseIntegerConverter(IntegerConverter):
    """`<int:...>` in a URL, at most the largest id a database column holds: a larger number
    matches no route (404, as any id out of reach) instead of failing in the query (500)."""

    def __init__(self, url_map, *args, **kwargs):
        kwargs.setdefault("max", 2**31 - 1)
        super().__init__(url_map, *args, **kwargs)


def register_request_hooks(app: Flask) -> None:
    from flask import request

    from app.extensions import db

    @app.after_request
    def commit_once(response):
        # One commit per request, only for a successful answer; errors and refused forms
        # (4xx/5xx) leave the session to be rolled back at teardown.
        if response.status_code < 400:
            db.commit_request()
        return response

    @app.after_request
    def security_headers(response):
        headers = response.headers
        headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        )
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        if app.config.get("HSTS"):
            headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        if not request.path.startswith("/static/"):
            # Pages hold case data: no copies in shared or browser caches.
            headers.setdefault("Cache-Control", "no-store")
        return response


def register_template_helpers(app: Flask) -> None:
    from app.web import filters

    filters.register(app)


def register_cli(app: Flask) -> None:
    from app.cli import register

    register(app)
