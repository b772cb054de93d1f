"""Deconfliction through the browser: subjects on the referral page, hits (list, detail,
acknowledge, resolve), the blind check, notifications and common identifiers; CSRF on, and
nothing of the other side's case on any page."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditEntry, Hit, HitStatus, Identifier, Notification, Subject
from app.services import subjects
from tests.factories import make_referral

CHARLIE_SECRETS = [
    "Charlie confidential summary text",
    "Charlie-only material note",
    "Charlie Holder Name",
    "charlie-only@example.org",
    "SHARED@example.org",  # Charlie's own spelling of the shared address
    "+64 21 555 0142",
    "+64215550142",
    "charlie_handle",
    "Intl Bureau",  # the receiver of Charlie's referral
]


@dataclass
class Case:
    ra_id: int
    ra_ref: str
    rc_id: int
    rc_ref: str
    hit_id: int


def _setup(app, world) -> Case:
    with app.app_context():
        session = db.session
        ra = make_referral(session, world, "sent", sender="a", receiver="b", summary="Alpha own summary.")
        rc = make_referral(session, world, "draft", sender="c", receiver="i",
                           summary="Charlie confidential summary text.",
                           material_description="Charlie-only material note.")
        subjects.add_subject(session, world.actor("a_liaison"), ra.id, "Alpha Holder Name",
                             "shared@example.org\nalpha-only@example.org")
        subjects.add_subject(session, world.actor("c_liaison"), rc.id, "Charlie Holder Name",
                             "SHARED@example.org\ncharlie-only@example.org\n+64 21 555 0142\n"
                             "username/discord: charlie_handle")
        hit = session.scalars(select(Hit)).one()
        case = Case(ra.id, ra.reference, rc.id, rc.reference, hit.id)
        session.commit()
        return case


def _html(response) -> str:
    return response.get_data(as_text=True)


def _assert_contact_only(html: str, case: Case, world) -> None:
    for secret in CHARLIE_SECRETS:
        assert secret not in html, secret
    assert "Charlie Customs" in html and "desk@c.example.org" in html and case.rc_ref in html


def test_pages_reveal_the_contact_card_and_nothing_of_the_other_case(app, browser, web_world):
    case = _setup(app, web_world)
    browser.login("liaison.a@example.org")

    listing = _html(browser.get("/hits"))
    _assert_contact_only(listing, case, web_world)
    assert "United Kingdom" in listing and "shared@example.org" in listing  # our own identifier

    response = browser.get(f"/hits/{case.hit_id}")
    assert response.status_code == 200
    detail = _html(response)
    _assert_contact_only(detail, case, web_world)
    assert "alpha-only@example.org" not in detail  # unmatched identifiers are not part of the hit

    referral = _html(browser.get(f"/referrals/{case.ra_id}"))
    _assert_contact_only(referral, case, web_world)
    assert "Alpha Holder Name" in referral and "alpha-only@example.org" in referral

    response = browser.post("/check", {"identifiers": "shared@example.org\n+64 21 555 0199", "kind": "",
                                       "platform": "", "jurisdiction": ""}, token_from="/check")
    assert response.status_code == 200
    check = _html(response)
    _assert_contact_only(check, case, web_world)
    assert "no hit" in check


def test_the_other_side_sees_its_own_identifiers_only(app, browser, web_world):
    case = _setup(app, web_world)
    browser.login("liaison.c@example.org")
    detail = _html(browser.get(f"/hits/{case.hit_id}"))
    assert "SHARED@example.org" in detail and "Alpha Police" in detail and case.ra_ref in detail
    for secret in ("Alpha own summary.", "Alpha Holder Name", "alpha-only@example.org", "Bravo Police"):
        assert secret not in detail


@pytest.mark.parametrize("email", ["liaison.b@example.org", "admin.b@example.org", "liaison.i@example.org"])
def test_hits_of_other_agencies_answer_404(app, browser, web_world, email):
    case = _setup(app, web_world)
    browser.login(email)
    assert browser.get(f"/hits/{case.hit_id}").status_code == 404
    assert browser.get(f"/hits/{case.hit_id + 1000}").status_code == 404
    assert browser.post(f"/hits/{case.hit_id}/acknowledge", {"version": "1"}).status_code == 404
    assert browser.post(f"/hits/{case.hit_id}/resolve", {"version": "1", "lead_agency_id": "1",
                                                          "note": "x"}).status_code == 404
    assert "No hits." in _html(browser.get("/hits"))
    with app.app_context():
        assert db.session.get(Hit, case.hit_id).status is HitStatus.NEW


def test_acknowledge_and_resolve_with_the_forms(app, browser, web_world):
    case = _setup(app, web_world)
    browser.login("liaison.a@example.org")
    page = f"/hits/{case.hit_id}"

    # Without the CSRF token nothing happens.
    response = browser.client.post(f"{page}/acknowledge", data={"version": "1"})
    assert response.status_code == 400
    with app.app_context():
        assert db.session.get(Hit, case.hit_id).acknowledged_low_at is None

    response = browser.post(f"{page}/acknowledge", {"version": "1"}, token_from=page)
    assert response.status_code == 303
    html = _html(browser.get(page))
    assert "Acknowledged. The other agency has been notified." in html
    assert 'action="/hits/%d/acknowledge"' % case.hit_id not in html

    # A stale version is refused with a message, not applied.
    response = browser.post(f"{page}/resolve", {"version": "1", "lead_agency_id": str(web_world.agencies["c"].id),
                                                 "note": "Agreed by phone."}, token_from=page)
    assert response.status_code == 303
    assert "This hit was changed" in _html(browser.get(page))

    with app.app_context():
        version = db.session.get(Hit, case.hit_id).version
    response = browser.post(f"{page}/resolve", {"version": str(version), "lead_agency_id": "", "note": ""},
                            token_from=page)
    assert response.status_code == 422
    response = browser.post(f"{page}/resolve", {"version": str(version),
                                                "lead_agency_id": str(web_world.agencies["b"].id),
                                                "note": "Bravo leads."}, token_from=page)
    assert response.status_code == 422 and "Not a valid choice" in _html(response)
    response = browser.post(f"{page}/resolve", {"version": str(version),
                                                "lead_agency_id": str(web_world.agencies["c"].id),
                                                "note": "Agreed by phone."}, token_from=page)
    assert response.status_code == 303
    html = _html(browser.get(page))
    assert "resolved" in html and "Agreed by phone." in html
    assert "Resolved. The other agency has been notified." in html
    with app.app_context():
        hit = db.session.get(Hit, case.hit_id)
        assert hit.status is HitStatus.RESOLVED and hit.lead_agency_id == web_world.agencies["c"].id
        actions = db.session.scalars(select(AuditEntry.action).where(AuditEntry.object_type == "hit")).all()
        assert "hit.acknowledge" in actions and "hit.resolve" in actions and "hit.view" in actions
    # A colleague's page, open from before: resolving again says why nothing happens.
    response = browser.post(f"{page}/resolve", {"version": str(version + 1),
                                                "lead_agency_id": str(web_world.agencies["a"].id),
                                                "note": "Alpha leads."}, token_from=page)
    assert response.status_code == 303 and "This hit is resolved already." in _html(browser.get(page))


@pytest.mark.parametrize("version", ["abc", "1.5", "-1", "\u0661"])
def test_a_hit_version_that_is_no_number_is_a_stale_page_not_an_error(app, browser, web_world, version):
    case = _setup(app, web_world)
    browser.login("liaison.a@example.org")
    page = f"/hits/{case.hit_id}"
    response = browser.post(f"{page}/acknowledge", {"version": version}, token_from=page)
    assert response.status_code == 303
    assert "This page was out of date" in _html(browser.get(page))
    response = browser.post(f"{page}/resolve", {"version": version, "lead_agency_id": str(web_world.agencies["a"].id),
                                                "note": "Alpha leads."}, token_from=page)
    assert response.status_code == 422 and "This page was out of date" in _html(response)
    with app.app_context():
        hit = db.session.get(Hit, case.hit_id)
        assert hit.status is HitStatus.NEW and hit.acknowledged_low_at is None and hit.acknowledged_high_at is None


def test_a_viewer_sees_hits_but_cannot_act(app, browser, web_world):
    case = _setup(app, web_world)
    browser.login("viewer.a@example.org")
    html = _html(browser.get(f"/hits/{case.hit_id}"))
    assert case.rc_ref in html and "Acknowledge</button>" not in html
    assert browser.get("/check").status_code == 403
    response = browser.post(f"/hits/{case.hit_id}/acknowledge", {"version": "1"})
    assert response.status_code == 403


def test_notifications_reach_both_agencies_with_an_unread_count(app, browser, web_world):
    case = _setup(app, web_world)
    for email, other_ref in (("liaison.a@example.org", case.rc_ref), ("liaison.c@example.org", case.ra_ref)):
        browser.login(email)
        assert "Notifications (1)" in _html(browser.get("/referrals"))
        html = _html(browser.get("/notifications"))
        assert "Deconfliction hit" in html and other_ref in html
        assert "Notifications (1)" not in _html(browser.get("/referrals"))
        browser.post("/logout", {})
    browser.login("liaison.b@example.org")
    assert "No notifications." in _html(browser.get("/notifications"))


def test_filters_of_the_hits_list(app, browser, web_world):
    case = _setup(app, web_world)
    browser.login("liaison.a@example.org")
    assert case.rc_ref in _html(browser.get("/hits?status=new&kind=email"))
    assert case.rc_ref not in _html(browser.get("/hits?status=resolved"))
    assert case.rc_ref not in _html(browser.get("/hits?kind=ip"))
    html = _html(browser.get("/hits?status=bogus"))
    assert "were not understood" in html and case.rc_ref in html


def _possible_duplicate(app, web_world, address: str) -> tuple[tuple[str, str], int]:
    """Two of Alpha's referrals holding the address: (their references, the hit's id)."""
    with app.app_context():
        first = make_referral(db.session, web_world, "draft", sender="a", receiver="b")
        second = make_referral(db.session, web_world, "draft", sender="a", receiver="c")
        for referral in (first, second):
            subjects.add_subject(db.session, web_world.actor("a_liaison"), referral.id, "Holder", address)
        found = (first.reference, second.reference), db.session.scalars(select(Hit.id)).one()
        db.session.commit()
    return found


def test_same_agency_match_is_shown_as_a_possible_duplicate(app, browser, web_world):
    refs, _hit_id = _possible_duplicate(app, web_world, "192.0.2.77")
    browser.login("liaison.a@example.org")
    html = _html(browser.get("/hits"))
    assert "possible duplicate" in html and all(ref in html for ref in refs)
    assert "Your own agency" in html


def test_acting_on_a_possible_duplicate_claims_no_notification(app, browser, web_world):
    _refs, hit_id = _possible_duplicate(app, web_world, "192.0.2.78")
    browser.login("liaison.a@example.org")
    page = f"/hits/{hit_id}"
    assert browser.post(f"{page}/acknowledge", {"version": "1"}, token_from=page).status_code == 303
    html = _html(browser.get(page))
    assert "Acknowledged." in html and "notified" not in html
    with app.app_context():
        version = db.session.get(Hit, hit_id).version
    response = browser.post(f"{page}/resolve", {"version": str(version), "lead_agency_id": str(web_world.agencies["a"].id),
                                                "note": "Kept the first."}, token_from=page)
    assert response.status_code == 303
    html = _html(browser.get(page))
    assert "Resolved." in html and "notified" not in html
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Notification)
                                 .where(Notification.hit_id == hit_id)) == 1  # the duplicate's, when it appeared


def _deconfliction_section(html: str) -> str:
    return re.search(r'<section class="card" id="hits">.*?</section>', html, re.DOTALL).group(0)


def test_a_referrals_page_shows_its_hits_relative_to_it_whoever_looks(app, browser, web_world):
    """Charlie leads the operation of Bravo's referral and may open it: there, the hit with
    Charlie's own referral names Charlie's referral as the other side, and Bravo's identifiers
    as the ones of this referral that matched, not the referral itself and Charlie's."""
    with app.app_context():
        rb = make_referral(db.session, web_world, "sent", sender="b", receiver="i",
                           operation_id=web_world.operation.id)
        rc = make_referral(db.session, web_world, "draft", sender="c", receiver="a")
        subjects.add_subject(db.session, web_world.actor("b_liaison"), rb.id, "Bravo Holder", "Shared@Example.org")
        subjects.add_subject(db.session, web_world.actor("c_liaison"), rc.id, "Charlie Holder", "SHARED@example.org")
        (rb_id, rb_ref), (rc_id, rc_ref) = (rb.id, rb.reference), (rc.id, rc.reference)
        db.session.commit()
    browser.login("liaison.c@example.org")
    section = _deconfliction_section(_html(browser.get(f"/referrals/{rb_id}")))
    assert f'href="/referrals/{rc_id}">{rc_ref}</a>' in section and "Your own agency" in section
    assert "Shared@Example.org" in section
    for wrong in (rb_ref, "Bravo Police", "SHARED@example.org"):
        assert wrong not in section, wrong
    section = _deconfliction_section(_html(browser.get(f"/referrals/{rc_id}")))
    assert rb_ref in section and "Bravo Police" in section and "SHARED@example.org" in section
    assert "Shared@Example.org" not in section and f'href="/referrals/{rb_id}"' not in section
    browser.post("/logout", {})
    browser.login("liaison.b@example.org")
    section = _deconfliction_section(_html(browser.get(f"/referrals/{rb_id}")))
    assert rc_ref in section and "Charlie Customs" in section and "Shared@Example.org" in section
    for secret in ("SHARED@example.org", "Charlie Holder", f'href="/referrals/{rc_id}"'):
        assert secret not in section, secret


