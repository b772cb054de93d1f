"""Settings classes. Every value can be overridden with a HANDOFF_* environment variable."""

from __future__ import annotations

import os
from datetime import timedelta


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"HANDOFF_{name}", default)


class Config:
    # A fixed key from the environment; a random key per worker would break sessions across workers.
    SECRET_KEY = _env("SECRET_KEY")
    # Key for the HMAC match keys of identifiers; kept apart from SECRET_KEY so either can rotate alone.
    MATCH_KEY_SECRET = _env("MATCH_KEY_SECRET")
    DATABASE_URL = _env("DATABASE_URL")
    SQL_ECHO = False

    WTF_CSRF_ENABLED = True
    WTF_CSRF_TIME_LIMIT = None  # tokens live as long as the session
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = False
    REMEMBER_COOKIE_DURATION = timedelta(hours=12)
    REMEMBER_COOKIE_HTTPONLY = True
    REMEMBER_COOKIE_SAMESITE = "Lax"
    PERMANENT_SESSION_LIFETIME = timedelta(hours=12)

    # Argon2id cost; lowered only in tests.
    ARGON2_TIME_COST = 3
    ARGON2_MEMORY_COST = 65536
    ARGON2_PARALLELISM = 2

    PAGE_SIZE = 25
    # An identifier held by more referrals than this is "common" and raises no hits.
    COMMON_IDENTIFIER_THRESHOLD = int(_env("COMMON_IDENTIFIER_THRESHOLD", "20"))
    BLIND_CHECK_LIMIT = 10_000


class DevelopmentConfig(Config):
    SECRET_KEY = _env("SECRET_KEY", "dev-only-secret-key-change-me")
    MATCH_KEY_SECRET = _env("MATCH_KEY_SECRET", "dev-only-match-key-change-me")


class TestingConfig(Config):
    TESTING = True
    SECRET_KEY = "testing-secret-key"
    MATCH_KEY_SECRET = "testing-match-key"
    ARGON2_TIME_COST = 1
    ARGON2_MEMORY_COST = 1024
    ARGON2_PARALLELISM = 1


class ProductionConfig(Config):
    SESSION_COOKIE_SECURE = True
    REMEMBER_COOKIE_SECURE = True


CONFIGS = {
    "development": DevelopmentConfig,
    "testing": TestingConfig,
    "production": ProductionConfig,
}


def config_class(name: str | None = None) -> type[Config]:
    return CONFIGS[name or _env("CONFIG", "development")]
