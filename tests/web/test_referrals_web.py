"""Referrals through the browser: forms with CSRF, refusals beside the field, the lifecycle,
conflicts, and 404 for everything outside the user's scope."""

from __future__ import annotations

import re
from datetime import timedelta
from html.parser import HTMLParser
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, select

from app.db import utcnow
from app.extensions import db
from app.models import Priority, Referral, Status, Subject
from tests.conftest import Browser, committed_world, csrf_token_from
from tests.factories import make_referral


def _count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Referral))


def _make(app, world, status="sent", **kw) -> Referral:
    with app.app_context():
        referral = make_referral(db.session, world, status, **kw)
        db.session.commit()
        return referral


def _form(world, **overrides):
    data = {
        "receiver_agency_id": str(world.agencies["b"].id), "jurisdiction": "AU", "operation_id": "",
        "priority": "P1", "risk_access_to_children": "y", "grade_a": "0", "grade_b": "2", "grade_c": "3",
        "material_description": "Graded material, description held by sending agency.", "tlp": "RED",
        "handling_code": "H2", "summary": "Synthetic summary for a web test.",
    }
    data.update(overrides)
    return data


def test_liaison_creates_a_draft_with_the_form(app, browser, web_world):
    browser.login("liaison.a@example.org")
    response = browser.post("/referrals/new", _form(web_world), token_from="/referrals/new")
    assert response.status_code == 303
    page = browser.get(response.headers["Location"]).get_data(as_text=True)
    assert re.search(r"HND-\d{4}-\d{6}", page) and "draft" in page
    assert "Access to children" in page and "Synthetic summary for a web test." in page
    with app.app_context():
        referral = db.session.scalars(select(Referral)).one()
        assert referral.priority is Priority.P1 and referral.grade_c == 3
        assert referral.sender_agency_id == web_world.agencies["a"].id


@pytest.mark.parametrize("field, value, message", [
    ("jurisdiction", "XX", "Not a valid choice"),
    ("receiver_agency_id", "own", "Not a valid choice"),
    ("grade_a", "-1", "0 or more"),
    ("grade_b", "lots", "Not a valid integer"),
    ("summary", "x" * 4001, "4000"),
    ("material_description", "y" * 501, "500"),
    ("priority", "P9", "Not a valid choice"),
])
def test_bad_input_is_shown_beside_the_field_and_nothing_is_written(app, browser, web_world, field, value, message):
    browser.login("liaison.a@example.org")
    if value == "own":
        value = str(web_world.agencies["a"].id)
    response = browser.post("/referrals/new", _form(web_world, **{field: value}), token_from="/referrals/new")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    error = re.search(rf'<p class="error" id="{field}-error">([^<]*)</p>', html)
    assert error and message in error.group(1)
    assert _count(app) == 0


@pytest.mark.parametrize("field", ["priority", "tlp", "handling_code"])
def test_a_choice_left_out_is_refused_beside_the_field_not_defaulted(app, browser, web_world, field):
    browser.login("liaison.a@example.org")
    data = _form(web_world)
    del data[field]
    response = browser.post("/referrals/new", data, token_from="/referrals/new")
    assert response.status_code == 422
    error = re.search(rf'<p class="error" id="{field}-error">([^<]*)</p>', response.get_data(as_text=True))
    assert error and "This field is required." in error.group(1)
    assert _count(app) == 0


