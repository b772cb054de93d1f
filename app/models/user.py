from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, String, func
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, UTCDateTime, utcnow
from app.models._types import enum_column
from app.models.agency import Agency


class Role(enum.StrEnum):
    ADMIN = "admin"
    MANAGER = "manager"
    LIAISON = "liaison"
    VIEWER = "viewer"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(enum_column(Role, "user_role"))
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"), index=True)
    # None means: use the agency's time zone.
    timezone: Mapped[str | None] = mapped_column(String(64))
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Why an inactive account was disabled ("admin", "inactive"), for the admin pages.
    disabled_reason: Mapped[str | None] = mapped_column(String(32))
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Lockout: failures counted inside a window; a lock lasts until an admin unlocks it
    # or the configured time passes.
    failed_logins: Mapped[int] = mapped_column(default=0)
    failed_window_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    locked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # TOTP second factor; the last accepted time step refuses a replayed code.
    mfa_secret: Mapped[str | None] = mapped_column(String(64))
    mfa_enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    mfa_last_timestep: Mapped[int | None] = mapped_column()

    agency: Mapped[Agency] = relationship(lazy="joined")

    # The server-side session this request runs under (set by the session check); Flask-Login
    # stores it as the user's id, so revoking the session row signs the browser out.
    session_token = None  # str, set per request; not a column

    # Flask-Login protocol
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        if not self.session_token:
            raise RuntimeError("sign in through app.services.security.start_session")
        return self.session_token

    @hybrid_property
    def last_used_at(self) -> datetime:
        """The last sign-in, or the creation of an account never used (inactivity rule)."""
        return self.last_login_at or self.created_at

    @last_used_at.inplace.expression
    @classmethod
    def _last_used_at_expression(cls):
        return func.coalesce(cls.last_login_at, cls.created_at)

    @property
    def mfa_enabled(self) -> bool:
        return self.mfa_enabled_at is not None

    @property
    def display_timezone(self) -> str:
        return self.timezone or self.agency.timezone

    @property
    def can_work_referrals(self) -> bool:
        return self.role in (Role.LIAISON, Role.MANAGER)

    def __repr__(self) -> str:
        return f"<User {self.email!r}>"