# --- subjects on the referral page ----------------------------------------------------------

def test_add_a_subject_from_the_referral_page(app, browser, web_world):
    with app.app_context():
        referral = make_referral(db.session, web_world, "draft", sender="a", receiver="b")
        referral_id = referral.id
        db.session.commit()
    page = f"/referrals/{referral_id}"
    browser.login("liaison.a@example.org")
    assert "Add a subject" in _html(browser.get(page))

    response = browser.post(f"{page}/subjects", {"label": "Account holder one", "kind": "", "platform": "",
                                                 "identifiers": "someone@example.org\nnot a thing\n"},
                            token_from=page)
    assert response.status_code == 422
    html = _html(response)
    assert "line 2" in html and "cannot tell what kind" in html and "someone@example.org" in html

    response = browser.post(f"{page}/subjects", {"label": "Account holder one", "kind": "username",
                                                 "platform": "discord",
                                                 "identifiers": "@Holder_One\nemail: someone@example.org\n"
                                                                "phone: 021 555 0101"},
                            token_from=page)
    assert response.status_code == 303
    html = _html(browser.get(page))
    assert "Account holder one" in html and "saved with 3 identifiers" in html
    assert "holder_one" in html and "+61215550101" in html  # normalised; AU is the jurisdiction

    with app.app_context():
        subject_id = db.session.scalars(select(Subject.id)).one()
    more = f"{page}/subjects/{subject_id}/identifiers"
    response = browser.post(more, {"identifiers": "192.0.2.5\n2001:db8::5", "kind": "", "platform": ""},
                            token_from=more)
    assert response.status_code == 303
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Identifier)) == 5