@pytest.mark.parametrize("character", ["\x00", "\x1b", "\x85"])  # NUL, escape, a C1 "next line"
def test_free_text_with_a_control_character_is_refused_beside_the_field(any_app, character):
    """PostgreSQL refuses a NUL in text: the form says so before the database would fail."""
    world = committed_world(any_app)
    with any_app.app_context():
        accepted = make_referral(db.session, world, "accepted")
        draft = make_referral(db.session, world, "draft")
        accepted_id, accepted_version, draft_id, draft_version = accepted.id, accepted.version, draft.id, draft.version
        db.session.commit()
    sender, receiver = Browser(any_app.test_client()), Browser(any_app.test_client())
    sender.login("liaison.a@example.org")
    receiver.login("liaison.b@example.org")
    text = f"Held{character}back."

    for field in ("summary", "material_description"):
        response = sender.post("/referrals/new", _form(world, **{field: text}), token_from="/referrals/new")
        assert response.status_code == 422
        error = re.search(rf'<p class="error" id="{field}-error">([^<]*)</p>', response.get_data(as_text=True))
        assert error and "control characters" in error.group(1)
    page = f"/referrals/{draft_id}"
    response = sender.post(f"{page}/subjects", {"label": text, "identifiers": "someone@example.org", "kind": "",
                                                "platform": ""}, token_from=page)
    assert response.status_code == 422 and 'id="label-error"' in response.get_data(as_text=True)
    sent = sender.post(f"{page}/send", {"version": draft_version, "note": text}, token_from=page)
    assert "control characters" in sender.get(sent.headers["Location"]).get_data(as_text=True)
    page = f"/referrals/{accepted_id}"
    recorded = receiver.post(f"{page}/outcomes", {"version": accepted_version, "occurred_on": utcnow().date().isoformat(),
                                                  "arrests": "1", "charges": "0", "children_safeguarded": "0",
                                                  "note": text}, token_from=page)
    assert "Note: Remove the control characters" in receiver.get(recorded.headers["Location"]).get_data(as_text=True)
    with any_app.app_context():
        assert _count(any_app) == 2 and db.session.get(Referral, draft_id).status is Status.DRAFT
        assert not db.session.get(Referral, accepted_id).outcomes
        assert db.session.scalar(select(func.count()).select_from(Subject)) == 0


def test_free_text_keeps_its_tabs_and_line_breaks(app, browser, web_world):
    browser.login("liaison.a@example.org")
    summary = "First line.\r\n\tIndented second line."
    response = browser.post("/referrals/new", _form(web_world, summary=summary), token_from="/referrals/new")
    assert response.status_code == 303
    with app.app_context():
        assert db.session.scalars(select(Referral.summary)).one() == summary


def test_form_without_csrf_token_is_refused(app, browser, web_world):
    browser.login("liaison.a@example.org")
    response = browser.client.post("/referrals/new", data=_form(web_world))
    assert response.status_code == 400
    assert "not sent from this site" in response.get_data(as_text=True)
    assert _count(app) == 0


def test_action_without_csrf_token_is_refused(app, browser, web_world):
    referral = _make(app, web_world, "draft")
    browser.login("liaison.a@example.org")
    browser.client.post(f"/referrals/{referral.id}/send", data={"version": referral.version})
    with app.app_context():
        assert db.session.get(Referral, referral.id).status is Status.DRAFT


def test_send_and_acknowledge_through_the_pages(app, client, web_world):
    referral = _make(app, web_world, "draft")
    sender = Browser(client)
    sender.login("liaison.a@example.org")
    page = sender.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert f'action="/referrals/{referral.id}/send"' in page
    response = sender.post(f"/referrals/{referral.id}/send", {"version": referral.version, "note": ""})
    assert response.status_code == 303
    page = sender.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert "is now sent" in page and "Acknowledge by" in page
    sender.post("/logout")

    receiver = Browser(client)
    receiver.login("liaison.b@example.org")
    page = receiver.get(f"/referrals/{referral.id}").get_data(as_text=True)
    version = re.search(r'name="version" type="hidden" value="(\d+)"', page).group(1)
    receiver.post(f"/referrals/{referral.id}/acknowledge", {"version": version})
    page = receiver.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert "is now acknowledged" in page
    assert "(sent → acknowledged)" in page and "liaison b" in page  # the timeline names who did it


def test_refused_transition_explains_itself(app, browser, web_world):
    referral = _make(app, web_world, "acknowledged")
    browser.login("liaison.b@example.org")
    response = browser.post(f"/referrals/{referral.id}/decline", {"version": referral.version, "note": ""})
    assert response.status_code == 303
    assert "Give a reason" in browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    with app.app_context():
        assert db.session.get(Referral, referral.id).status is Status.ACKNOWLEDGED


def test_a_transfer_waiting_for_the_senders_consent_is_not_offered_and_refused_on_the_page(app, browser, web_world):
    from app.models import HandlingCode

    referral = _make(app, web_world, "acknowledged", handling_code=HandlingCode.CONSENT_REQUIRED)
    browser.login("liaison.b@example.org")
    page = browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert f'action="/referrals/{referral.id}/transfer"' not in page
    assert "Onward transfer waits for Alpha Police's consent (handling code H2)" in page
    forced = browser.post(f"/referrals/{referral.id}/transfer", {
        "version": referral.version, "transfer_to_agency_id": web_world.agencies["c"].id, "note": "Theirs."})
    assert forced.status_code == 303  # back on the referral, told why: not an error page
    assert "requires the sender&#39;s consent" in browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    with app.app_context():
        assert db.session.get(Referral, referral.id).status is Status.ACKNOWLEDGED


