"""Sign-in, lockout, second factor and server-side sessions. Free of Flask: callers pass the
settings they need as a `Policy`."""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import RecoveryCode, User, UserSession
from app.services import DomainError, audit
from app.services.audit import Actor
from app.services.users import Passwords, check_password, find_by_email, normalise_email

RECOVERY_CODE_COUNT = 10


@dataclass(frozen=True)
class Policy:
    lockout_attempts: int
    lockout_window: timedelta
    lockout_duration: timedelta
    idle_timeout: timedelta
    absolute_timeout: timedelta
    inactive_after: timedelta
    mfa_required_roles: frozenset[str]

    @classmethod
    def from_config(cls, config) -> Policy:
        return cls(
            lockout_attempts=config["LOCKOUT_ATTEMPTS"], lockout_window=config["LOCKOUT_WINDOW"],
            lockout_duration=config["LOCKOUT_DURATION"], idle_timeout=config["SESSION_IDLE_TIMEOUT"],
            absolute_timeout=config["SESSION_ABSOLUTE_TIMEOUT"],
            inactive_after=timedelta(days=config["INACTIVE_ACCOUNT_DAYS"]),
            mfa_required_roles=frozenset(config["MFA_REQUIRED_ROLES"]),
        )


# --- sign-in -----------------------------------------------------------------------------

class Outcome(enum.Enum):
    SIGNED_IN = "signed_in"
    NEEDS_SECOND_FACTOR = "needs_second_factor"
    NEEDS_ENROLMENT = "needs_enrolment"
    REFUSED = "refused"


@dataclass
class SignIn:
    outcome: Outcome
    user: User | None = None


def is_locked(user: User, policy: Policy, now: datetime) -> bool:
    return user.locked_at is not None and now < user.locked_at + policy.lockout_duration


def authenticate(session: Session, passwords: Passwords, policy: Policy, email: str, password: str,
                 address: str | None, now: datetime | None = None) -> SignIn:
    """Check e-mail and password. Every refusal looks the same to the caller's user."""
    now = now or utcnow()
    user = find_by_email(session, email)
    password_ok = passwords.verify(user.password_hash if user else None, password)
    anonymous = Actor(None, address)
    if user is None:
        audit.record(session, anonymous, "auth.login", "user", None, outcome="failure",
                     detail={"email": email[:254], "reason": "unknown account"})
        return SignIn(Outcome.REFUSED)
    actor = Actor(user, address)
    if is_locked(user, policy, now):
        audit.record(session, actor, "auth.login", "user", user.id, outcome="failure", detail={"reason": "locked"})
        return SignIn(Outcome.REFUSED)
    if not password_ok:
        _count_failure(session, user, policy, now, actor)
        return SignIn(Outcome.REFUSED)
    if not user.is_active:
        audit.record(session, actor, "auth.login", "user", user.id, outcome="failure", detail={"reason": "disabled"})
        return SignIn(Outcome.REFUSED)
    if now - user.last_used_at > policy.inactive_after:
        disable(session, actor, user, "inactive")
        audit.record(session, actor, "auth.login", "user", user.id, outcome="failure", detail={"reason": "inactive"})
        return SignIn(Outcome.REFUSED)
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash(password)
    user.failed_logins, user.failed_window_start, user.locked_at = 0, None, None
    if user.mfa_enabled:
        return SignIn(Outcome.NEEDS_SECOND_FACTOR, user)
    if user.role.value in policy.mfa_required_roles:
        return SignIn(Outcome.NEEDS_ENROLMENT, user)
    return SignIn(Outcome.SIGNED_IN, user)


def _count_failure(session: Session, user: User, policy: Policy, now: datetime, actor: Actor) -> None:
    if user.failed_window_start is None or now - user.failed_window_start > policy.lockout_window:
        user.failed_window_start, user.failed_logins = now, 0
    user.failed_logins += 1
    audit.record(session, actor, "auth.login", "user", user.id, outcome="failure",
                 detail={"reason": "wrong password", "failures": user.failed_logins})
    if user.failed_logins >= policy.lockout_attempts:
        user.locked_at = now
        audit.record(session, actor, "auth.lock", "user", user.id, detail={"failures": user.failed_logins})


def unlock(session: Session, actor: Actor, user: User) -> None:
    user.locked_at, user.failed_logins, user.failed_window_start = None, 0, None
    session.flush()
    audit.record(session, actor, "auth.unlock", "user", user.id)


def disable(session: Session, actor: Actor, user: User, reason: str) -> None:
    """Disable an account and end every session of it at once."""
    user.is_active = False
    user.disabled_reason = reason
    revoke_sessions(session, user.id)
    audit.record(session, actor, "user.disable", "user", user.id, detail={"reason": reason})


def disable_inactive(session: Session, policy: Policy, now: datetime | None = None) -> list[User]:
    """Disable accounts unused for longer than the policy allows (run daily)."""
    now = now or utcnow()
    cutoff = now - policy.inactive_after
    stale = session.scalars(select(User).where(User.is_active.is_(True), User.last_used_at < cutoff)).all()
    for user in stale:
        disable(session, audit.SYSTEM, user, "inactive")
    return list(stale)


# --- sessions ----------------------------------------------------------------------------

def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(session: Session, user: User, address: str | None, now: datetime | None = None) -> str:
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    session.add(UserSession(token_hash=_hash_token(token), user_id=user.id, created_at=now,
                            last_seen_at=now, address=address))
    user.last_login_at = now
    user.session_token = token
    session.flush()
    audit.record(session, Actor(user, address), "auth.login", "user", user.id)
    return token


