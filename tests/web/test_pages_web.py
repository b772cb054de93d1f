"""Every paginated list, on both engines: a page number past the last shows the last page, and
one below the first or not a number the first, never an error page (the offset of a page number
of nineteen digits is no number SQLite or PostgreSQL takes); and a deep page of holders is
found without sorting every holder before it whole."""

from __future__ import annotations

import re

import pytest

from app.extensions import db
from app.services import subjects
from tests.conftest import Browser, committed_world
from tests.factories import make_referral
from tests.unit.test_tips_import import account, run_import, tip
from tests.web.statements import statements

LISTS = ("/referrals", "/hits", "/notifications", "/tips/holders", "/tips/review", "/tips/unrouted",
         "/admin/common-identifiers", "/admin/audit")
# Lists of several pages here, one row a page (notifications and common identifiers come 50 a
# page, more than this world has).
SEVERAL_PAGES = {"/referrals", "/hits", "/tips/holders", "/tips/review", "/tips/unrouted", "/admin/audit"}
PAST_THE_LAST = ("9223372036854775807", "99999999999999999999")
BEFORE_THE_FIRST = ("0", "-3", "abc", "1e3", "")


@pytest.fixture
def world(any_app):
    return committed_world(any_app)


@pytest.fixture
def admin_c(any_app, world, monkeypatch):
    """Charlie's admin, whose agency leads LANTERN, on lists of several pages: referrals, hits
    with Alpha, a tip's holders (some to review, some with no focal point) and the trail."""
    any_app.config["PAGE_SIZE"] = 1
    monkeypatch.setattr("app.web.admin.views.AUDIT_PAGE_SIZE", 1)
    with any_app.app_context():
        for n in range(3):
            own = make_referral(db.session, world, "sent", sender="c", receiver="i")
            subjects.add_subject(db.session, world.actor("c_liaison"), own.id, "Holder", f"shared{n}@example.org")
            alphas = make_referral(db.session, world, "sent", sender="a", receiver="b")
            subjects.add_subject(db.session, world.actor("a_liaison"), alphas.id, "Holder", f"shared{n}@example.org")
        run_import(db.session, world, tip(
            account(1, email="fr1@example.org", country_hint="FR", ip_country="FR"),
            account(2, email="fr2@example.org", country_hint="FR", ip_country="FR"),
            account(3, email="frau1@example.org", country_hint="FR", ip_country="AU"),
            account(4, email="frau2@example.org", country_hint="AU", ip_country="FR"),
        ))
        db.session.commit()
    browser = Browser(any_app.test_client())
    assert browser.login("admin.c@example.org").status_code == 302
    return browser


def _shown(browser, path: str, page: str) -> tuple[int, int]:
    response = browser.get(f"{path}?page={page}")
    assert response.status_code == 200, (path, page, response.status_code)
    shown = re.search(r"Page (\d+) of (\d+)", response.get_data(as_text=True))
    assert shown, (path, page)
    return int(shown.group(1)), int(shown.group(2))


@pytest.mark.parametrize("path", LISTS)
def test_a_page_number_out_of_range_shows_the_last_or_the_first_page(admin_c, path):
    first, pages = _shown(admin_c, path, "1")
    assert first == 1 and (pages > 1) == (path in SEVERAL_PAGES)
    for page in PAST_THE_LAST:
        assert _shown(admin_c, path, page) == (pages, pages), page
    for page in BEFORE_THE_FIRST:
        assert _shown(admin_c, path, page) == (1, pages), page


def test_a_subject_page_out_of_range_on_a_referral_shows_the_last_or_the_first(any_app, world, admin_c,
                                                                                monkeypatch):
    monkeypatch.setattr("app.services.subjects.SUBJECTS_PER_PAGE", 1)
    with any_app.app_context():
        referral = make_referral(db.session, world, "sent", sender="c", receiver="i")
        for n in range(3):
            subjects.add_subject(db.session, world.actor("c_liaison"), referral.id, "Subject", f"subject{n}@example.org")
        db.session.commit()
        path = f"/referrals/{referral.id}?subjects_page="
    for page in PAST_THE_LAST:
        assert "Subjects 3 to 3 of 3" in admin_c.get(path + page).get_data(as_text=True), page
    for page in BEFORE_THE_FIRST:
        assert "Subjects 1 to 1 of 3" in admin_c.get(path + page).get_data(as_text=True), page


def test_a_deep_page_of_holders_sorts_the_ids_before_it_not_the_holders_whole(any_app, world):
    """Page 3,600 of 90,000 holders took several times page 1: every holder before it was sorted
    with all its columns and the rows joined to it. The offset now runs over holder ids alone,
    and the page shows the same holders in the same order."""
    any_app.config["PAGE_SIZE"] = 2
    with any_app.app_context():
        run_import(db.session, world, tip(*(account(n, email=f"h{n}@example.org") for n in range(1, 8))))
        db.session.commit()
    lead = Browser(any_app.test_client())
    assert lead.login("viewer.c@example.org").status_code == 302
    with statements(any_app) as seen:
        page = lead.get("/tips/holders?page=3").get_data(as_text=True)
    assert re.findall(r">(H-\d{6})</a>", page) == ["H-000005", "H-000006"] and "Page 3 of 4" in page
    offsets = [statement for statement in seen if "OFFSET" in statement]
    assert offsets and all(re.match(r"SELECT tip_holders\.id\s+FROM tip_holders\s", statement)
                           and "LEFT OUTER JOIN" not in statement for statement in offsets), offsets