def test_second_person_on_a_stale_page_sees_a_conflict(app, web_world):
    referral = _make(app, web_world, "sent")
    first, second = Browser(app.test_client()), Browser(app.test_client())
    first.login("liaison.b@example.org")
    second.login("manager.b@example.org")
    stale_version = referral.version
    first.post(f"/referrals/{referral.id}/acknowledge", {"version": stale_version})
    response = second.post(f"/referrals/{referral.id}/acknowledge", {"version": stale_version})
    assert response.status_code == 303
    page = second.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert "This referral was changed since you loaded the page" in page
    with app.app_context():
        events = [e.action for e in db.session.get(Referral, referral.id).events]
    assert events.count("acknowledge") == 1


@pytest.mark.parametrize("version", ["abc", "1.5", "-1", "١"])
def test_a_page_version_that_is_no_number_is_a_stale_page_not_an_error(app, browser, web_world, version):
    referral = _make(app, web_world, "draft")
    browser.login("liaison.a@example.org")
    sent = browser.post(f"/referrals/{referral.id}/send", {"version": version})
    assert sent.status_code == 303
    assert "This page was out of date" in browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    edited = browser.post(f"/referrals/{referral.id}/edit", _form(web_world, version=version, summary="Changed."),
                          token_from=f"/referrals/{referral.id}/edit")
    assert edited.status_code == 422 and "This page was out of date" in edited.get_data(as_text=True)
    with app.app_context():
        unchanged = db.session.get(Referral, referral.id)
        assert unchanged.status is Status.DRAFT and unchanged.summary != "Changed."


def test_edit_draft_keeps_a_concurrent_change(app, web_world):
    referral = _make(app, web_world, "draft")
    first, second = Browser(app.test_client()), Browser(app.test_client())
    first.login("liaison.a@example.org")
    second.login("manager.a@example.org")
    first_page = first.get(f"/referrals/{referral.id}/edit").get_data(as_text=True)
    second_page = second.get(f"/referrals/{referral.id}/edit").get_data(as_text=True)
    version = re.search(r'id="version" name="version" type="hidden" value="(\d+)"', first_page).group(1)
    assert version in second_page
    ok = first.post(f"/referrals/{referral.id}/edit", _form(web_world, version=version, summary="First change."),
                    token_from=f"/referrals/{referral.id}/edit")
    assert ok.status_code == 303
    lost = second.post(f"/referrals/{referral.id}/edit", _form(web_world, version=version, summary="Second change."),
                       token_from="/referrals")
    assert lost.status_code == 303
    assert "was changed since you loaded the page" in second.get(f"/referrals/{referral.id}").get_data(as_text=True)
    with app.app_context():
        assert db.session.get(Referral, referral.id).summary == "First change."


def test_outsiders_get_404_for_every_page_and_action(app, browser, web_world):
    referral = _make(app, web_world, "sent")
    browser.login("manager.i@example.org")
    assert browser.get(f"/referrals/{referral.id}").status_code == 404
    assert browser.get(f"/referrals/{referral.id}/edit").status_code == 404
    for action in ("send", "withdraw", "acknowledge", "accept", "decline", "transfer", "close", "consent", "outcomes"):
        response = browser.post(f"/referrals/{referral.id}/{action}", {"version": referral.version, "note": "x"})
        assert response.status_code == 404, action
    assert referral.reference not in browser.get("/referrals").get_data(as_text=True)
    assert browser.get("/referrals/999999").status_code == 404


def test_visible_but_not_yours_to_act_on_is_403(app, browser, web_world):
    referral = _make(app, web_world, "sent")
    browser.login("liaison.a@example.org")  # the sender cannot acknowledge
    response = browser.post(f"/referrals/{referral.id}/acknowledge", {"version": referral.version})
    assert response.status_code == 403
    with app.app_context():
        assert db.session.get(Referral, referral.id).status is Status.SENT


def test_viewer_reads_but_has_no_buttons(app, browser, web_world):
    referral = _make(app, web_world, "sent")
    browser.login("viewer.b@example.org")
    page = browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert referral.reference in page and "/acknowledge" not in page
    assert browser.get("/referrals/new").status_code == 403
    assert "New referral" not in browser.get("/referrals").get_data(as_text=True)


