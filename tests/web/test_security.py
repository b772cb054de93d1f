"""Accounts, sign-in, sessions and headers: each promise of docs/security.md, tested."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timedelta, timezone

import pyotp
import pytest
from sqlalchemy import select, update

from app import create_app
from app.db import utcnow
from app.extensions import db
from app.models import AuditEntry, User, UserSession
from app.services import DomainError, audit
from app.services.users import check_password
from tests.conftest import Browser, committed_world
from tests.factories import PASSWORD
from tests.web.statements import statements

LOGIN_FAILED = "Invalid e-mail or password."


def _user(app, key_email: str) -> User:
    with app.app_context():
        return db.session.scalar(select(User).where(User.email == key_email))


def _actions(app, action: str) -> list[AuditEntry]:
    with app.app_context():
        return db.session.scalars(select(AuditEntry).where(AuditEntry.action == action)).all()


def _age_auth(browser, seconds: int = 3600) -> None:
    with browser.client.session_transaction() as sess:
        sess["auth_at"] = sess["auth_at"] - seconds


# --- passwords ---------------------------------------------------------------------------

@pytest.mark.parametrize("password, reason", [
    ("short-one", "at least 12"),
    ("123qweasdzxc", "common or breached"),
    ("QWERTY123456", "common or breached"),
    ("aaaaaaaaaaaaaaaa", "too easy"),
    ("alice-alice-alice", "too easy"),
])
def test_weak_passwords_are_refused(password, reason):
    with pytest.raises(DomainError, match=reason):
        check_password(password, email="alice@example.org", name="Alice Example")


def test_strong_passphrase_is_accepted():
    check_password("lantern-orbit-meadow-42", email="alice@example.org", name="Alice Example")


def test_passwords_are_stored_with_argon2id(app, web_world):
    assert _user(app, "liaison.a@example.org").password_hash.startswith("$argon2id$")


# --- lockout and rate limit ----------------------------------------------------------------

def test_five_failures_lock_the_account_without_saying_so(app, browser, web_world):
    for _ in range(5):
        assert browser.login("liaison.a@example.org", "wrong-password-xyz").status_code == 401
    response = browser.login("liaison.a@example.org", PASSWORD)
    assert response.status_code == 401 and LOGIN_FAILED in response.get_data(as_text=True)
    assert _user(app, "liaison.a@example.org").locked_at is not None
    assert len(_actions(app, "auth.lock")) == 1
    assert len([e for e in _actions(app, "auth.login") if e.outcome == "failure"]) == 6


def test_admin_unlocks_a_locked_account(app, client, web_world):
    person = Browser(app.test_client())
    for _ in range(5):
        person.login("liaison.a@example.org", "wrong-password-xyz")
    admin = Browser(app.test_client())
    admin.login("admin.a@example.org")
    user_id = web_world.users["a_liaison"].id
    page = admin.get(f"/admin/users/{user_id}").get_data(as_text=True)
    assert "Unlock" in page
    admin.post(f"/admin/users/{user_id}/unlock", token_from=f"/admin/users/{user_id}")
    assert person.login("liaison.a@example.org").status_code == 302
    assert len(_actions(app, "auth.unlock")) == 1


def test_lock_expires_after_the_configured_time(app, browser, web_world):
    for _ in range(5):
        browser.login("liaison.a@example.org", "wrong-password-xyz")
    with app.app_context():
        db.session.execute(update(User).where(User.email == "liaison.a@example.org")
                           .values(locked_at=utcnow() - app.config["LOCKOUT_DURATION"] - timedelta(seconds=1)))
        db.session.commit()
    assert browser.login("liaison.a@example.org").status_code == 302


def test_failures_outside_the_window_do_not_add_up(app, browser, web_world):
    for _ in range(4):
        browser.login("liaison.a@example.org", "wrong-password-xyz")
    with app.app_context():
        db.session.execute(update(User).where(User.email == "liaison.a@example.org")
                           .values(failed_window_start=utcnow() - timedelta(minutes=16)))
        db.session.commit()
    browser.login("liaison.a@example.org", "wrong-password-xyz")
    assert _user(app, "liaison.a@example.org").locked_at is None


def test_sign_in_is_rate_limited_per_address(app, browser, web_world):
    app.config["LOGIN_RATE_LIMIT"] = "3 per minute"
    codes = [browser.login(f"nobody{i}@example.org", "wrong-password-xyz").status_code for i in range(4)]
    assert codes == [401, 401, 401, 429]


# --- banner, inactivity -------------------------------------------------------------------

def test_logon_banner_is_shown_before_sign_in(app, client):
    app.config["LOGON_BANNER"] = "Authorised use only. Activity is recorded."
    assert "Authorised use only. Activity is recorded." in client.get("/login").get_data(as_text=True)


def test_accounts_unused_for_90_days_are_disabled(app, browser, web_world):
    with app.app_context():
        db.session.execute(update(User).where(User.email == "liaison.a@example.org")
                           .values(last_login_at=utcnow() - timedelta(days=91)))
        db.session.commit()
    response = browser.login("liaison.a@example.org")
    assert response.status_code == 401 and LOGIN_FAILED in response.get_data(as_text=True)
    user = _user(app, "liaison.a@example.org")
    assert not user.is_active and user.disabled_reason == "inactive"


def test_disable_inactive_command(app, web_world):
    with app.app_context():
        db.session.execute(update(User).where(User.email == "viewer.b@example.org")
                           .values(created_at=utcnow() - timedelta(days=100)))
        db.session.commit()
    result = app.test_cli_runner().invoke(args=["users", "disable-inactive"])
    assert "viewer.b@example.org" in result.output and "Disabled 1" in result.output
    assert not _user(app, "viewer.b@example.org").is_active


# --- second factor ----------------------------------------------------------------------

def _enrol(app, browser, email):
    response = browser.login(email)
    assert response.headers["Location"].endswith("/login/enrol")
    page = browser.get("/login/enrol").get_data(as_text=True)
    assert 'src="data:image/svg+xml' in page  # QR generated locally, no external service
    secret = re.search(r"<code>([A-Z2-7]{16,})</code>", page).group(1)
    code = pyotp.TOTP(secret).now()
    response = browser.post("/login/enrol", {"code": code}, token_from="/login/enrol")
    assert response.status_code == 200
    codes = re.findall(r"<li><code>([0-9a-f-]+)</code></li>", response.get_data(as_text=True))
    assert len(codes) == 10
    return secret, codes


def test_managers_must_enrol_and_then_use_a_second_factor(app, web_world):
    app.config["MFA_REQUIRED_ROLES"] = frozenset({"admin", "manager"})
    app.extensions["handoff_security_policy"] = type(app.extensions["handoff_security_policy"]).from_config(app.config)
    first = Browser(app.test_client())
    assert first.get("/referrals").status_code == 302
    secret, codes = _enrol(app, first, "manager.a@example.org")
    assert first.get("/referrals").status_code == 200  # signed in after enrolment

    second = Browser(app.test_client())
    response = second.login("manager.a@example.org")
    assert response.headers["Location"].endswith("/login/second-factor")
    assert second.get("/referrals").status_code == 302  # password alone is not enough
    bad = second.post("/login/second-factor", {"code": "000000"}, token_from="/login/second-factor")
    assert bad.status_code == 401
    ok = second.post("/login/second-factor", {"code": codes[0]}, token_from="/login/second-factor")
    assert ok.status_code == 302 and second.get("/referrals").status_code == 200

    third = Browser(app.test_client())
    third.login("manager.a@example.org")
    reused = third.post("/login/second-factor", {"code": codes[0]}, token_from="/login/second-factor")
    assert reused.status_code == 401  # a recovery code works once


def test_a_totp_code_cannot_be_replayed(app, web_world):
    app.config["MFA_REQUIRED_ROLES"] = frozenset({"manager"})
    app.extensions["handoff_security_policy"] = type(app.extensions["handoff_security_policy"]).from_config(app.config)
    secret, _codes = _enrol(app, Browser(app.test_client()), "manager.b@example.org")
    used_at_enrolment = pyotp.TOTP(secret).now()
    again = Browser(app.test_client())
    again.login("manager.b@example.org")
    response = again.post("/login/second-factor", {"code": used_at_enrolment}, token_from="/login/second-factor")
    assert response.status_code == 401


def test_roles_without_the_requirement_sign_in_with_a_password(app, browser, web_world):
    app.config["MFA_REQUIRED_ROLES"] = frozenset({"admin"})
    app.extensions["handoff_security_policy"] = type(app.extensions["handoff_security_policy"]).from_config(app.config)
    assert browser.login("liaison.a@example.org").headers["Location"].endswith("/referrals")


# --- sessions ------------------------------------------------------------------------------

def test_signing_in_starts_a_new_session(app, browser, web_world):
    browser.login("liaison.a@example.org")
    first = browser.client.get_cookie("session").value
    browser.post("/logout")
    browser.login("liaison.a@example.org")
    assert browser.client.get_cookie("session").value != first
    with app.app_context():
        assert db.session.query(UserSession).count() == 2


def test_sign_out_ends_the_session_on_the_server(app, browser, web_world):
    browser.login("liaison.a@example.org")
    stolen = browser.client.get_cookie("session").value
    browser.post("/logout")
    thief = app.test_client()
    thief.set_cookie("session", stolen)
    assert thief.get("/referrals").status_code == 302


@pytest.mark.parametrize("column, age", [("last_seen_at", timedelta(minutes=31)), ("created_at", timedelta(hours=13))])
def test_idle_and_absolute_timeouts(app, browser, web_world, column, age):
    browser.login("liaison.a@example.org")
    assert browser.get("/referrals").status_code == 200
    with app.app_context():
        db.session.execute(update(UserSession).values({column: utcnow() - age}))
        db.session.commit()
    assert browser.get("/referrals").status_code == 302


def test_deactivation_and_role_change_end_sessions_at_once(app, web_world):
    person = Browser(app.test_client())
    person.login("liaison.b@example.org")
    assert person.get("/referrals").status_code == 200
    admin = Browser(app.test_client())
    admin.login("admin.a@example.org")
    user_id = web_world.users["b_liaison"].id
    admin.post(f"/admin/users/{user_id}", {"name": "liaison b", "role": "viewer", "is_active": "y",
                                           "agency_id": web_world.agencies["b"].id}, token_from=f"/admin/users/{user_id}")
    assert person.get("/referrals").status_code == 302
    person.login("liaison.b@example.org")
    admin.post(f"/admin/users/{user_id}", {"name": "liaison b", "role": "viewer",
                                           "agency_id": web_world.agencies["b"].id}, token_from=f"/admin/users/{user_id}")
    assert person.get("/referrals").status_code == 302
    assert person.login("liaison.b@example.org").status_code == 401


def test_password_change_needs_recent_auth_and_ends_other_sessions(app, web_world):
    other = Browser(app.test_client())
    other.login("liaison.a@example.org")
    me = Browser(app.test_client())
    me.login("liaison.a@example.org")
    _age_auth(me)
    response = me.get("/account/password")
    assert response.status_code == 302 and "/reauth" in response.headers["Location"]
    wrong = me.post("/reauth?next=/account/password", {"password": "not-my-password"}, token_from="/reauth")
    assert wrong.status_code == 401
    ok = me.post("/reauth?next=/account/password", {"password": PASSWORD}, token_from="/reauth")
    assert ok.headers["Location"] == "/account/password"
    new_password = "orbit-lantern-meadow-77"
    changed = me.post("/account/password", {"password": new_password, "confirm": new_password},
                      token_from="/account/password")
    assert changed.status_code == 303
    assert me.get("/referrals").status_code == 200  # this session stays
    assert other.get("/referrals").status_code == 302  # the others end
    assert Browser(app.test_client()).login("liaison.a@example.org", new_password).status_code == 302


def test_email_change_needs_recent_auth(app, browser, web_world):
    browser.login("liaison.a@example.org")
    _age_auth(browser)
    assert "/reauth" in browser.get("/account/email").headers["Location"]


@pytest.mark.parametrize("email, message", [
    ("not-an-email", "must have an @-sign"),
    ("\uff4ciaison.b@example.org", "A user with this e-mail exists already."),  # a full-width l
])
def test_a_changed_address_is_checked_beside_the_field(app, browser, web_world, email, message):
    browser.login("liaison.a@example.org")
    response = browser.post("/account/email", {"email": email}, token_from="/account/email")
    assert response.status_code == 422
    error = re.search(r'<p class="error" id="email-error">([^<]*)</p>', response.get_data(as_text=True))
    assert error and message in error.group(1)
    assert _user(app, "liaison.a@example.org") is not None


def test_every_path_stores_and_finds_an_address_in_one_form(any_app, session, world):
    """Creation and the change check the address alike, and store it as sign-in looks it up:
    NFKC (full-width letters are plain ones) in lower case."""
    from app.models import Role
    from app.services import security, users
    from app.services.audit import SYSTEM

    passwords = any_app.extensions["handoff_passwords"]
    with pytest.raises(DomainError) as refused:
        users.create_user(session, SYSTEM, passwords, email="not-an-email", name="New", password=PASSWORD,
                          role=Role.VIEWER, agency_id=world.agencies["a"].id)
    assert refused.value.field == "email"
    for look_alike in ("\uff56iewer.a@example.org", "Viewer.A@Example.org"):  # a full-width v; capitals
        with pytest.raises(DomainError, match="exists already"):
            users.create_user(session, SYSTEM, passwords, email=look_alike, name="New", password=PASSWORD,
                              role=Role.VIEWER, agency_id=world.agencies["a"].id)
        with pytest.raises(DomainError, match="exists already"):
            security.change_email(session, SYSTEM, world.users["b_viewer"], look_alike)
    user = users.create_user(session, SYSTEM, passwords, email=" \uff2eew@Example.org ", name="New",
                             password=PASSWORD, role=Role.VIEWER, agency_id=world.agencies["a"].id)
    assert user.email == "new@example.org"
    assert users.find_by_email(session, "\uff2eEW@example.org") is user
    security.change_email(session, SYSTEM, user, "\uff2eewer@example.org")
    assert user.email == "newer@example.org"


def test_admin_actions_on_users_need_recent_auth(app, browser, web_world):
    browser.login("admin.a@example.org")
    _age_auth(browser)
    user_id = web_world.users["b_viewer"].id
    response = browser.post(f"/admin/users/{user_id}", {"name": "x", "role": "admin",
                                                        "agency_id": web_world.agencies["b"].id})
    assert response.status_code == 302 and "/reauth" in response.headers["Location"]
    assert _user(app, "viewer.b@example.org").role.value == "viewer"


# --- cookies and headers -----------------------------------------------------------------

def test_session_cookie_flags(app, browser, web_world):
    response = browser.login("liaison.a@example.org")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "remember_token" not in response.headers.get("Set-Cookie", "")


def test_production_cookies_are_secure_and_hsts_is_sent(database_urls, monkeypatch):
    monkeypatch.setenv("HANDOFF_SECRET_KEY", "x" * 32)
    monkeypatch.setenv("HANDOFF_MATCH_KEY_SECRET", "y" * 32)
    app = create_app({"DATABASE_URL": database_urls["sqlite"]}, config_name="production")
    assert app.config["SESSION_COOKIE_SECURE"] is True and app.config["SECRET_KEY"] == "x" * 32
    response = app.test_client().get("/login")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    app.extensions["handoff_db"]["engine"].dispose()


def test_settings_come_from_the_environment_at_start(database_urls, monkeypatch):
    monkeypatch.setenv("HANDOFF_SESSION_IDLE_MINUTES", "10")
    monkeypatch.setenv("HANDOFF_MFA_REQUIRED_ROLES", "admin,manager,liaison,viewer")
    app = create_app({"DATABASE_URL": database_urls["sqlite"]}, config_name="testing")
    assert app.config["SESSION_IDLE_TIMEOUT"] == timedelta(minutes=10)
    assert app.config["MFA_REQUIRED_ROLES"] == {"admin", "manager", "liaison", "viewer"}
    app.extensions["handoff_db"]["engine"].dispose()


def test_production_refuses_to_start_without_fixed_secrets(database_urls, monkeypatch):
    monkeypatch.delenv("HANDOFF_SECRET_KEY", raising=False)
    with pytest.raises(RuntimeError, match="HANDOFF_SECRET_KEY"):
        create_app({"DATABASE_URL": database_urls["sqlite"]}, config_name="production")


def test_security_headers(client):
    headers = client.get("/login").headers
    csp = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["Cache-Control"] == "no-store"
    assert "Strict-Transport-Security" not in headers  # only in production, behind TLS


def test_pages_have_no_inline_scripts_or_styles(browser, web_world):
    browser.login("admin.a@example.org")
    for path in ("/login", "/referrals", "/account", "/admin/users", "/admin/audit"):
        html = browser.get(path).get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
        assert " style=" not in html and " onclick=" not in html, path


# --- audit page --------------------------------------------------------------------------

def test_managers_see_their_agencys_trail_and_admins_everything(app, web_world):
    a = Browser(app.test_client())
    a.login("liaison.a@example.org")
    b = Browser(app.test_client())
    b.login("liaison.b@example.org")
    manager = Browser(app.test_client())
    manager.login("manager.a@example.org")
    csv_text = manager.get("/admin/audit.csv?action=auth.login").get_data(as_text=True)
    user_ids = {line.split(",")[2] for line in csv_text.splitlines()[1:]}
    assert str(web_world.users["a_liaison"].id) in user_ids
    assert str(web_world.users["b_liaison"].id) not in user_ids
    admin = Browser(app.test_client())
    admin.login("admin.a@example.org")
    csv_text = admin.get("/admin/audit.csv?action=auth.login").get_data(as_text=True)
    assert str(web_world.users["b_liaison"].id) in {line.split(",")[2] for line in csv_text.splitlines()[1:]}
    assert len(_actions(app, "audit.export")) == 2


def test_the_trail_names_each_entrys_user_and_agency_without_a_lookup_per_row(app, web_world):
    """Names, not bare ids; read with the entries, so a full page takes no more statements than
    a page of one entry."""
    Browser(app.test_client()).login("liaison.b@example.org")
    admin = Browser(app.test_client())
    admin.login("admin.a@example.org")
    with statements(app) as one_entry:
        page = admin.get("/admin/audit?action=auth.login&user_id=" + str(web_world.users["b_liaison"].id))
    rows = re.findall(r"<tr><td>\d+</td><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td>", page.get_data(as_text=True))
    assert rows == [("liaison b", "Bravo Police")]
    with statements(app) as full_page:
        page = admin.get("/admin/audit").get_data(as_text=True)
    rows = re.findall(r"<tr><td>\d+</td><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td>", page)
    assert len(rows) > 10 and ("admin a", "Alpha Police") in rows and ("-", "-") in rows  # the directory's setup
    assert len(full_page) == len(one_entry)


def test_the_export_names_each_entrys_user_and_agency_beside_their_ids(app, web_world):
    Browser(app.test_client()).login("liaison.b@example.org")
    admin = Browser(app.test_client())
    admin.login("admin.a@example.org")
    user_id = web_world.users["b_liaison"].id
    with statements(app) as one_entry:
        text = admin.get(f"/admin/audit.csv?action=auth.login&user_id={user_id}").get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["user_id"], r["user"], r["agency"], r["action"]) for r in rows] == [
        (str(user_id), "liaison b", "Bravo Police", "auth.login")]
    with statements(app) as whole_trail:
        rows = list(csv.DictReader(io.StringIO(admin.get("/admin/audit.csv").get_data(as_text=True))))
    assert len(rows) > 10 and {(r["user"], r["agency"]) for r in rows} >= {("admin a", "Alpha Police"), ("", "")}
    assert len(whole_trail) == len(one_entry)


def test_an_export_too_large_is_refused_whole_rather_than_cut(app, web_world, monkeypatch):
    from app.web.admin import views

    Browser(app.test_client()).login("liaison.a@example.org")
    manager = Browser(app.test_client())
    manager.login("manager.a@example.org")
    monkeypatch.setattr(views, "AUDIT_EXPORT_MAX", 1)
    response = manager.get("/admin/audit.csv?action=auth.login")
    assert response.status_code == 303 and response.location.endswith("/admin/audit?action=auth.login")
    page = manager.get(response.location).get_data(as_text=True)
    assert "More than 1 entries match these filters" in page
    assert _actions(app, "audit.export") == []
    monkeypatch.setattr(views, "AUDIT_EXPORT_MAX", 10_000)
    lines = manager.get("/admin/audit.csv?action=auth.login").get_data(as_text=True).splitlines()
    assert len(lines) == 1 + len(_actions(app, "auth.login"))


def test_the_trail_filters_days_in_the_viewers_time_zone(any_app):
    """The page shows times in the viewer's zone, so From and To are days there: an entry shown
    at 17:24 on 1 December in Los Angeles is one of that day's, though UTC's 2 December."""
    world = committed_world(any_app)
    with any_app.app_context():
        for action, at in (("test.before", datetime(2026, 12, 1, 7, 30)), ("test.first", datetime(2026, 12, 1, 8, 0)),
                           ("test.late", datetime(2026, 12, 2, 1, 24)), ("test.after", datetime(2026, 12, 2, 8, 0))):
            audit.record(db.session, audit.SYSTEM, action)
            db.session.execute(update(AuditEntry).where(AuditEntry.action == action)
                               .values(at=at.replace(tzinfo=timezone.utc)))
        db.session.execute(update(User).where(User.id == world.users["a_admin"].id)
                           .values(timezone="America/Los_Angeles"))
        db.session.commit()
    admin = Browser(any_app.test_client())
    admin.login("admin.a@example.org")
    html = admin.get("/admin/audit?action=test.&date_from=2026-12-01&date_to=2026-12-01").get_data(as_text=True)
    assert "Times in America/Los_Angeles, and From and To are days there" in html
    shown = re.findall(r"<td>(2026-[^<]*)</td>", html)
    assert shown == ["2026-12-01 17:24 PST", "2026-12-01 00:00 PST"]
    text = admin.get("/admin/audit.csv?action=test.&date_from=2026-12-01&date_to=2026-12-01").get_data(as_text=True)
    assert [(r["action"], r["at_utc"]) for r in csv.DictReader(io.StringIO(text))] == [
        ("test.late", "2026-12-02T01:24:00+00:00"), ("test.first", "2026-12-01T08:00:00+00:00")]
    [export] = _actions(any_app, "audit.export")
    assert json.loads(export.detail)["timezone"] == "America/Los_Angeles"


@pytest.mark.parametrize("user_id", ["9999999999999999999999999", "-9999999999999999999999999", "2147483648", "0"])
def test_a_user_id_no_user_can_have_is_a_filter_not_understood(any_app, user_id):
    """Ids run from 1 to 2**31 - 1, the column's range: a number past it failed in the query."""
    committed_world(any_app)
    admin = Browser(any_app.test_client())
    admin.login("admin.a@example.org")
    page = admin.get(f"/admin/audit?action=auth.login&user_id={user_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Some filters were not understood" in html and 'id="user_id-error"' in html
    assert "<td>admin a</td><td>Alpha Police</td>" in html  # the sign-in above: the other filters still apply
    export = admin.get(f"/admin/audit.csv?user_id={user_id}")
    assert export.status_code == 400 and "User id: No user has this id." in export.get_data(as_text=True)


@pytest.mark.parametrize("query, problem", [
    ("date_from=bad", "From: Not a valid date value."),
    ("action=auth&date_to=9999-12-31", "To: Choose a date from 2000-01-01 to 2099-12-31."),
    ("outcome=maybe", "Outcome: Not a valid choice."),
    ("user_id=abc", "User id: Not a valid integer value."),
])
def test_an_export_under_a_filter_not_understood_is_refused_and_not_audited(app, web_world, query, problem):
    """The page ignores such a filter and says so; a file cannot say so, and would pass for the
    filtered trail."""
    admin = Browser(app.test_client())
    admin.login("admin.a@example.org")
    response = admin.get(f"/admin/audit.csv?{query}")
    assert response.status_code == 400 and response.mimetype == "text/html"
    text = response.get_data(as_text=True)
    assert "The export was refused: some filters were not understood." in text and problem in text
    assert _actions(app, "audit.export") == []
    assert "not understood" not in admin.get("/admin/audit").get_data(as_text=True)  # nothing left to flash


def test_the_export_records_the_filters_it_applied(app, web_world):
    admin = Browser(app.test_client())
    admin.login("admin.a@example.org")
    assert admin.get("/admin/audit.csv?action=auth.login&outcome=&page=2&endpoint=x").status_code == 200
    [entry] = _actions(app, "audit.export")
    assert json.loads(entry.detail)["filters"] == {"action": "auth.login", "outcome": ""}


@pytest.mark.parametrize("role", ["liaison", "viewer"])
def test_the_trail_is_closed_to_other_roles(browser, web_world, role):
    browser.login(f"{role}.a@example.org")
    assert browser.get("/admin/audit").status_code == 403
    assert browser.get("/admin/audit.csv").status_code == 403


def test_audit_export_neutralises_formulas(app, web_world):
    from app.services.exports import to_csv

    text = to_csv(["a"], [["=1+1"], ["+SUM(A1)"], ["-2"], ["@cmd"], ["\tx"], ["plain"]])
    assert text.splitlines()[1:] == ["'=1+1", "'+SUM(A1)", "'-2", "'@cmd", "'\tx", "plain"]


def test_pruning_keeps_the_rest_of_the_chain_verifiable(app, web_world):
    with app.app_context():
        session = db.session
        total = session.query(AuditEntry).count()
        cutoff_entry = session.scalars(select(AuditEntry).order_by(AuditEntry.seq).offset(5).limit(1)).one()
        session.execute(update(AuditEntry).where(AuditEntry.seq < cutoff_entry.seq)
                        .values(at=utcnow() - timedelta(days=500)))
        session.commit()
        # the edit above broke those entries' hashes; pruning removes exactly them
        removed = audit.prune(session, utcnow() - timedelta(days=400))
        session.commit()
        assert removed == 5
        result = audit.verify(session)
        assert result.ok and result.checked == total - 5 + 1