@pytest.mark.parametrize("email, status", [("liaison.b@example.org", 403), ("viewer.a@example.org", 403),
                                           ("liaison.c@example.org", 404)])
def test_only_the_sending_agency_adds_subjects(app, browser, web_world, email, status):
    with app.app_context():
        referral = make_referral(db.session, web_world, "sent", sender="a", receiver="b")
        referral_id = referral.id
        db.session.commit()
    browser.login(email)
    response = browser.post(f"/referrals/{referral_id}/subjects",
                            {"label": "x", "identifiers": "someone@example.org", "kind": "", "platform": ""})
    assert response.status_code == status
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Subject)) == 0


# --- the blind check ------------------------------------------------------------------------

def test_blind_check_explains_bad_lines_and_checks_the_rest(app, browser, web_world):
    case = _setup(app, web_world)
    browser.login("liaison.b@example.org")
    response = browser.post("/check", {"identifiers": "shared@example.org\n999.1.1.1\nsomeone@@example\nbob",
                                       "kind": "", "platform": "", "jurisdiction": ""}, token_from="/check")
    assert response.status_code == 200
    html = _html(response)
    assert re.search(r"4 checked: 1 hit,\s+0 without a hit, 0 common, 3 invalid", html)
    assert "not a valid e-mail address" in html and "cannot tell what kind" in html
    assert "not a valid IP address" in html
    assert "Charlie Customs" in html and "Alpha Police" in html and case.rc_ref in html and case.ra_ref in html
    with app.app_context():
        entry = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "deconfliction.blind_check")).one()
        assert "shared@example.org" not in entry.detail