def test_list_marks_overdue_and_filters(app, browser, web_world):
    late = _make(app, web_world, "sent", priority=Priority.P1)
    fresh = _make(app, web_world, "sent", priority=Priority.P1)
    with app.app_context():
        db.session.get(Referral, late.id).sent_at = utcnow() - timedelta(hours=30)
        db.session.commit()
    browser.login("viewer.a@example.org")
    page = browser.get("/referrals?overdue=y").get_data(as_text=True)
    assert late.reference in page and fresh.reference not in page and "overdue" in page
    page = browser.get("/referrals?status=draft").get_data(as_text=True)
    assert late.reference not in page
    page = browser.get("/referrals?status=nonsense&page=-3").get_data(as_text=True)
    assert "were not understood" in page and late.reference in page
    elsewhere = _make(app, web_world, "sent", jurisdiction="NZ")
    page = browser.get("/referrals?jurisdiction=au").get_data(as_text=True)
    assert "not understood" not in page and late.reference in page and elsewhere.reference not in page


def test_list_pages(app, browser, web_world):
    app.config["PAGE_SIZE"] = 2
    refs = [_make(app, web_world, "draft").reference for _ in range(3)]
    browser.login("viewer.a@example.org")
    first = browser.get("/referrals?sort=reference&order=asc").get_data(as_text=True)
    second = browser.get("/referrals?sort=reference&order=asc&page=2").get_data(as_text=True)
    assert refs[0] in first and refs[1] in first and refs[2] not in first
    assert refs[2] in second and "Page 2 of 2" in second


class _FiltersAsSent(HTMLParser):
    """What a browser sends for the page's filter form untouched: each select's selected option
    (its first when none is), each text field's value, each ticked box."""

    def __init__(self):
        super().__init__()
        self.fields: list[tuple[str, str]] = []
        self._in_filters = False
        self._select: str | None = None
        self._options: list[tuple[str, bool]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and "filters" in (attrs.get("class") or ""):
            self._in_filters = True
        elif not self._in_filters:
            return
        elif tag == "select":
            self._select, self._options = attrs["name"], []
        elif tag == "option" and self._select:
            self._options.append((attrs.get("value", ""), "selected" in attrs))
        elif tag == "input" and (attrs.get("type") != "checkbox" or "checked" in attrs):
            self.fields.append((attrs["name"], attrs.get("value") or ""))

    def handle_endtag(self, tag):
        if tag == "form":
            self._in_filters = False
        elif tag == "select" and self._select:
            chosen = [value for value, selected in self._options if selected] or [self._options[0][0]]
            self.fields.append((self._select, chosen[-1]))
            self._select = None


def _apply_unchanged(browser, page: str):
    parser = _FiltersAsSent()
    parser.feed(page)
    return browser.get("/referrals?" + urlencode(parser.fields)).get_data(as_text=True)


def _listed(page: str) -> list[str]:
    return re.findall(r">(HND-\d{4}-\d{6})</a>", page)


def test_the_sort_control_shows_the_order_applied_and_apply_keeps_it(app, browser, web_world):
    """By default the list is sorted by when each referral last changed, newest first, which is
    not the order of references: the control says so, the column shows it, and pressing Apply
    without a change keeps that order (it re-sorted by reference)."""
    oldest, middle, newest = (_make(app, web_world, "sent") for _ in range(3))
    with app.app_context():
        db.session.get(Referral, oldest.id).summary = "Changed last."
        db.session.commit()
    browser.login("viewer.a@example.org")
    page = browser.get("/referrals").get_data(as_text=True)
    assert _listed(page) == [oldest.reference, newest.reference, middle.reference]
    assert re.search(r'<option selected value="updated">Updated</option>', page)
    assert "<th>Updated</th>" in page
    assert _listed(_apply_unchanged(browser, page)) == _listed(page)
    nonsense = browser.get("/referrals?sort=nonsense").get_data(as_text=True)
    assert "were not understood" in nonsense and _listed(nonsense) == _listed(page)
    assert _listed(_apply_unchanged(browser, nonsense)) == _listed(page)


def test_times_are_shown_in_the_viewers_time_zone(app, client, web_world):
    referral = _make(app, web_world, "sent")
    nz, au = Browser(app.test_client()), Browser(app.test_client())
    nz.login("viewer.a@example.org")
    au.login("viewer.b@example.org")
    nz_page = nz.get(f"/referrals/{referral.id}").get_data(as_text=True)
    au_page = au.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert re.search(r"NZ[DS]T", nz_page) and re.search(r"AE[DS]T", au_page)


def test_detail_view_is_audited(app, browser, web_world):
    from app.models import AuditEntry

    referral = _make(app, web_world, "sent")
    browser.login("viewer.b@example.org")
    browser.get(f"/referrals/{referral.id}")
    with app.app_context():
        entry = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "referral.view")).one()
        assert entry.object_id == str(referral.id) and entry.user_id == web_world.users["b_viewer"].id


