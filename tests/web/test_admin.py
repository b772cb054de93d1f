"""Agencies, users and operations as an admin manages them."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import Agency, Operation, User
from tests.conftest import Browser, committed_world

AGENCY = {"name": "Delta Police", "kind": "police", "country_code": "FJ", "desk_email": "desk@delta.example.org",
          "desk_phone": "+679 555 0100", "timezone": "Pacific/Fiji"}


def test_admin_creates_an_agency(app, browser, web_world):
    browser.login("admin.a@example.org")
    response = browser.post("/admin/agencies/new", AGENCY, token_from="/admin/agencies/new")
    assert response.status_code == 303
    assert "Delta Police" in browser.get("/admin/agencies").get_data(as_text=True)
    with app.app_context():
        agency = db.session.scalar(select(Agency).where(Agency.name == "Delta Police"))
        assert agency.country_code == "FJ" and agency.desk_phone.startswith("+679")


@pytest.mark.parametrize("field, value, message", [
    ("country_code", "XX", "Not a valid choice"),
    ("country_code", "", "Unknown country code"),
    ("desk_email", "not-an-address", "e-mail"),
    ("desk_phone", "call me", "phone"),
    ("name", "Alpha Police", "Another agency"),
    ("name", "\uff21lpha Police", "Another agency"),  # a full-width A
    ("name", "ALPHA POL\u0130CE", "Another agency"),  # a dotted capital I
])
def test_bad_agency_input_is_shown_beside_the_field(app, browser, web_world, field, value, message):
    browser.login("admin.a@example.org")
    response = browser.post("/admin/agencies/new", {**AGENCY, field: value}, token_from="/admin/agencies/new")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert f'id="{field}-error"' in html and message.lower() in html.lower()
    with app.app_context():
        assert db.session.scalar(select(Agency).where(Agency.name == "Delta Police")) is None


def test_international_bodies_have_no_country(app, browser, web_world):
    browser.login("admin.a@example.org")
    response = browser.post("/admin/agencies/new", {**AGENCY, "kind": "international"},
                            token_from="/admin/agencies/new")
    assert response.status_code == 422 and "International bodies have no country" in response.get_data(as_text=True)
    ok = browser.post("/admin/agencies/new", {**AGENCY, "kind": "international", "country_code": ""},
                      token_from="/admin/agencies/new")
    assert ok.status_code == 303


@pytest.mark.parametrize("role", ["manager", "liaison", "viewer"])
def test_only_admins_manage_agencies_and_users(browser, web_world, role):
    browser.login(f"{role}.a@example.org")
    for path in ("/admin/agencies", "/admin/agencies/new", "/admin/users", "/admin/users/new",
                 f"/admin/users/{web_world.users['a_viewer'].id}"):
        assert browser.get(path).status_code == 403, path


def test_admin_creates_and_edits_a_user(app, browser, web_world):
    browser.login("admin.a@example.org")
    response = browser.post("/admin/users/new", {
        "email": "new@example.org", "name": "New", "role": "liaison",
        "agency_id": web_world.agencies["b"].id, "password": "short"}, token_from="/admin/users/new")
    assert response.status_code == 422 and 'id="password-error"' in response.get_data(as_text=True)
    response = browser.post("/admin/users/new", {
        "email": "new@example.org", "name": "New", "role": "liaison",
        "agency_id": web_world.agencies["b"].id, "password": "a-long-password-1"}, token_from="/admin/users/new")
    assert response.status_code == 303
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "new@example.org"))
    response = browser.post(f"/admin/users/{user.id}", {
        "name": "New Name", "role": "viewer", "agency_id": web_world.agencies["b"].id},
        token_from=f"/admin/users/{user.id}")
    assert response.status_code == 303
    with app.app_context():
        user = db.session.get(User, user.id)
        assert user.role.value == "viewer" and not user.is_active and user.name == "New Name"


@pytest.mark.parametrize("email, message", [
    ("not-an-email", "must have an @-sign"),
    ("\uff4ciaison.b@example.org", "A user with this e-mail exists already."),  # a full-width l
    ("LIAISON.B@EXAMPLE.ORG", "A user with this e-mail exists already."),
])
def test_a_new_users_address_is_checked_beside_the_field(app, browser, web_world, email, message):
    browser.login("admin.a@example.org")
    response = browser.post("/admin/users/new", {
        "email": email, "name": "New", "role": "liaison", "agency_id": web_world.agencies["b"].id,
        "password": "a-long-password-1"}, token_from="/admin/users/new")
    assert response.status_code == 422
    error = re.search(r'<p class="error" id="email-error">([^<]*)</p>', response.get_data(as_text=True))
    assert error and message in error.group(1)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(User).where(User.name == "New")) == 0


def test_admin_cannot_lock_themselves_out(browser, web_world):
    browser.login("admin.a@example.org")
    me = web_world.users["a_admin"].id
    response = browser.post(f"/admin/users/{me}", {"name": "Me", "role": "viewer", "is_active": "y",
                                                   "agency_id": web_world.agencies["a"].id},
                            token_from=f"/admin/users/{me}")
    assert response.status_code == 422


def test_managers_open_operations_led_by_their_agency(app, browser, web_world):
    browser.login("manager.b@example.org")
    response = browser.post("/admin/operations/new", {
        "code": "tide", "lead_agency_id": web_world.agencies["b"].id, "opened_on": "2026-03-01"},
        token_from="/admin/operations/new")
    assert response.status_code == 303
    assert "TIDE" in browser.get("/admin/operations").get_data(as_text=True)
    forged = browser.post("/admin/operations/new", {
        "code": "forged", "lead_agency_id": web_world.agencies["a"].id, "opened_on": "2026-03-01"},
        token_from="/admin/operations/new")
    assert forged.status_code == 422
    with app.app_context():
        assert db.session.scalar(select(Operation).where(Operation.code == "FORGED")) is None


def test_liaison_cannot_open_operations(browser, web_world):
    browser.login("liaison.b@example.org")
    assert browser.get("/admin/operations/new").status_code == 403


def test_dates_out_of_range_are_named_on_operation_and_audit_forms(app, browser, web_world):
    browser.login("manager.b@example.org")
    refused = browser.post("/admin/operations/new", {
        "code": "ancient", "lead_agency_id": web_world.agencies["b"].id, "opened_on": "0001-01-01"},
        token_from="/admin/operations/new")
    assert refused.status_code == 422 and "Choose a date from 2000-01-01 to 2099-12-31." in refused.get_data(as_text=True)
    assert "ANCIENT" not in browser.get("/admin/operations").get_data(as_text=True)
    for query in ("date_to=9999-12-31", "date_from=0001-01-01&date_to=2026-01-01"):
        trail = browser.get(f"/admin/audit?{query}")
        assert trail.status_code == 200 and "Some filters were not understood" in trail.get_data(as_text=True)
        export = browser.get(f"/admin/audit.csv?{query}")
        assert export.status_code == 400 and "Choose a date from 2000-01-01" in export.get_data(as_text=True)


def test_admins_list_every_operation_and_managers_their_own(any_app):
    """An administrator opens operations for any agency, and the list shows them every one; only
    those their agency takes part in lead on to its referrals, as for anyone else."""
    web_world = committed_world(any_app)
    browser = Browser(any_app.test_client())
    browser.login("admin.a@example.org")
    response = browser.post("/admin/operations/new", {
        "code": "reef", "lead_agency_id": web_world.agencies["b"].id, "opened_on": "2026-03-01"},
        token_from="/admin/operations/new")
    assert response.status_code == 303 and response.location.endswith("/admin/operations")
    assert "<td>REEF</td>" in browser.get(response.location).get_data(as_text=True)
    assert "REEF" not in browser.get("/referrals").get_data(as_text=True)  # no filter of Alpha's referrals
    # REEF is led by Bravo, LANTERN by Charlie.
    for email, linked, unlinked in (("admin.a@example.org", set(), {"REEF", "LANTERN"}),
                                    ("admin.c@example.org", {"LANTERN"}, {"REEF"}),
                                    ("manager.a@example.org", set(), set()),
                                    ("manager.b@example.org", {"REEF"}, set())):
        reader = Browser(any_app.test_client())
        reader.login(email)
        listed = reader.get("/admin/operations").get_data(as_text=True)
        assert {code for code in ("REEF", "LANTERN") if f">{code}</a></td>" in listed} == linked, email
        assert {code for code in ("REEF", "LANTERN") if f"<td>{code}</td>" in listed} == unlinked, email


def test_a_new_operation_is_proposed_as_opened_today_where_the_viewer_is(browser, web_world, monkeypatch):
    """20:00 UTC on 1 March is 09:00 on 2 March in Wellington, Alpha's time zone."""
    monkeypatch.setattr("app.web.admin.views.utcnow", lambda: datetime(2026, 3, 1, 20, 0, tzinfo=timezone.utc))
    browser.login("admin.a@example.org")
    html = browser.get("/admin/operations/new").get_data(as_text=True)
    assert re.search(r'name="opened_on"[^>]*value="2026-03-02"', html)