def resume_session(session: Session, policy: Policy, token: str, now: datetime | None = None) -> User | None:
    """The user behind a session token, if the session is live; ends it when it has timed out."""
    now = now or utcnow()
    # Every request passes here: one statement for the session and its user.
    found = session.execute(
        select(UserSession, User).join(User, User.id == UserSession.user_id)
        .where(UserSession.token_hash == _hash_token(token))
    ).one_or_none()
    if found is None:
        return None
    row, user = found
    if row.revoked_at is not None:
        return None
    if (now - row.last_seen_at > policy.idle_timeout or now - row.created_at > policy.absolute_timeout
            or not user.is_active):
        row.revoked_at = now
        return None
    # Touch at most once a minute: enough for a 30-minute idle timeout, far fewer writes.
    if now - row.last_seen_at > timedelta(minutes=1):
        row.last_seen_at = now
    user.session_token = token
    return user


def end_session(session: Session, token: str) -> None:
    session.execute(update(UserSession).where(UserSession.token_hash == _hash_token(token))
                    .values(revoked_at=utcnow()))


def revoke_sessions(session: Session, user_id: int, keep_token: str | None = None) -> None:
    """End every session of a user (sign-out everywhere), optionally keeping the current one."""
    statement = update(UserSession).where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None))
    if keep_token:
        statement = statement.where(UserSession.token_hash != _hash_token(keep_token))
    session.execute(statement.values(revoked_at=utcnow()))


# --- second factor -----------------------------------------------------------------------

def new_mfa_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, email: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=issuer)


def _accepted_timestep(secret: str, code: str, now: datetime, last_timestep: int | None) -> int | None:
    """The time step a code belongs to (now, or one step either side), unless already used."""
    code = code.replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    current = int(now.timestamp()) // totp.interval
    for step in (current, current - 1, current + 1):
        if secrets.compare_digest(totp.generate_otp(step), code) and (last_timestep is None or step > last_timestep):
            return step
    return None


def enable_mfa(session: Session, actor: Actor, user: User, secret: str, code: str,
               now: datetime | None = None) -> list[str]:
    """Turn the second factor on once the user proves the app has the secret; returns the
    recovery codes, which are shown once and stored only hashed."""
    now = now or utcnow()
    step = _accepted_timestep(secret, code, now, None)
    if step is None:
        raise DomainError("That code does not match; check the time on your device and try again.", field="code")
    user.mfa_secret, user.mfa_enabled_at, user.mfa_last_timestep = secret, now, step
    codes = _new_recovery_codes(session, user)
    audit.record(session, actor, "auth.mfa_enable", "user", user.id)
    return codes


def _new_recovery_codes(session: Session, user: User) -> list[str]:
    session.query(RecoveryCode).filter(RecoveryCode.user_id == user.id).delete()
    codes = ["-".join(secrets.token_hex(3) for _ in range(3)) for _ in range(RECOVERY_CODE_COUNT)]
    session.add_all(RecoveryCode(user_id=user.id, code_hash=_hash_token(c)) for c in codes)
    session.flush()
    return codes


def verify_second_factor(session: Session, actor: Actor, user: User, code: str, now: datetime | None = None) -> bool:
    """A TOTP code (never the same one twice) or an unused recovery code."""
    now = now or utcnow()
    code = code.strip().lower()
    if user.mfa_secret:
        step = _accepted_timestep(user.mfa_secret, code, now, user.mfa_last_timestep)
        if step is not None:
            user.mfa_last_timestep = step
            return True
    recovery = session.scalar(select(RecoveryCode).where(
        RecoveryCode.user_id == user.id, RecoveryCode.code_hash == _hash_token(code), RecoveryCode.used_at.is_(None)))
    if recovery is not None:
        recovery.used_at = now
        audit.record(session, actor, "auth.recovery_code", "user", user.id)
        return True
    audit.record(session, actor, "auth.second_factor", "user", user.id, outcome="failure")
    return False


def reset_mfa(session: Session, actor: Actor, user: User) -> None:
    user.mfa_secret = user.mfa_enabled_at = user.mfa_last_timestep = None
    session.query(RecoveryCode).filter(RecoveryCode.user_id == user.id).delete()
    audit.record(session, actor, "auth.mfa_reset", "user", user.id)


# --- account changes ---------------------------------------------------------------------

def change_password(session: Session, actor: Actor, passwords: Passwords, user: User, new_password: str,
                    keep_token: str | None) -> None:
    check_password(new_password, email=user.email, name=user.name)
    user.password_hash = passwords.hash(new_password)
    user.password_changed_at = utcnow()
    revoke_sessions(session, user.id, keep_token=keep_token)
    audit.record(session, actor, "user.password_change", "user", user.id)


def change_email(session: Session, actor: Actor, user: User, new_email: str) -> None:
    email = normalise_email(session, new_email, user.id)
    before, user.email = user.email, email
    audit.record(session, actor, "user.email_change", "user", user.id, detail={"before": before, "after": email})


def reauthenticate(session: Session, passwords: Passwords, policy: Policy, user: User, password: str,
                   code: str, address: str | None, now: datetime | None = None) -> bool:
    """Confirm it is still the signed-in person before a sensitive change. Failures count
    towards the lockout like failed sign-ins."""
    now = now or utcnow()
    actor = Actor(user, address)
    if is_locked(user, policy, now) or not passwords.verify(user.password_hash, password):
        _count_failure(session, user, policy, now, actor)
        audit.record(session, actor, "auth.reauth", "user", user.id, outcome="failure")
        return False
    if user.mfa_enabled and not verify_second_factor(session, actor, user, code, now):
        audit.record(session, actor, "auth.reauth", "user", user.id, outcome="failure")
        return False
    audit.record(session, actor, "auth.reauth", "user", user.id)
    return True
