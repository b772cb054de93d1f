"""Application factory: bind extensions, register blueprints, errors and CLI. No queries here."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from config import config_class


def create_app(test_config: dict[str, Any] | None = None, config_name: str | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_object(config_class(config_name))
    if test_config:
        app.config.update(test_config)
    os.makedirs(app.instance_path, exist_ok=True)
    if not app.config.get("DATABASE_URL"):
        app.config["DATABASE_URL"] = "sqlite:///" + os.path.join(app.instance_path, "handoff.db")
    for key in ("SECRET_KEY", "MATCH_KEY_SECRET"):
        if not app.config.get(key):
            raise RuntimeError(f"Set HANDOFF_{key}: it must be the same on every worker.")

    register_extensions(app)
    register_blueprints(app)
    register_request_hooks(app)
    register_template_helpers(app)
    register_cli(app)
    return app


def register_extensions(app: Flask) -> None:
    from app.extensions import csrf, db, login_manager
    from app.services.users import Passwords

    db.init_app(app)
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please sign in."
    login_manager.session_protection = "strong"
    app.extensions["handoff_passwords"] = Passwords(
        app.config["ARGON2_TIME_COST"], app.config["ARGON2_MEMORY_COST"], app.config["ARGON2_PARALLELISM"]
    )

    @login_manager.user_loader
    def load_user(user_id: str):
        from app.models import User

        user = db.session.get(User, int(user_id)) if user_id.isdigit() else None
        return user if user is not None and user.is_active else None


def register_blueprints(app: Flask) -> None:
    from app.web.admin import bp as admin_bp
    from app.web.auth import bp as auth_bp
    from app.web.errors import register_error_handlers
    from app.web.referrals import bp as referrals_bp

    app.register_blueprint(auth_bp)
    app.register_blueprint(referrals_bp)
    app.register_blueprint(admin_bp, url_prefix="/admin")
    register_error_handlers(app)


def register_request_hooks(app: Flask) -> None:
    from app.extensions import db

    @app.after_request
    def commit_once(response):
        # One commit per request, only for a successful answer; errors and refused forms
        # (4xx/5xx) leave the session to be rolled back at teardown.
        if response.status_code < 400:
            db.commit_request()
        return response


def register_template_helpers(app: Flask) -> None:
    from app.web import filters

    filters.register(app)


def register_cli(app: Flask) -> None:
    from app.cli import register

    register(app)