def test_detail_writes_large_counts_with_thousands_separators(app, browser, web_world):
    referral = _make(app, web_world, "sent", grade_c=119111)
    browser.login("viewer.b@example.org")
    page = browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert re.search(r"<dt>Category C</dt><dd>119,111</dd>", page)


def test_outcome_form_records_once_and_refuses_what_cannot_be(app, browser, web_world):
    referral = _make(app, web_world, "accepted")
    browser.login("liaison.b@example.org")
    page = browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    token = csrf_token_from(page)
    version = re.search(r'name="version" type="hidden" value="(\d+)"', page).group(1)
    today = utcnow().date().isoformat()

    def post(**values):
        data = {"csrf_token": token, "version": version, "occurred_on": today, "arrests": "0", "charges": "0",
                "children_safeguarded": "0", **values}
        response = browser.client.post(f"/referrals/{referral.id}/outcomes", data=data)
        return browser.get(response.headers["Location"]).get_data(as_text=True)

    assert "from 0 to 1,000" in post(arrests="-2")
    assert "from 0 to 1,000" in post(children_safeguarded="9999999")
    assert "Choose a date from 2000-01-01" in post(occurred_on="0001-01-01")
    assert "Date: Not a valid date value." in post(occurred_on="2026-02-30")
    assert "Date: This field is required." in post(occurred_on="")
    assert "before the referral was sent" in post(occurred_on="2001-01-01")
    assert "Outcome recorded." in post(arrests="2", charges="1", children_safeguarded="1")
    assert "This referral was changed" in post(arrests="2", charges="1", children_safeguarded="1")
    with app.app_context():
        assert len(db.session.get(Referral, referral.id).outcomes) == 1  # the second submission was refused
    browser.post("/logout")
    sender = Browser(browser.client)
    sender.login("viewer.a@example.org")
    page = sender.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert today in page and "Record an outcome" not in page


def test_an_international_body_is_named_as_such_on_a_referral(app, browser, web_world):
    referral = _make(app, web_world, "sent", receiver="i")
    browser.login("liaison.a@example.org")
    page = browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert "Intl Bureau (international)" in page and "Intl Bureau (-)" not in page


def test_the_edit_page_of_a_referral_sent_already_leads_back_to_it(app, browser, web_world):
    referral = _make(app, web_world, "accepted")
    browser.login("liaison.a@example.org")
    response = browser.get(f"/referrals/{referral.id}/edit")
    assert response.status_code == 303 and response.headers["Location"].endswith(f"/referrals/{referral.id}")
    assert "was sent; only drafts are edited" in browser.get(f"/referrals/{referral.id}").get_data(as_text=True)


def test_a_referral_with_many_subjects_shows_them_a_page_at_a_time(app, browser, web_world, monkeypatch):
    """A tip's package can carry thousands of holders: the referral page shows a page of them."""
    from app.services import subjects

    monkeypatch.setattr(subjects, "SUBJECTS_PER_PAGE", 2)
    referral = _make(app, web_world, "sent")
    with app.app_context():
        actor = web_world.actor("a_liaison")
        for n in range(1, 6):
            subjects.add_subject(db.session, actor, referral.id, f"Person {n}", f"person{n}@example.org")
        db.session.commit()
    browser.login("liaison.b@example.org")
    first = browser.get(f"/referrals/{referral.id}").get_data(as_text=True)
    assert "Subjects (5)" in first and "person1@example.org" in first and "person3@example.org" not in first
    assert "Subjects 1 to 2 of 5" in first and "subjects_page=2#subjects" in first
    last = browser.get(f"/referrals/{referral.id}?subjects_page=99").get_data(as_text=True)
    assert "person5@example.org" in last and "person4@example.org" not in last and "Subjects 5 to 5 of 5" in last
    assert browser.get(f"/referrals/{referral.id}?subjects_page=abc").status_code == 200
