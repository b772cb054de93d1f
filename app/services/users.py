"""Accounts: creation and password hashing (Argon2id)."""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from zxcvbn import zxcvbn
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from app.models import Agency, Role, User
from app.services import DomainError, Forbidden, audit
from app.services.audit import Actor

MIN_PASSWORD_LENGTH = 12
# Verified against when the e-mail is unknown, so both paths cost the same time.
_DUMMY_HASH: dict[tuple, str] = {}


class Passwords:
    def __init__(self, time_cost: int, memory_cost: int, parallelism: int):
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        if password_hash is None:
            password_hash = self._dummy()
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)

    def _dummy(self) -> str:
        key = (self._hasher.time_cost, self._hasher.memory_cost)
        if key not in _DUMMY_HASH:
            _DUMMY_HASH[key] = self._hasher.hash("not-a-real-password")
        return _DUMMY_HASH[key]


@lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    # 30,000 most common passwords from breach corpora, shipped with zxcvbn.
    return frozenset(FREQUENCY_LISTS["passwords"])


def check_password(password: str, *, email: str = "", name: str = "") -> None:
    """ASVS V6.2: length, not common or breached, not guessable from the user's details;
    no composition rules and no forced periodic change."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise DomainError(f"Use at least {MIN_PASSWORD_LENGTH} characters.", field="password")
    if len(password) > 1024:
        raise DomainError("Use at most 1024 characters.", field="password")
    if password.lower() in _common_passwords():
        raise DomainError("This password is on a list of common or breached passwords.", field="password")
    hints = [part for part in [email.split("@")[0], *name.split(), "handoff"] if part]
    if zxcvbn(password[:100], user_inputs=hints)["score"] < 3:
        raise DomainError("This password is too easy to guess; try a longer phrase.", field="password")


def _email_key(address: str) -> str:
    """An account's address as stored and looked up: NFKC (a full-width ｕ is a plain u) and in
    lower case, so that the same address written another way finds the same account."""
    return unicodedata.normalize("NFKC", address.strip()).lower()


def find_by_email(session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(func.lower(User.email) == _email_key(email)))


def normalise_email(session: Session, address: str, user_id: int | None = None) -> str:
    """The address an account (`user_id`, or a new one) may take, as stored: valid by
    email-validator (no DNS look-ups) and nobody else's, whichever way it is written."""
    try:
        # NFKC before the check: it can change an address (a full-width ＠ becomes an @).
        valid = validate_email(_email_key(address), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise DomainError(str(exc), field="email") from exc
    email = _email_key(valid)
    existing = find_by_email(session, email)
    if existing is not None and existing.id != user_id:
        raise DomainError("A user with this e-mail exists already.", field="email")
    return email


def create_user(session: Session, actor: Actor, passwords: Passwords, *, email: str, name: str,
                password: str, role: Role, agency_id: int, timezone: str | None = None) -> User:
    if actor.user is not None and actor.user.role is not Role.ADMIN:
        raise Forbidden("Only administrators create users.")
    email = normalise_email(session, email)
    if session.get(Agency, agency_id) is None:
        raise DomainError("Choose an existing agency.", field="agency_id")
    check_password(password, email=email, name=name)
    user = User(email=email, name=name.strip(), password_hash=passwords.hash(password), role=role,
                agency_id=agency_id, timezone=timezone or None)
    session.add(user)
    session.flush()
    audit.record(session, actor, "user.create", "user", user.id, detail={"email": email, "role": role.value})
    return user