def test_blind_check_refuses_more_than_the_limit(app, browser, web_world):
    browser.login("liaison.a@example.org")
    lines = "\n".join(["192.0.2.1"] * 10_001)
    response = browser.post("/check", {"identifiers": lines, "kind": "ip", "platform": "", "jurisdiction": ""},
                            token_from="/check")
    assert response.status_code == 422
    html = _html(response)
    assert "At most 10,000 identifiers per check; this one has 10,001" in html
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(AuditEntry)
                                 .where(AuditEntry.action == "deconfliction.blind_check")) == 0


def test_blind_check_needs_its_csrf_token(app, browser, web_world):
    browser.login("liaison.a@example.org")
    response = browser.client.post("/check", data={"identifiers": "192.0.2.1"})
    assert response.status_code == 400
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(AuditEntry)
                                 .where(AuditEntry.action == "deconfliction.blind_check")) == 0


# --- common identifiers ---------------------------------------------------------------------

def _common_under_a_threshold_of_one(app, web_world, address: str) -> None:
    """Alpha's and Charlie's referrals hold the address, common under a threshold of 1."""
    app.config["COMMON_IDENTIFIER_THRESHOLD"] = 1
    with app.app_context():
        for sender, receiver in (("a", "b"), ("c", "i")):
            referral = make_referral(db.session, web_world, "draft", sender=sender, receiver=receiver)
            subjects.add_subject(db.session, web_world.actor(f"{sender}_liaison"), referral.id, "Holder", address)
        db.session.commit()
        assert db.session.scalar(select(func.count()).select_from(Hit)) == 0


