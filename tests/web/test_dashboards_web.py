"""Dashboards through the browser: pages, the map's links, bad filters named on the page,
404 for unknown countries, exports (CSV neutralised, JSON), each export on the audit trail,
and no page or export of an outsider moving when other agencies' referrals change."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import Agency, AgencyKind, AuditEntry, Priority, Referral
from tests.factories import make_referral

NOW = datetime(2026, 4, 9, 12, 0, tzinfo=timezone.utc)
GLOBAL_TABLES = ("headline", "countries")
COUNTRY_TABLES = ("funnel", "timeline", "priorities", "overdue", "receivers", "outcomes", "hits")


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    """Overdue and 'late by' depend on the time: pin it so that two requests compare."""
    monkeypatch.setattr("app.web.dashboards.views.utcnow", lambda: NOW)


def _make(app, world, status, sent=None, **kw) -> Referral:
    with app.app_context():
        referral = make_referral(db.session, world, status, **kw)
        if sent is not None:
            referral.sent_at = sent
        db.session.commit()
        return referral


def _exports(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "dashboard.export"))


def test_pages_show_the_figures_and_link_the_map(app, browser, web_world):
    _make(app, web_world, "sent", sent=NOW - timedelta(hours=100))  # a -> b, AU, overdue
    _make(app, web_world, "closed")
    browser.login("manager.a@example.org")
    response = browser.get("/dashboards/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "Referrals sent" in html and '<svg class="worldmap"' in html
    assert re.search(r'<a href="/dashboards/country/AU" aria-label="Australia: 2 referrals">', html)
    assert "The map as a table" in html and "<details>" in html
    assert 'style="' not in html and "<script" not in html and " onclick" not in html  # ready for a strict CSP
    assert 'href="/static/dashboards.css"' in html
    country = browser.get("/dashboards/country/AU").get_data(as_text=True)
    for heading in ("Status funnel", "Handoffs per month", "Priority mix", "Overdue", "Open deconfliction hits",
                    "Receiving agencies", "Outcomes"):
        assert heading in country
    assert "Bravo Police" in country and "1d 4h" in country  # sent 100 h ago, due after 72 h: 28 h late
    assert 'style="' not in country and "<script" not in country
    assert browser.get("/dashboards/country/au").headers["Location"].endswith("/dashboards/country/AU")
    assert browser.get("/dashboards/operation").status_code == 200
    operation = browser.get(f"/dashboards/operation?operation={web_world.operation.id}")  # a has none in LANTERN
    assert operation.status_code == 200 and "Unknown operation." in operation.get_data(as_text=True)


def test_nav_links_to_the_dashboards(app, browser, web_world):
    browser.login("viewer.b@example.org")
    assert 'href="/dashboards/"' in browser.get("/referrals").get_data(as_text=True)


@pytest.mark.parametrize("code", ["XX", "ZZ", "12", "NZL", "a"])
def test_unknown_country_is_404(app, browser, web_world, code):
    browser.login("viewer.a@example.org")
    assert browser.get(f"/dashboards/country/{code}").status_code == 404
    assert browser.get(f"/dashboards/country/{code}/overdue.csv").status_code == 404


def test_anonymous_is_sent_to_sign_in(app, client, web_world):
    for path in ("/dashboards/", "/dashboards/country/NZ", "/dashboards/countries.csv"):
        response = client.get(path)
        assert response.status_code in (302, 401) and "/login" in response.headers.get("Location", "/login")


@pytest.mark.parametrize("query, message", [
    ("sent_from=2026-03-10&sent_to=2026-03-01", "The end date is before the start date."),
    ("sent_from=10/03/2026", "Write the date as YYYY-MM-DD."),
    ("sent_to=2026-02-30", "Write the date as YYYY-MM-DD."),
    ("sent_from=20260301", "Write the date as YYYY-MM-DD."),
    ("operation=999999", "Unknown operation."),
    ("operation=abc", "Unknown operation."),
    ("operation=LANTERN_OF_C", "Unknown operation."),
    ("priority=P9", "Choose P1, P2, P3 or P4."),
])
@pytest.mark.parametrize("page", ["/dashboards/", "/dashboards/country/AU", "/dashboards/operation"])
def test_bad_filters_are_named_on_the_page_and_ignored(app, browser, web_world, query, message, page):
    _make(app, web_world, "sent")
    browser.login("viewer.b@example.org")  # b cannot see LANTERN (led by c, no referral of b in it)
    query = query.replace("LANTERN_OF_C", str(web_world.operation.id))
    response = browser.get(f"{page}?{query}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "Some filters were not understood and were ignored" in html and message in html
    assert 'role="alert"' in html


def test_export_under_a_bad_filter_is_refused_and_not_recorded(app, browser, web_world):
    browser.login("viewer.a@example.org")
    response = browser.get("/dashboards/countries.csv?sent_from=2026-03-10&sent_to=2026-03-01")
    assert response.status_code == 400
    assert "end date is before the start date" in response.get_data(as_text=True)
    assert _exports(app) == 0


def _problem(response, status: int) -> dict:
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    problem = response.get_json(force=True)
    assert problem["status"] == status and problem["title"]
    return problem


def test_json_exports_answer_errors_as_problem_json(app, browser, web_world):
    browser.login("viewer.a@example.org")
    refused = _problem(browser.get("/dashboards/countries.json?sent_from=2026-03-10&sent_to=2026-03-01"), 400)
    assert "end date is before the start date" in refused["detail"]
    assert "Unknown operation" in _problem(browser.get("/dashboards/operation/funnel.json?operation=abc"), 400)["detail"]
    assert "Choose an operation" in _problem(browser.get("/dashboards/operation/funnel.json"), 400)["detail"]
    _problem(browser.get("/dashboards/country/XX/overdue.json"), 404)
    _problem(browser.post("/dashboards/countries.json"), 405)
    assert _exports(app) == 0
    # The same mistakes on a page, or a CSV download, still answer a person.
    page = browser.get("/dashboards/country/XX")
    assert page.status_code == 404 and page.mimetype == "text/html"
    csv_export = browser.get("/dashboards/operation/funnel.csv")
    assert csv_export.status_code == 303 and csv_export.headers["Location"].startswith("/dashboards/operation")
    assert "Choose an operation" in browser.get(csv_export.headers["Location"]).get_data(as_text=True)


@pytest.mark.parametrize("query", ["sent_to=9999-12-31", "sent_from=0001-01-01", "sent_from=1999-12-31",
                                   "sent_to=2100-01-01"])
def test_dates_beyond_the_range_are_named_not_a_crash(app, browser, web_world, query):
    _make(app, web_world, "sent", sent=NOW - timedelta(days=3))
    browser.login("manager.a@example.org")
    for page in ("/dashboards/", "/dashboards/country/AU", "/dashboards/operation"):
        response = browser.get(f"{page}?{query}")
        assert response.status_code == 200
        assert "Choose a date from 2000-01-01 to 2099-12-31." in response.get_data(as_text=True)
    for export in ("/dashboards/countries.json", "/dashboards/country/AU/timeline.json"):
        assert "Choose a date from" in _problem(browser.get(f"{export}?{query}"), 400)["detail"]


def test_the_timeline_runs_over_the_filter_but_not_past_this_month(app, browser, web_world):
    _make(app, web_world, "sent", sent=NOW - timedelta(days=3))
    browser.login("manager.a@example.org")
    timeline = json.loads(browser.get("/dashboards/country/AU/timeline.json?sent_from=2000-01-01&sent_to=2099-12-31")
                          .get_data(as_text=True))
    months = [row["month"] for row in timeline["rows"]]
    assert months[0] == "2000-01" and months[-1] == "2026-04" and len(months) == 26 * 12 + 4
    assert sum(row["sent"] for row in timeline["rows"]) == 1


def test_a_country_code_in_lower_case_redirects_with_the_filters_only(app, browser, web_world):
    browser.login("manager.a@example.org")
    response = browser.get("/dashboards/country/au?code=GB&endpoint=x&_method=POST&_external=1&_anchor=x"
                           "&priority=P2&sent_from=not-a-date")
    assert response.status_code == 301
    assert response.headers["Location"] == "/dashboards/country/AU?priority=P2&sent_from=not-a-date"


def test_a_json_export_asks_a_stranger_to_sign_in_with_401(app, client, web_world):
    problem = _problem(client.get("/dashboards/countries.json"), 401)
    assert "Sign in" in problem["detail"]
    page = client.get("/dashboards/countries.csv")
    assert page.status_code == 302 and "/login?next=" in page.headers["Location"]


def test_filters_apply_to_pages_and_exports(app, browser, web_world):
    _make(app, web_world, "sent", priority=Priority.P1, sent=datetime(2026, 3, 5, tzinfo=timezone.utc))
    _make(app, web_world, "sent", priority=Priority.P3, sent=datetime(2026, 4, 5, tzinfo=timezone.utc))
    browser.login("viewer.a@example.org")
    rows = _csv(browser.get("/dashboards/countries.csv?priority=P1"))
    assert rows[1][:3] == ["AU", "Australia", "1"]
    rows = _csv(browser.get("/dashboards/country/AU/timeline.csv?sent_from=2026-04-01&sent_to=2026-04-30"))
    assert rows[1:] == [["2026-04", "1", "0", "0"]]
    page = browser.get("/dashboards/?priority=P1").get_data(as_text=True)
    assert 'href="/dashboards/country/AU?priority=P1"' in page  # the map keeps the filters
    assert "/dashboards/countries.csv?" in page and "priority=P1" in page


def _csv(response) -> list[list[str]]:
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    return list(csv.reader(io.StringIO(response.get_data(as_text=True))))


def test_csv_export_neutralises_formulas(app, browser, web_world):
    with app.app_context():
        evil = Agency(name="=HYPERLINK(\"http://x.example\",\"y\")", kind=AgencyKind.POLICE, country_code="AU",
                      desk_email="desk@evil.example.org", desk_phone="+61 2 5550 0000", timezone="UTC")
        db.session.add(evil)
        db.session.commit()
        evil_id = evil.id
    _make(app, web_world, "sent", receiver_agency_id=evil_id)
    browser.login("viewer.a@example.org")
    rows = _csv(browser.get("/dashboards/country/AU/receivers.csv"))
    assert rows[0][0] == "Agency"
    assert rows[1][0] == "'=HYPERLINK(\"http://x.example\",\"y\")"
    data = json.loads(browser.get("/dashboards/country/AU/receivers.json").get_data(as_text=True))
    assert data["rows"][0]["agency"].startswith("=HYPERLINK")  # JSON is data, not a spreadsheet


def test_every_export_is_on_the_audit_trail(app, browser, web_world):
    _make(app, web_world, "accepted")
    browser.login("viewer.a@example.org")
    expected = 0
    for table in GLOBAL_TABLES:
        for fmt in ("csv", "json"):
            assert browser.get(f"/dashboards/{table}.{fmt}").status_code == 200
            expected += 1
    for table in COUNTRY_TABLES:
        for fmt in ("csv", "json"):
            response = browser.get(f"/dashboards/country/AU/{table}.{fmt}?priority=P2")
            assert response.status_code == 200, (table, fmt)
            expected += 1
    assert browser.get(f"/dashboards/operation/funnel.json?operation={web_world.operation.id}").status_code == 400
    assert _exports(app) == expected
    with app.app_context():
        entry = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "dashboard.export")
                                   .order_by(AuditEntry.seq.desc())).first()
        detail = json.loads(entry.detail)
        alpha_id = db.session.scalar(select(Agency.id).where(Agency.name == "Alpha Police"))
    assert entry.object_id == "country:AU:hits" and entry.agency_id == alpha_id
    assert detail["format"] == "json" and detail["filters"]["priority"] == "P2" and detail["country"] == "AU"


def test_json_export_carries_its_filters(app, browser, web_world):
    _make(app, web_world, "sent", sent=NOW - timedelta(hours=80))
    browser.login("viewer.a@example.org")
    data = json.loads(browser.get("/dashboards/country/AU/overdue.json?priority=P2").get_data(as_text=True))
    assert data["dashboard"] == "country" and data["country"] == "AU" and data["table"] == "overdue"
    assert data["filters"]["priority"] == "P2" and data["generated_at"].startswith("2026-04-09T12:00")
    (row,) = data["rows"]
    assert row["hours_late"] == 8.0 and row["priority"] == "P2"


def test_operation_funnel_for_the_lead(app, browser, web_world):
    _make(app, web_world, "closed", operation_id=web_world.operation.id)
    browser.login("viewer.c@example.org")  # c leads LANTERN
    page = browser.get("/dashboards/operation").get_data(as_text=True)
    assert "LANTERN" in page
    html = browser.get(f"/dashboards/operation?operation={web_world.operation.id}").get_data(as_text=True)
    assert "Operation funnel: LANTERN" in html and "Accepted (investigations)" in html
    assert "Accounts in the tip" in html and "Account holders" in html
    rows = _csv(browser.get(f"/dashboards/operation/funnel.csv?operation={web_world.operation.id}"))
    assert rows[0][2:5] == ["Accounts", "Account holders", "Referrals"]
    assert rows[1][:9] == ["AU", "Australia", "0", "0", "1", "1", "1", "1", "0"]
    assert rows[-1][:2] == ["ALL", "All countries"]
    # Without an operation there is nothing to export: back to the picker, with a word why.
    response = browser.get("/dashboards/operation/funnel.csv")
    assert response.status_code == 303 and response.headers["Location"].endswith("/dashboards/operation")
    assert "Choose an operation to export" in browser.get("/dashboards/operation").get_data(as_text=True)


def _everything(browser, operation_ids) -> dict:
    result = {}
    for query in ("", "?priority=P2", "?sent_from=2026-01-01"):
        result[("map", query)] = re.search(r'<svg class="worldmap".*?</svg>', browser.get("/dashboards/" + query)
                                           .get_data(as_text=True), re.S).group(0)
        for table in GLOBAL_TABLES:
            for fmt in ("csv", "json"):
                result[(table, fmt, query)] = browser.get(f"/dashboards/{table}.{fmt}{query}").get_data(as_text=True)
        for code in ("AU", "NZ", "GB", "FR"):
            for table in COUNTRY_TABLES:
                for fmt in ("csv", "json"):
                    result[(code, table, fmt, query)] = browser.get(
                        f"/dashboards/country/{code}/{table}.{fmt}{query}").get_data(as_text=True)
    for operation_id in operation_ids:
        response = browser.get(f"/dashboards/operation/funnel.csv?operation={operation_id}")
        # An operation the agency cannot see is refused (400) before and after alike.
        result[("operation", operation_id)] = (response.status_code, response.get_data(as_text=True)
                                               if response.status_code == 200 else "")
    result["operation page"] = re.sub(r'value="[^"]*" name="csrf_token"|name="csrf_token"[^>]*>', "",
                                      browser.get("/dashboards/operation").get_data(as_text=True))
    return result


def test_outsiders_dashboards_and_exports_do_not_move(app, browser, web_world):
    """The international body i has referrals of its own. a, b and c then exchange referrals
    in its countries, in every status, with outcomes, overdue ones and in LANTERN: no figure
    and no export i can open changes."""
    _make(app, web_world, "accepted", sender="i", receiver="a", jurisdiction="NZ")
    _make(app, web_world, "sent", sender="i", receiver="b", jurisdiction="AU", sent=NOW - timedelta(hours=100))
    _make(app, web_world, "closed", sender="i", receiver="c", jurisdiction="FR")
    browser.login("manager.i@example.org")
    before = _everything(browser, [web_world.operation.id])
    assert "Australia" in before[("countries", "csv", "")]
    for status in ("draft", "sent", "acknowledged", "accepted", "closed", "declined", "withdrawn"):
        for sender, receiver, country in (("a", "b", "AU"), ("b", "a", "NZ"), ("c", "a", "FR"), ("a", "c", "GB")):
            _make(app, web_world, status, sender=sender, receiver=receiver, jurisdiction=country,
                  operation_id=web_world.operation.id if country == "FR" else None,
                  sent=NOW - timedelta(hours=90) if status == "sent" else None)
    after = _everything(browser, [web_world.operation.id])
    changed = [key for key in before if before[key] != after[key]]
    assert changed == []


def test_overdue_panel_shows_the_most_overdue_and_says_so_and_links_the_full_list(app, browser, web_world):
    """The panel shows the referrals sent earliest, which are the most overdue, not the latest."""
    late = [_make(app, web_world, "sent", sent=NOW - timedelta(hours=80 + hours), priority=Priority.P2).reference
            for hours in range(27)]
    browser.login("manager.a@example.org")
    html = browser.get("/dashboards/country/AU?priority=P2").get_data(as_text=True)
    panel = html[html.index('id="overdue-h"'):]
    panel = panel[:panel.index("</section>")]
    assert "The 25 most overdue of 27 are shown" in panel and "latest" not in panel
    assert re.findall(r">(HND-\d{4}-\d{6})</a>", panel)[:25] == late[:1:-1]
    link = re.search(r'<a href="([^"]+)">the referral list</a>', html).group(1).replace("&amp;", "&")
    assert "jurisdiction=AU" in link and "overdue=y" in link and "priority=P2" in link
    listed = browser.get(link).get_data(as_text=True)
    assert late[-1] in listed  # the most late first
    assert len(_csv(browser.get("/dashboards/country/AU/overdue.csv?priority=P2"))) == 1 + 27


def test_a_possible_duplicate_on_the_country_dashboard_names_no_other_agency(app, browser, web_world):
    """Two referrals of Alpha's to Australia hold the same identifier: the hit between them is a
    possible duplicate, not another agency to call."""
    from app.services import subjects

    with app.app_context():
        first = make_referral(db.session, web_world, "sent", sender="a", receiver="b")
        second = make_referral(db.session, web_world, "sent", sender="a", receiver="b")
        for referral in (first, second):
            subjects.add_subject(db.session, web_world.actor("a_liaison"), referral.id, "Holder", "twice@example.org")
        db.session.commit()
        alpha = db.session.get(Agency, web_world.agencies["a"].id)
        desk = alpha.desk_email
    browser.login("manager.a@example.org")
    page = browser.get("/dashboards/country/AU").get_data(as_text=True)
    hits = page[page.index('id="hits-h"'):]
    assert "Your own agency: a possible duplicate" in hits and desk not in hits
    header, *rows = _csv(browser.get("/dashboards/country/AU/hits.csv"))
    assert [row[header.index("Other agency")] for row in rows] == ["Your own agency: a possible duplicate"]
