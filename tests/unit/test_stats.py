"""Dashboard figures on SQLite and PostgreSQL against a small dataset computed by hand:
counts, medians (odd and even), overdue and how late, the funnel, months, filters, open hits,
the access scope (no figure moves when referrals between other agencies change) and CSV
neutralisation."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from app.models import Hit, HitStatus, Outcome, Priority, Referral
from app.services import DomainError, NotFound, stats
from tests.factories import make_referral

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
NOW = T0 + timedelta(days=30)  # 2026-04-09 12:00 UTC
H = 3600


def _ref(session, world, status, *, sender="a", receiver="b", sent=T0, ack_h=None, accept_h=None, **overrides):
    """A referral walked to `status`, then given exact dates."""
    referral = make_referral(session, world, status, sender=sender, receiver=receiver, **overrides)
    referral.sent_at = sent
    if ack_h is not None:
        referral.acknowledged_at = sent + timedelta(hours=ack_h)
    if accept_h is not None:
        referral.accepted_at = sent + timedelta(hours=accept_h)
    session.flush()
    return referral


@pytest.fixture
def data(session, world):
    """a -> b, jurisdiction AU (b's country), and a -> c, jurisdiction GB.

    AU: acknowledged after 2, 4, 6 and 8 hours (median 5 h); accepted after 10 and 30 hours
    (median 20 h); two overdue (P1 sent 30 h ago: 6 h late; P2 sent 80 h ago: 8 h late), one
    sent inside its clock, one withdrawn, a draft that does not count.
    GB: acknowledged after 1, 3 and 5 hours (median 3 h)."""
    refs = {
        "r1": _ref(session, world, "acknowledged", ack_h=2),
        "r2": _ref(session, world, "accepted", ack_h=4, accept_h=10, operation_id=world.operation.id),
        "r3": _ref(session, world, "closed", ack_h=6, accept_h=30),
        "r4": _ref(session, world, "sent", priority=Priority.P1, sent=NOW - timedelta(hours=30)),
        "r5": _ref(session, world, "sent", priority=Priority.P2, sent=NOW - timedelta(hours=80)),
        "r6": _ref(session, world, "sent", priority=Priority.P2, sent=NOW - timedelta(hours=10)),
        "r7": _ref(session, world, "declined", ack_h=8),
        "r8": make_referral(session, world, "draft"),
        "r9": _ref(session, world, "withdrawn"),
        "g1": _ref(session, world, "acknowledged", receiver="c", ack_h=1),
        "g2": _ref(session, world, "acknowledged", receiver="c", ack_h=3),
        "g3": _ref(session, world, "acknowledged", receiver="c", ack_h=5),
    }
    # The closed referral's outcome (recorded by the factory: 1 arrest) also safeguarded two.
    outcome = session.query(Outcome).filter_by(referral_id=refs["r3"].id).one()
    outcome.children_safeguarded = 2
    session.flush()
    return refs


def _row(dashboard, code):
    return next(r for r in dashboard.countries if r.code == code)


def test_global_figures_by_hand(session, world, data):
    dashboard = stats.global_dashboard(session, world.users["a_viewer"], stats.Filters(), now=NOW)
    au, gb = _row(dashboard, "AU"), _row(dashboard, "GB")
    assert (au.referrals, au.open, au.overdue, au.acknowledged, au.accepted_now, au.investigations) == (8, 5, 2, 4, 1, 2)
    assert (au.declined, au.transferred, au.withdrawn, au.arrests, au.children_safeguarded) == (1, 0, 1, 1, 2)
    assert au.median_ack_seconds == 5 * H  # even count: mean of 4 h and 6 h
    assert au.median_accept_seconds == 20 * H  # mean of 10 h and 30 h
    assert gb.median_ack_seconds == 3 * H  # odd count: the middle one
    assert gb.median_accept_seconds is None
    h = dashboard.headline
    assert (h.sent, h.acknowledged, h.overdue, h.accepted_now, h.investigations) == (11, 7, 2, 1, 2)
    assert (h.arrests, h.children_safeguarded, h.countries) == (1, 2, 2)
    assert [r.code for r in dashboard.countries] == ["AU", "GB"]  # most referrals first


def test_country_sorting_keeps_empty_medians_last(session, world, data):
    dashboard = stats.global_dashboard(session, world.users["a_viewer"], stats.Filters(), now=NOW,
                                       sort="median_accept", descending=False)
    assert [r.code for r in dashboard.countries] == ["AU", "GB"]
    dashboard = stats.global_dashboard(session, world.users["a_viewer"], stats.Filters(), now=NOW,
                                       sort="country", descending=True)
    assert [r.code for r in dashboard.countries] == ["GB", "AU"]  # United Kingdom, Australia


def test_country_dashboard_by_hand(session, world, data):
    d = stats.country_dashboard(session, world.users["a_viewer"], "au", stats.Filters(), now=NOW)
    assert d.code == "AU"
    assert [(s.key, s.count) for s in d.funnel] == [("sent", 8), ("acknowledged", 4), ("accepted", 2), ("closed", 1)]
    assert [(s.key, s.count) for s in d.exits] == [("awaiting", 3), ("withdrawn", 1), ("declined", 1),
                                                  ("transferred", 0)]
    assert (d.median_ack_seconds, d.median_accept_seconds) == (5 * H, 20 * H)
    assert {p.priority: (p.referrals, p.overdue) for p in d.priorities} == {
        "P1": (1, 1), "P2": (7, 1), "P3": (0, 0), "P4": (0, 0)}
    # Most late first, with how late each is.
    assert [(o.reference, o.late_seconds) for o in d.overdue] == [
        (data["r5"].reference, 8 * H), (data["r4"].reference, 6 * H)]
    assert d.overdue_total == 2
    assert [(m.month, m.sent, m.acknowledged, m.accepted) for m in d.months] == [
        ("2026-03", 5, 4, 2), ("2026-04", 3, 0, 0)]
    (receiver,) = d.receivers
    assert (receiver.name, receiver.referrals, receiver.open, receiver.overdue) == ("Bravo Police", 8, 5, 2)
    assert (receiver.median_ack_seconds, receiver.median_accept_seconds) == (5 * H, 20 * H)
    (outcome,) = d.outcomes
    assert (outcome.investigations, outcome.reports, outcome.arrests, outcome.children_safeguarded) == (2, 1, 1, 2)
    assert d.outcome_totals.arrests == 1
    assert d.hits == []


def test_month_gaps_are_filled(session, world):
    _ref(session, world, "sent", sent=datetime(2026, 1, 31, 23, 0, tzinfo=timezone.utc))
    _ref(session, world, "sent", sent=datetime(2026, 4, 1, 0, 30, tzinfo=timezone.utc))
    d = stats.country_dashboard(session, world.users["a_viewer"], "AU", stats.Filters(), now=NOW)
    assert [(m.month, m.sent) for m in d.months] == [("2026-01", 1), ("2026-02", 0), ("2026-03", 0), ("2026-04", 1)]


def test_filters_narrow_every_figure(session, world, data):
    user = world.users["a_viewer"]
    p1 = stats.global_dashboard(session, user, stats.Filters(priority=Priority.P1), now=NOW)
    assert p1.headline.sent == 1 and p1.headline.overdue == 1 and [r.code for r in p1.countries] == ["AU"]
    april = stats.country_dashboard(session, user, "AU", stats.Filters(sent_from=date(2026, 4, 1)), now=NOW)
    assert april.totals.referrals == 3 and april.median_ack_seconds is None
    # Both ends are inclusive UTC days: r1..r3, r7 and r9 were sent on 10 March at noon.
    march = stats.global_dashboard(session, user, stats.Filters(sent_from=date(2026, 3, 10),
                                                                sent_to=date(2026, 3, 10)), now=NOW)
    assert march.headline.sent == 8  # five to AU, three to GB
    in_operation = stats.global_dashboard(session, user, stats.Filters(operation_id=world.operation.id), now=NOW)
    assert in_operation.headline.sent == 1 and in_operation.headline.accepted_now == 1


def test_bad_filters_are_refused(session, world, data):
    user = world.users["a_viewer"]
    with pytest.raises(DomainError, match="end date is before the start") as refused:
        stats.check_filters(session, user, stats.Filters(sent_from=date(2026, 3, 2), sent_to=date(2026, 3, 1)))
    assert refused.value.field == "sent_to"
    # An operation that does not exist and one the agency cannot see look the same.
    for operation_id in (world.operation.id, 999_999):
        with pytest.raises(DomainError, match="Unknown operation"):
            stats.check_filters(session, world.users["i_viewer"], stats.Filters(operation_id=operation_id))
    stats.check_filters(session, user, stats.Filters(operation_id=world.operation.id))  # a has a referral in it
    with pytest.raises(NotFound):
        stats.country_dashboard(session, user, "XX", stats.Filters(), now=NOW)


def test_operation_funnel_by_hand(session, world, data):
    # c leads LANTERN and sees its referrals (r2 only), though it neither sent nor received them.
    d = stats.operation_dashboard(session, world.users["c_viewer"], stats.Filters(operation_id=world.operation.id))
    assert d.operation_code == "LANTERN"
    assert [(r.code, r.referrals, r.acknowledged, r.investigations) for r in d.rows] == [("AU", 1, 1, 1)]
    assert [(s.key, s.count) for s in d.funnel] == [
        ("accounts", 0), ("holders", 0), ("referrals", 1), ("acknowledged", 1), ("accepted", 1), ("arrests", 0),
        ("children_safeguarded", 0)]
    with pytest.raises(DomainError, match="Unknown operation"):
        stats.operation_dashboard(session, world.users["i_viewer"], stats.Filters(operation_id=world.operation.id))


def test_lead_agency_sees_its_operation_and_partners_only_their_own(session, world, data):
    c = stats.global_dashboard(session, world.users["c_viewer"], stats.Filters(), now=NOW)
    assert {r.code: r.referrals for r in c.countries} == {"AU": 1, "GB": 3}  # r2 by leading; g1-g3 received
    b = stats.global_dashboard(session, world.users["b_viewer"], stats.Filters(), now=NOW)
    assert {r.code: r.referrals for r in b.countries} == {"AU": 8}
    i = stats.global_dashboard(session, world.users["i_viewer"], stats.Filters(), now=NOW)
    assert i.countries == [] and i.headline.sent == 0


def _hit(session, first: Referral, second: Referral, status=HitStatus.NEW) -> Hit:
    low, high = sorted((first, second), key=lambda r: r.id)
    hit = Hit(referral_low_id=low.id, referral_high_id=high.id, agency_low_id=low.sender_agency_id,
              agency_high_id=high.sender_agency_id, status=status)
    session.add(hit)
    session.flush()
    return hit


def test_open_hits_show_on_the_own_referrals_country_only(session, world, data):
    theirs = _ref(session, world, "sent", sender="c", receiver="b", jurisdiction="FR")
    hit = _hit(session, data["r1"], theirs)
    _hit(session, data["r2"], _ref(session, world, "sent", sender="c", receiver="b", jurisdiction="FR"),
         status=HitStatus.RESOLVED)
    a_au = stats.country_dashboard(session, world.users["a_viewer"], "AU", stats.Filters(), now=NOW)
    assert [(h.hit_id, h.own_reference, h.other_agency, h.other_reference) for h in a_au.hits] == [
        (hit.id, data["r1"].reference, "Charlie Customs", theirs.reference)]
    assert a_au.hits[0].other_desk_email == "desk@c.example.org"
    # c sees it on its own referral's country (FR), never on AU: that would tell c where a's
    # referral is. b received r1 but is no party to the hit.
    assert stats.country_dashboard(session, world.users["c_viewer"], "AU", stats.Filters(), now=NOW).hits == []
    c_fr = stats.country_dashboard(session, world.users["c_viewer"], "FR", stats.Filters(), now=NOW)
    assert [(h.own_reference, h.other_reference) for h in c_fr.hits] == [(theirs.reference, data["r1"].reference)]
    assert stats.country_dashboard(session, world.users["b_viewer"], "AU", stats.Filters(), now=NOW).hits == []


def _everything(session, user) -> dict:
    """Every table of every dashboard an agency can open, as exported."""
    filters = [stats.Filters(), stats.Filters(priority=Priority.P1), stats.Filters(sent_from=date(2026, 3, 1))]
    result = {}
    for f in filters:
        key = repr(f)
        result[("global", key)] = {n: t.rows for n, t in stats.global_dashboard(session, user, f, now=NOW).tables().items()}
        for code in ("AU", "NZ", "GB", "FR", "DE"):
            d = stats.country_dashboard(session, user, code, f, now=NOW, overdue_limit=None)
            result[(code, key)] = {n: t.rows for n, t in d.tables().items()}
    for operation in stats.filter_operations(session, user):
        d = stats.operation_dashboard(session, user, stats.Filters(operation_id=operation.id))
        result[("operation", operation.id)] = {n: t.rows for n, t in d.tables().items()}
    result["operations"] = [o.code for o in stats.filter_operations(session, user)]
    return result


def test_no_figure_moves_when_other_agencies_referrals_change(session, world):
    """i (an outsider to a, b and c) has referrals of its own; then a, b and c exchange
    referrals in every status, in i's countries and in LANTERN, with outcomes, overdue ones
    and hits. Nothing i can open changes."""
    _ref(session, world, "accepted", sender="i", receiver="a", jurisdiction="NZ", ack_h=3, accept_h=9)
    _ref(session, world, "sent", sender="i", receiver="b", jurisdiction="AU", sent=NOW - timedelta(hours=100))
    mine = _ref(session, world, "acknowledged", sender="i", receiver="c", jurisdiction="FR", ack_h=7)
    user = world.users["i_viewer"]
    before = _everything(session, user)
    assert before[("global", repr(stats.Filters()))]["headline"][0] == ["referrals_sent", 3]

    # (Not "transferred": the factory transfers onward to i, which then rightly sees it.)
    for status in ("draft", "sent", "acknowledged", "accepted", "closed", "declined", "withdrawn"):
        for sender, receiver, country in (("a", "b", "AU"), ("b", "a", "NZ"), ("c", "a", "FR"), ("a", "c", "DE")):
            acknowledged = status in ("acknowledged", "accepted", "closed", "declined")
            _ref(session, world, status, sender=sender, receiver=receiver, jurisdiction=country,
                 sent=NOW - timedelta(hours=90), ack_h=5 if acknowledged else None,
                 accept_h=11 if status in ("accepted", "closed") else None,
                 operation_id=world.operation.id if country == "FR" else None)
    other = _ref(session, world, "sent", sender="a", receiver="b", jurisdiction="FR")
    _hit(session, other, _ref(session, world, "sent", sender="c", receiver="b", jurisdiction="FR"))
    _hit(session, other, mine)  # a hit with i's referral: i sees it, not the other side's figures

    after = _everything(session, user)
    # The one expected change: the new hit on i's own referral (FR), seen as a contact card.
    hits_fr = after[("FR", repr(stats.Filters()))]["hits"]
    for key in [k for k in after if k[0] == "FR"]:
        after[key].pop("hits")
        assert before[key].pop("hits") == []
    assert after == before
    assert len(hits_fr) == 1 and hits_fr[0][4] == "Alpha Police"  # only the contact card of the other side


def test_csv_cells_that_spreadsheets_would_run_are_neutralised():
    table = stats.Table("t", "T", [("a", "=Label"), ("b", "B")], [
        ["=SUM(A1:A9)", 1], ["+44 20", -3], ["-1+1", 2.5], ["@cmd", None], ["\tTab", 0], ["\rReturn", 0],
        ["Plain, with comma", 7],
    ])
    lines = stats.to_csv(table).split("\r\n")
    assert lines[0] == "'=Label,B"
    assert lines[1:8] == ["'=SUM(A1:A9),1", "'+44 20,-3", "'-1+1,2.5", "'@cmd,", "'\tTab,0", "\"'\rReturn\",0",
                          '"Plain, with comma",7']


def test_exports_are_recorded_on_the_audit_trail(session, world, data):
    from app.models import AuditEntry
    from app.services.audit import Actor

    d = stats.country_dashboard(session, world.users["a_viewer"], "AU", stats.Filters(priority=Priority.P2), now=NOW)
    stats.record_export(session, Actor(world.users["a_viewer"], "127.0.0.1"), "country", d.tables()["overdue"], "csv",
                        d.filters, {"country": "AU"})
    entry = session.query(AuditEntry).filter_by(action="dashboard.export").one()
    assert entry.object_type == "dashboard" and entry.object_id == "country:AU:overdue"
    assert '"format": "csv"' in entry.detail and '"priority": "P2"' in entry.detail and '"rows": 1' in entry.detail


def test_operation_funnel_starts_from_the_tips_accounts_and_holders(session, world, data):
    """Five accounts of a LANTERN tip: two sharing an e-mail (one holder) and one more in AU,
    one in GB, one with no evidence of a country (not placed yet)."""
    from tests.unit.test_tips_import import account, run_import, tip

    run_import(session, world, tip(
        account(1, email="shared@example.org", uploads_a="3"), account(2, email="shared@example.org"),
        account(3, uploads_a="1"),
        account(4, country_hint="GB", ip_country="GB"),
        account(5, country_hint="", ip_country=""),
    ))
    d = stats.operation_dashboard(session, world.users["c_viewer"], stats.Filters(operation_id=world.operation.id))
    assert [(r.code, r.accounts, r.holders, r.referrals) for r in d.rows] == [
        ("AU", 3, 2, 1), ("GB", 1, 1, 0), (stats.UNPLACED, 1, 1, 0)]
    assert d.rows[-1].name == "Not placed yet"
    assert [(s.key, s.count) for s in d.funnel][:3] == [("accounts", 5), ("holders", 4), ("referrals", 1)]
    table = d.tables()["funnel"]
    assert table.rows[0][:6] == ["AU", "Australia", 3, 2, 1, 1] and table.rows[-1][:4] == ["ALL", "All countries", 5, 4]
    # The priority filter applies to the holders' triage as well as to the referrals.
    by_priority = {p: stats.operation_dashboard(session, world.users["c_viewer"],
                                                stats.Filters(operation_id=world.operation.id, priority=p)).total
                   for p in Priority}
    assert sum(t.holders for t in by_priority.values()) == 4 and by_priority[Priority.P1].holders == 0
    assert sum(t.referrals for t in by_priority.values()) == 1


def test_receivers_have_their_own_medians_and_the_country_all_of_them(session, world, data):
    """AU gets two more referrals, received by c: acknowledged after 12 and 14 hours, one
    accepted after 40 and one declined. b keeps its medians (5 h, 20 h); c's are 13 h and
    40 h; the country's are over all six acknowledgements and three acceptances."""
    _ref(session, world, "accepted", receiver="c", jurisdiction="AU", ack_h=12, accept_h=40)
    _ref(session, world, "declined", receiver="c", jurisdiction="AU", ack_h=14)
    d = stats.country_dashboard(session, world.users["a_viewer"], "AU", stats.Filters(), now=NOW)
    by_name = {r.name: r for r in d.receivers}
    assert [r.name for r in d.receivers] == ["Bravo Police", "Charlie Customs"]  # most referrals first
    bravo, charlie = by_name["Bravo Police"], by_name["Charlie Customs"]
    assert (bravo.median_ack_seconds, bravo.median_accept_seconds) == (5 * H, 20 * H)
    assert (charlie.referrals, charlie.acknowledged, charlie.investigations, charlie.declined) == (2, 2, 1, 1)
    assert (charlie.median_ack_seconds, charlie.median_accept_seconds) == (13 * H, 40 * H)
    assert (d.median_ack_seconds, d.median_accept_seconds) == (7 * H, 30 * H)  # 2,4,6,8,12,14 / 10,30,40