@pytest.mark.parametrize("opened_on, message", [
    ("2026-02-30", "Not a valid date value."),
    ("", "This field is required."),
])
def test_an_operations_date_is_refused_saying_what_is_wrong(app, browser, web_world, opened_on, message):
    browser.login("manager.b@example.org")
    refused = browser.post("/admin/operations/new", {
        "code": "leap", "lead_agency_id": web_world.agencies["b"].id, "opened_on": opened_on},
        token_from="/admin/operations/new")
    assert refused.status_code == 422
    errors = re.findall(r'<p class="error" id="opened_on-error">([^<]*)</p>', refused.get_data(as_text=True))
    assert errors == [message]
    with app.app_context():
        assert db.session.scalar(select(Operation).where(Operation.code == "LEAP")) is None


def test_admin_text_with_a_nul_is_refused_beside_the_field_on_either_engine(any_app):
    """PostgreSQL refuses a NUL in text: the admin forms say so before the database would fail,
    and an audit filter holding one is a filter not understood."""
    world = committed_world(any_app)
    admin = Browser(any_app.test_client())
    admin.login("admin.a@example.org")
    response = admin.post("/admin/agencies/new", {**AGENCY, "name": "Delta\x00Police"}, token_from="/admin/agencies/new")
    assert response.status_code == 422 and 'id="name-error"' in response.get_data(as_text=True)
    response = admin.post("/admin/users/new", {
        "email": "nul@example.org", "name": "N\x00", "role": "viewer", "agency_id": world.agencies["a"].id,
        "password": "a-long-password-1"}, token_from="/admin/users/new")
    assert response.status_code == 422 and 'id="name-error"' in response.get_data(as_text=True)
    manager = Browser(any_app.test_client())
    manager.login("manager.b@example.org")
    response = manager.post("/admin/operations/new", {
        "code": "tide", "lead_agency_id": world.agencies["b"].id, "opened_on": "2026-03-01",
        "description": "Tide\x00"}, token_from="/admin/operations/new")
    assert response.status_code == 422 and 'id="description-error"' in response.get_data(as_text=True)
    page = admin.get("/admin/audit?action=auth%00")
    assert page.status_code == 200 and "Some filters were not understood" in page.get_data(as_text=True)
    with any_app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Agency).where(Agency.name.like("Delta%"))) == 0
        assert db.session.scalar(select(func.count()).select_from(Operation).where(Operation.code == "TIDE")) == 0
