"""Settings classes hold defaults; `load` applies HANDOFF_* environment variables when an app
is created (never at import time, so a test or a worker sees the environment it runs in)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

LOGON_BANNER = (
    "This is a restricted criminal-justice information system. Use is limited to authorised "
    "users for official purposes and is monitored and recorded. Unauthorised use may be "
    "prosecuted. By signing in you consent to these terms."
)


class Config:
    # Fixed keys from the environment; a random key per worker would break sessions across workers.
    SECRET_KEY: str | None = None
    # Key for the HMAC match keys of identifiers; kept apart from SECRET_KEY so either can rotate alone.
    MATCH_KEY_SECRET: str | None = None
    DATABASE_URL: str | None = None
    SQL_ECHO = False

    WTF_CSRF_ENABLED = True
    WTF_CSRF_TIME_LIMIT = None  # tokens live as long as the session
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = False
    PERMANENT_SESSION_LIFETIME = timedelta(hours=12)

    # Argon2id cost; lowered only in tests.
    ARGON2_TIME_COST = 3
    ARGON2_MEMORY_COST = 65536
    ARGON2_PARALLELISM = 2

    # Sign-in and sessions (CJIS 5.5.3, 5.5.5; ASVS V6, V7).
    LOCKOUT_ATTEMPTS = 5
    LOCKOUT_WINDOW = timedelta(minutes=15)
    LOCKOUT_MINUTES = 30
    LOGIN_RATE_LIMIT = "20 per 15 minutes"
    RATELIMIT_STORAGE_URI = "memory://"  # redis://host:6379 when several workers serve
    SESSION_IDLE_MINUTES = 30
    SESSION_ABSOLUTE_HOURS = 12
    REAUTH_WINDOW = timedelta(minutes=5)
    INACTIVE_ACCOUNT_DAYS = 90
    # Roles that must use a second factor; "admin,manager,liaison,viewer" for everyone.
    MFA_REQUIRED_ROLES: Any = "admin,manager"
    MFA_ISSUER = "Handoff"
    LOGON_BANNER = LOGON_BANNER
    AUDIT_RETENTION_DAYS = 400
    HSTS = False

    PAGE_SIZE = 25
    # A blind check of 10,000 long identifiers is a few megabytes of form text; a tip file
    # of the real operation's size is about 30 MB.
    MAX_FORM_MEMORY_SIZE = 8 * 1024 * 1024
    MAX_CONTENT_LENGTH = 128 * 1024 * 1024
    # An identifier held by more referrals than this is "common" and raises no hits.
    COMMON_IDENTIFIER_THRESHOLD = 20
    BLIND_CHECK_LIMIT = 10_000
    # SQLite only: how long the global dashboard's figures that move with the clock (overdue)
    # may be served from the cache; any change of the data refreshes them at once. 0: no cache.
    DASHBOARD_CACHE_SECONDS = 60
    # SQLite only: how long a request waits for the database's one write lock before it gives up
    # (and answers 503, try again), and how long a tip import waits for it: an import holds it
    # while it writes (10 s for a full tip), and imports follow one another instead of failing.
    SQLITE_BUSY_TIMEOUT_MS = 10_000
    TIP_IMPORT_LOCK_WAIT_SECONDS = 600


class DevelopmentConfig(Config):
    SECRET_KEY = "dev-only-secret-key-change-me"
    MATCH_KEY_SECRET = "dev-only-match-key-change-me"


class TestingConfig(Config):
    TESTING = True
    SECRET_KEY = "testing-secret-key"
    MATCH_KEY_SECRET = "testing-match-key"
    ARGON2_TIME_COST = 1
    ARGON2_MEMORY_COST = 1024
    ARGON2_PARALLELISM = 1
    # Tests sign in many times from one address; the rate-limit test lowers this itself.
    LOGIN_RATE_LIMIT = "1000 per minute"
    # The suite signs in with passwords only; MFA tests switch it on per test.
    MFA_REQUIRED_ROLES = ""


class ProductionConfig(Config):
    SESSION_COOKIE_SECURE = True
    REMEMBER_COOKIE_SECURE = True
    HSTS = True


CONFIGS = {
    "development": DevelopmentConfig,
    "testing": TestingConfig,
    "production": ProductionConfig,
}


def config_class(name: str | None = None) -> type[Config]:
    return CONFIGS[name or os.environ.get("HANDOFF_CONFIG", "development")]


def load(config: dict, overrides: dict | None = None) -> None:
    """Apply HANDOFF_* variables (ints and strings), then explicit overrides, then derive the
    typed values the app uses."""
    for key in list(config.keys()):
        raw = os.environ.get(f"HANDOFF_{key}")
        if raw is None:
            continue
        default = config[key]
        config[key] = int(raw) if isinstance(default, int) and not isinstance(default, bool) else raw
    if overrides:
        config.update(overrides)
    config["LOCKOUT_DURATION"] = timedelta(minutes=int(config["LOCKOUT_MINUTES"]))
    config["SESSION_IDLE_TIMEOUT"] = timedelta(minutes=int(config["SESSION_IDLE_MINUTES"]))
    config["SESSION_ABSOLUTE_TIMEOUT"] = timedelta(hours=int(config["SESSION_ABSOLUTE_HOURS"]))
    roles = config["MFA_REQUIRED_ROLES"]
    if isinstance(roles, str):
        config["MFA_REQUIRED_ROLES"] = frozenset(r.strip() for r in roles.split(",") if r.strip())
