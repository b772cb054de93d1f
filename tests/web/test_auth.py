"""Signing in and out, CSRF, and the `next` redirect."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEntry
from tests.conftest import Browser, committed_world


def test_sign_in_and_out(browser, web_world):
    response = browser.login("liaison.a@example.org")
    assert response.status_code == 302 and response.headers["Location"].endswith("/referrals")
    page = browser.get("/referrals").get_data(as_text=True)
    assert "liaison a" in page and "Alpha Police" in page
    response = browser.post("/logout")
    assert response.status_code == 302
    assert browser.get("/referrals").status_code == 302  # back to the sign-in page


def test_pages_need_a_signed_in_user(client, web_world):
    response = client.get("/referrals")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


@pytest.mark.parametrize("email, password", [
    ("liaison.a@example.org", "wrong-password-123"),
    ("nobody@example.org", "correct-horse-battery"),
])
def test_failed_sign_in_does_not_reveal_whether_the_account_exists(app, browser, web_world, email, password):
    response = browser.login(email, password)
    assert response.status_code == 401
    assert "Invalid e-mail or password." in response.get_data(as_text=True)
    with app.app_context():
        failures = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "auth.login",
                                                               AuditEntry.outcome == "failure")).all()
    assert len(failures) == 1


def test_an_address_with_a_nul_is_refused_before_it_is_looked_up(any_app):
    """PostgreSQL refuses a NUL in text: the sign-in form says so instead of failing."""
    committed_world(any_app)
    response = Browser(any_app.test_client()).login("liaison.a\x00@example.org")
    assert response.status_code == 422
    assert 'id="email-error"' in response.get_data(as_text=True)


def test_disabled_account_gets_the_same_message(app, browser, web_world):
    with app.app_context():
        user = db.session.get(type(web_world.users["a_liaison"]), web_world.users["a_liaison"].id)
        user.is_active = False
        db.session.commit()
    response = browser.login("liaison.a@example.org")
    assert response.status_code == 401 and "Invalid e-mail or password." in response.get_data(as_text=True)


def test_sign_in_without_csrf_token_is_refused(client, web_world):
    response = client.post("/login", data={"email": "liaison.a@example.org", "password": "correct-horse-battery"})
    assert response.status_code == 400
    assert client.get("/referrals").status_code == 302


def test_sign_out_without_csrf_token_is_refused(browser, web_world):
    browser.login("liaison.a@example.org")
    assert browser.client.post("/logout").status_code == 400
    assert browser.get("/referrals").status_code == 200


@pytest.mark.parametrize("target, expected", [
    ("/admin/operations", "/admin/operations"),
    ("https://evil.example/", "/referrals"),
    ("//evil.example/path", "/referrals"),
    ("/\\evil.example", "/referrals"),
    ("javascript:alert(1)", "/referrals"),
])
def test_next_only_leads_to_this_site(browser, web_world, target, expected):
    response = browser.login("liaison.a@example.org", next_path=target)
    assert response.status_code == 302
    assert response.headers["Location"] == expected


def test_logout_is_not_possible_with_get(browser, web_world):
    browser.login("liaison.a@example.org")
    assert browser.get("/logout").status_code == 405
