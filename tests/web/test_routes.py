"""Every route of the URL map, called as anonymous and as each role, on objects of the
user's own agency and of another agency. A route without a rule here fails the suite, so
no page or action ships without a decided access policy.

Outcomes: "ok" (served or redirected within the site), "login" (sent to sign in), 403, 404.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from werkzeug.routing import IntegerConverter

from app.extensions import db
from app.models import Hit, Identifier, Referral, Status, Subject
from app.models.tip import TipImport, TipImportStatus
from app.services import subjects
from tests.conftest import Browser, csrf_token_from
from tests.factories import make_referral

ROLES = [None, "admin", "manager", "liaison", "viewer"]  # None: anonymous
WORKERS = {"manager", "liaison"}


def public(role, scope):
    return "ok"


def signed_in(role, scope):
    return "login" if role is None else "ok"


def signs_out(role, scope):
    # Anonymous: to the sign-in page; signed in: signed out, then to the sign-in page.
    return "login"


def pending_sign_in(role, scope):
    # Second-factor and enrolment pages without a password step first go back to sign-in.
    return "login"


def roles(*allowed):
    def policy(role, scope):
        if role is None:
            return "login"
        return "ok" if role in allowed else 403
    return policy


def scoped(allowed=None, own_forbidden=False):
    """Objects of another agency are 404 for everyone; own objects by role."""
    def policy(role, scope):
        if role is None:
            return "login"
        if scope == "other":
            return 404
        if own_forbidden:
            return 403
        return "ok" if allowed is None or role in allowed else 403
    return policy


POLICIES = {
    "static": public,
    "auth.login": public,
    "auth.second_factor": pending_sign_in,
    "auth.enrol": pending_sign_in,
    "auth.logout": signs_out,
    "auth.reauth": signed_in,
    "auth.account": signed_in,
    "auth.account_mfa": signed_in,
    "auth.reset_mfa": signed_in,
    "auth.change_email": signed_in,
    "auth.change_password": signed_in,
    "referrals.home": signed_in,
    "referrals.index": signed_in,
    "referrals.new": roles(*WORKERS),
    "referrals.detail": scoped(),
    "referrals.edit": scoped(WORKERS),
    "referrals.act": scoped(WORKERS),  # withdraw: the sender's step
    "referrals.consent": scoped(WORKERS),
    "referrals.outcome": scoped(own_forbidden=True),  # the receiver's step; we are the sender
    "referrals.add_subject": scoped(WORKERS),
    "referrals.add_identifiers": scoped(WORKERS),
    "hits.index": signed_in,
    "hits.notifications": signed_in,
    "hits.check": roles(*WORKERS),
    "hits.detail": scoped(),
    "hits.acknowledge": scoped(WORKERS),
    "hits.resolve": scoped(WORKERS),
    "hits.common_identifiers": roles("admin"),
    "hits.recheck_common_identifiers": roles("admin"),
    "admin.agencies": roles("admin"),
    "admin.agency_new": roles("admin"),
    "admin.agency_edit": roles("admin"),
    "admin.users_index": roles("admin"),
    "admin.user_new": roles("admin"),
    "admin.user_edit": roles("admin"),
    "admin.user_unlock": roles("admin"),
    "admin.user_reset_mfa": roles("admin"),
    "admin.operations": signed_in,
    "admin.operation_new": roles("admin", "manager"),
    "admin.audit_trail": roles("admin", "manager"),
    "admin.audit_export": roles("admin", "manager"),
    "dashboards.global_view": signed_in,
    "dashboards.global_export": signed_in,
    "dashboards.country_view": signed_in,
    "dashboards.country_export": signed_in,
    "dashboards.operation_view": signed_in,
    "dashboards.operation_export": signed_in,
    # Provider tips: lists are scoped (an agency sees its led operations' holders and those on
    # its referrals), the import is for liaison officers and managers. Holder pages take the
    # holder's subject id; the matrix's subjects are recorded by hand, not holders, so they are
    # 404 for everyone (tests/web/test_tips_web.py covers real holders, own and foreign).
    "tips.index": signed_in,
    "tips.upload": roles(*WORKERS),
    # Imports: the matrix's is agency c's (the operation's lead), seen by the officer who
    # started it only.
    "tips.import_status": lambda role, scope: "login" if role is None else 404,
    "tips.reject_file": lambda role, scope: "login" if role is None else 404,
    "tips.holders": signed_in,
    "tips.review": signed_in,
    "tips.unrouted": signed_in,
    "tips.holder": lambda role, scope: "login" if role is None else 404,
    "tips.set_jurisdiction": lambda role, scope: "login" if role is None else 404,
    "tips.set_risk": lambda role, scope: "login" if role is None else 404,
    "tips.leave_closed": lambda role, scope: "login" if role is None else 404,
}


def _rules(app):
    return sorted((r for r in app.url_map.iter_rules()), key=lambda r: (r.endpoint, r.rule))


def test_every_route_has_a_policy(app):
    missing = sorted({r.endpoint for r in _rules(app)} - set(POLICIES))
    assert not missing, f"routes without an access rule in tests/web/test_routes.py: {missing}"
    stale = sorted(set(POLICIES) - {r.endpoint for r in _rules(app)})
    assert not stale, f"rules for routes that no longer exist: {stale}"


@pytest.fixture
def objects(app, web_world):
    """Own objects (visible to agency a) and other objects (invisible to it)."""
    with app.app_context():
        session = db.session
        w = web_world
        own = make_referral(session, w, "sent", sender="a", receiver="b")
        own_subject = subjects.add_subject(session, w.actor("a_liaison"), own.id, "Holder", "shared.own@example.org")
        peer = make_referral(session, w, "sent", sender="c", receiver="i")
        subjects.add_subject(session, w.actor("c_liaison"), peer.id, "Holder", "shared.own@example.org")
        other = make_referral(session, w, "sent", sender="b", receiver="i")
        other_subject = subjects.add_subject(session, w.actor("b_liaison"), other.id, "Holder", "shared.other@example.org")
        other_peer = make_referral(session, w, "sent", sender="i", receiver="c")
        subjects.add_subject(session, w.actor("i_liaison"), other_peer.id, "Holder", "shared.other@example.org")
        # An import of agency c's liaison officer, with a reject file: its pages are real, and
        # still 404 for everyone else.
        foreign_import = TipImport(operation_id=w.operation.id, user_id=w.users["c_liaison"].id, file_name="tip.csv",
                                   status=TipImportStatus.REJECTED, error_count=1, errors=[[2, "email", "Bad."]],
                                   reject_csv="line,field,reason\r\n2,email,Bad.\r\n")
        session.add(foreign_import)
        session.commit()
        hit_of = lambda r: session.scalar(select(Hit.id).where((Hit.referral_low_id == r) | (Hit.referral_high_id == r)))  # noqa: E731
        ids = {
            "own": {"referral_id": own.id, "subject_id": own_subject.id, "hit_id": hit_of(own.id),
                    "agency_id": w.agencies["a"].id, "user_id": w.users["c_viewer"].id,
                    "import_id": foreign_import.id},
            "other": {"referral_id": other.id, "subject_id": other_subject.id, "hit_id": hit_of(other.id),
                      "agency_id": w.agencies["b"].id, "user_id": w.users["c_viewer"].id,
                      "import_id": foreign_import.id},
        }
    assert ids["own"]["hit_id"] and ids["other"]["hit_id"]
    return ids


FIXED_ARGS = {"action": "withdraw", "code": "AU", "table": None, "fmt": "csv", "filename": "app.css"}


def _url(app, rule, values: dict) -> str:
    args = {}
    for name in rule.arguments:
        if name in values:
            args[name] = values[name]
        elif name == "table":
            converter = rule._converters[name]
            args[name] = sorted(converter.items)[0]
        else:
            args[name] = FIXED_ARGS[name]
    with app.test_request_context():
        from flask import url_for

        return url_for(rule.endpoint, **args)


POST_DATA = {
    "version": "{version}", "note": "Route check.", "occurred_on": "2026-01-02", "arrests": "0", "charges": "0",
    "children_safeguarded": "0", "label": "x", "identifiers": "route.check@example.org", "kind": "",
    "lead_agency_id": "", "resolution_note": "Route check.", "code": "123456", "password": "not-the-password",
}


def _classify(response) -> object:
    if response.status_code in (403, 404):
        return response.status_code
    if response.status_code in (301, 302, 303) and "/login" in response.headers.get("Location", ""):
        return "login"
    assert response.status_code not in (400, 405, 500), (response.status_code, response.get_data(as_text=True)[:300])
    return "ok"


def _state(app) -> tuple:
    """What a GET must never change (the audit trail and session bookkeeping aside)."""
    with app.app_context():
        s = db.session
        return (s.scalar(select(func.count()).select_from(Referral)), s.scalar(select(func.sum(Referral.version))),
                s.scalar(select(func.count()).select_from(Subject)),
                s.scalar(select(func.count()).select_from(Identifier)),
                s.scalar(select(func.sum(Hit.version))), tuple(s.scalars(select(Referral.status).order_by(Referral.id))))


def _browser(app, role):
    browser = Browser(app.test_client())
    if role is not None:
        assert browser.login(f"{role}.a@example.org").status_code == 302
    return browser


def _matrix_cases():
    from app import create_app

    app = create_app({"DATABASE_URL": "sqlite://"}, config_name="testing")
    cases = []
    for rule in _rules(app):
        if rule.endpoint not in POLICIES:
            continue
        scopes = ["own", "other"] if set(rule.arguments) & {"referral_id", "subject_id", "hit_id"} else ["any"]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for scope in scopes:
                cases.append(pytest.param(rule.endpoint, rule.rule, method, scope,
                                          id=f"{method}-{rule.endpoint}-{scope}"))
    app.extensions["handoff_db"]["engine"].dispose()
    return cases


@pytest.mark.parametrize("endpoint, path, method, scope", _matrix_cases())
def test_route_answers_by_role_and_agency(app, objects, endpoint, path, method, scope):
    rule = next(r for r in app.url_map.iter_rules() if r.endpoint == endpoint and r.rule == path)
    values = objects["own" if scope == "any" else scope]
    policy = POLICIES[endpoint]
    failures = []
    for role in ROLES:
        browser = _browser(app, role)
        url = _url(app, rule, values)
        before = _state(app)
        if method == "GET":
            response = browser.get(url)
        else:
            token = csrf_token_from(browser.get("/login" if role is None else "/account").get_data(as_text=True))
            with app.app_context():
                version = db.session.get(Referral, values["referral_id"]).version
            data = {k: v.format(version=version) for k, v in POST_DATA.items()}
            response = browser.client.post(url, data={**data, "csrf_token": token})
        got, expected = _classify(response), policy(role, scope)
        if got != expected:
            failures.append(f"{role or 'anonymous'}: expected {expected}, got {got} ({response.status_code})")
        if method == "GET":
            assert _state(app) == before, f"GET {url} as {role} changed state"
    assert not failures, f"{method} {path} ({scope}):\n" + "\n".join(failures)


def test_guessing_ids_of_other_agencies_is_always_404(app, objects):
    browser = _browser(app, "manager")
    other = objects["other"]
    for path in (f"/referrals/{other['referral_id']}", f"/hits/{other['hit_id']}",
                 f"/referrals/{other['referral_id']}/subjects/{other['subject_id']}/identifiers",
                 f"/referrals/{other['referral_id']}/subjects", f"/referrals/{other['referral_id']}/edit"):
        assert browser.get(path).status_code == 404, path
    with app.app_context():
        referral = db.session.get(Referral, other["referral_id"])
        assert referral.status is Status.SENT
        reference = referral.reference
    assert reference not in browser.get("/referrals").get_data(as_text=True)
    assert reference not in browser.get("/hits").get_data(as_text=True)


def test_the_matrix_import_is_open_to_the_officer_who_started_it(app, objects):
    """The import the matrix refuses to everyone else exists: its starter reads it."""
    browser = Browser(app.test_client())
    assert browser.login("liaison.c@example.org").status_code == 302
    import_id = objects["own"]["import_id"]
    assert "tip.csv" in browser.get(f"/tips/imports/{import_id}").get_data(as_text=True)
    assert browser.get(f"/tips/imports/{import_id}/rejects.csv").get_data().startswith(b"\xef\xbb\xbfline,field")


def test_ids_and_pages_beyond_what_the_database_holds_are_not_errors(app, objects):
    """An id no column can hold matches no route (404, as any id out of reach), on every route
    with one; a page number past the last shows the last page."""
    browser = _browser(app, "manager")
    huge = 10**20  # beyond SQLite's 64 bits, as 2**31 is beyond PostgreSQL's integer
    checked = 0
    for rule in app.url_map.iter_rules():
        ints = [name for name, converter in rule._converters.items() if isinstance(converter, IntegerConverter)]
        if not ints or "GET" not in rule.methods:
            continue
        path = rule.rule
        for name in ints:
            path = path.replace(f"<int:{name}>", str(huge))
        assert browser.get(path).status_code == 404, path
        assert browser.get(path.replace(str(huge), str(2**31))).status_code == 404, path
        checked += 1
    assert checked >= 8
    for path in ("/referrals", "/hits", "/tips/holders", "/tips/review", "/tips/unrouted"):
        assert browser.get(f"{path}?page={huge}").status_code == 200, path