def test_common_identifiers_are_listed_for_admins(app, browser, web_world):
    _common_under_a_threshold_of_one(app, web_world, "192.0.2.250")
    browser.login("admin.a@example.org")
    html = _html(browser.get("/admin/common-identifiers"))
    assert "192.0.2.250" in html and "more than 1 cases" in html
    browser.post("/logout", {})
    browser.login("liaison.a@example.org")
    assert browser.get("/admin/common-identifiers").status_code == 403
    response = browser.post("/check", {"identifiers": "192.0.2.250", "kind": "", "platform": "",
                                       "jurisdiction": ""}, token_from="/check")
    assert "Held by too many cases" in _html(response)


def test_an_admin_rechecks_the_common_identifiers_after_raising_the_threshold(app, browser, web_world):
    _common_under_a_threshold_of_one(app, web_world, "192.0.2.251")
    app.config["COMMON_IDENTIFIER_THRESHOLD"] = 2
    browser.login("admin.a@example.org")
    assert browser.client.post("/admin/common-identifiers/recheck", data={}).status_code == 400  # no CSRF token
    assert "192.0.2.251" in _html(browser.get("/admin/common-identifiers"))
    response = browser.post("/admin/common-identifiers/recheck", {}, token_from="/admin/common-identifiers",
                            follow_redirects=True)
    html = _html(response)
    assert "0 identifiers marked common (0 newly); 1 no longer common, raising 1 new hits." in html
    assert "192.0.2.251" not in html and "None." in html
    with app.app_context():
        [hit] = db.session.scalars(select(Hit)).all()
        assert {hit.agency_low_id, hit.agency_high_id} == {web_world.agencies["a"].id, web_world.agencies["c"].id}


def test_a_transferred_referral_shows_the_same_subjects(app, browser, web_world):
    from app.services import referrals as referrals_service

    with app.app_context():
        session = db.session
        original = make_referral(session, web_world, "draft", sender="a", receiver="b", handling_code="H1")
        subjects.add_subject(session, web_world.actor("a_liaison"), original.id, "Account holder one",
                             "someone@example.org")
        referrals_service.transition(session, web_world.actor("a_liaison"), original.id, "send", None)
        referrals_service.transition(session, web_world.actor("b_liaison"), original.id, "acknowledge", None)
        new = referrals_service.transition(session, web_world.actor("b_liaison"), original.id, "transfer", None,
                                           transfer_to_agency_id=web_world.agencies["i"].id)
        new_id = new.id
        session.commit()
    browser.login("liaison.i@example.org")
    html = _html(browser.get(f"/referrals/{new_id}"))
    assert "Account holder one" in html and "someone@example.org" in html
    assert "carried over from the transferred referral" in html
    assert "Add a subject" not in html  # Intl Bureau receives it; Bravo sends it


@pytest.mark.parametrize("page", ["99999999999999999999", "-3", "abc", "7"])
def test_a_page_number_past_the_end_shows_the_last_page(app, browser, web_world, page):
    browser.login("admin.a@example.org")  # the admin of agency a
    for path in ("/notifications", "/admin/common-identifiers"):
        response = browser.get(f"{path}?page={page}")
        assert response.status_code == 200, path
