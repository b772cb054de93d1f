"""PostgreSQL lock order: two people (or a person and an import) acting at once on rows both
touch. Each test holds one side inside a service, after its first locks, while the other side
runs: one must wait for the other, and neither be broken off as a deadlock
(docs/architecture.md, "Row locks let references through, and the audit chain comes in one
order")."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from app.models import Agency, Hit, Holder, Operation, Referral, User
from app.services import deconfliction, directory, referrals, subjects
from app.services.audit import Actor
from app.services.tips import bulk
from app.services.tips import holders as holder_service
from app.services.tips.importer import import_tip
from tests.factories import build_world, draft_data, make_referral
from tests.unit.test_tips_import import (
    _draft_of, _sent_package, account, holder_of, known_to_alpha, run_import, tip,
)


def _race(first, second, holding, timeout=30):
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except Exception as exc:  # what the test reports
                errors.append(repr(exc)[:400])
        return run

    a = threading.Thread(target=wrap(first))
    a.start()
    assert holding.wait(15)
    b = threading.Thread(target=wrap(second))
    b.start()
    a.join(timeout)
    b.join(timeout)
    return errors


def _deciding(make_session, lead_id: int, subject_id: int):
    """The lead's decision on a holder (its jurisdiction set to NZ), in a session of its own."""
    def decide():
        with make_session() as s:
            holder_service.set_jurisdiction(s, Actor(s.get(User, lead_id), "t"), subject_id, "NZ")
            s.commit()
    return decide


def _transferring(make_session, user_id: int, referral_id: int, to_agency_id: int):
    """That user's transfer of the referral to the agency, in a session of its own."""
    def transfer():
        with make_session() as s:
            referrals.transition(s, Actor(s.get(User, user_id), "t"), referral_id, "transfer", None,
                                 transfer_to_agency_id=to_agency_id)
            s.commit()
    return transfer


def _pause(monkeypatch, module, name, user_id, holding, seconds=1.5):
    original = getattr(module, name)

    def paused(actor, *args, **kwargs):  # require_worker(actor, ...): after the step's first locks
        if actor.user_id == user_id:
            holding.set()
            time.sleep(seconds)
        return original(actor, *args, **kwargs)

    monkeypatch.setattr(module, name, paused)


@pytest.mark.parametrize("other", ["a person's new draft", "an import's new draft"])
def test_a_transfer_vs_a_new_draft(pg_app, monkeypatch, other):
    """Both reserve a reference: the transfer before the audit chain, as a draft (an import's
    too) reserves its own before writing its audit entries."""
    make_session = pg_app.extensions["handoff_db"]["sessionmaker"]
    with make_session() as setup:
        world = build_world(setup, pg_app.extensions["handoff_passwords"])
        ref = make_referral(setup, world, status="acknowledged", sender="a", receiver="b",
                            handling_code=referrals.HandlingCode.ONWARD_PERMITTED)
        setup.commit()
        ref_id, b_id, a_id, c_agency = ref.id, world.users["b_liaison"].id, world.users["a_liaison"].id, \
            world.agencies["c"].id
        data = draft_data(world, "b")
    holding = threading.Event()
    _pause(monkeypatch, referrals, "require_worker", b_id, holding)

    transfer = _transferring(make_session, b_id, ref_id, c_agency)

    def new_draft():
        with make_session() as s:
            if other == "a person's new draft":
                referrals.create_draft(s, Actor(s.get(User, a_id), "t"), data)
            else:
                run_import(s, world, tip(account(1, email="new@example.org", uploads_a="1")))
            s.commit()

    assert _race(transfer, new_draft, holding) == []


@pytest.mark.parametrize("step", ["subject", "consent"])
def test_a_senders_step_on_a_sent_tip_referral_vs_an_import_raising_it(pg_app, monkeypatch, step):
    """The import raises the sent referral after writing its own audit entries; the sender's
    step (a subject added, consent given) takes the chain before the referral."""
    make_session = pg_app.extensions["handoff_db"]["sessionmaker"]
    with make_session() as setup:
        world = build_world(setup, pg_app.extensions["handoff_passwords"])
        _holder, sent = _sent_package(setup, world, datetime.now(timezone.utc))
        setup.commit()
        sent_id, c_id = sent.id, world.users["c_liaison"].id
    holding = threading.Event()
    _pause(monkeypatch, subjects if step == "subject" else referrals, "require_worker", c_id, holding, seconds=2)

    def senders_step():
        with make_session() as s:
            lead = Actor(s.get(User, c_id), "t")
            if step == "subject":
                subjects.add_subject(s, lead, sent_id, "Extra", "zz@example.org")
            else:
                referrals.grant_transfer_consent(s, lead, sent_id, None)
            s.commit()

    def do_import():
        with make_session() as s:  # raises the package to P2, and drafts a new holder first
            run_import(s, world, tip(account(9, email="p@example.org", uploads_a="12"),
                                     account(10, email="fresh@example.org", uploads_a="1")), file_name="b.csv")
            s.commit()

    assert _race(senders_step, do_import, holding) == []


def test_agency_rename_vs_receiver_step(pg_app, monkeypatch):
    """Acknowledge (receiver b): head -> referral -> insert event (KEY SHARE on agency b).
    Admin renames b: UPDATE agencies (FOR UPDATE: name is unique) -> head."""
    make_session = pg_app.extensions["handoff_db"]["sessionmaker"]
    with make_session() as setup:
        world = build_world(setup, pg_app.extensions["handoff_passwords"])
        ref = make_referral(setup, world, status="sent", sender="a", receiver="b")
        setup.commit()
        ref_id, b_id, admin_id, b_agency = ref.id, world.users["b_liaison"].id, world.users["a_admin"].id, \
            world.agencies["b"].id
    holding = threading.Event()
    _pause(monkeypatch, referrals, "require_worker", b_id, holding)

    def ack():
        with make_session() as s:
            referrals.transition(s, Actor(s.get(User, b_id), "t"), ref_id, "acknowledge", None)
            s.commit()

    def rename():
        with make_session() as s:
            agency = s.get(Agency, b_agency)
            data = directory.AgencyData(name="Bravo Federal Police", kind=agency.kind,
                                        country_code=agency.country_code, desk_email=agency.desk_email,
                                        desk_phone=agency.desk_phone, timezone=agency.timezone,
                                        is_focal_point=agency.is_focal_point)
            directory.update_agency(s, Actor(s.get(User, admin_id), "t"), b_agency, data)
            s.commit()

    errors = _race(ack, rename, holding)
    assert errors == []


def _rename(make_session, admin_id, agency_id, name, **changes):
    from tests.unit.test_tips_import import _agency_data

    with make_session() as s:
        agency = s.get(Agency, agency_id)
        directory.update_agency(s, Actor(s.get(User, admin_id), "t"), agency_id,
                                _agency_data(agency, name=name, **changes))
        s.commit()


def test_agency_rename_vs_a_new_draft_to_it(pg_app, monkeypatch):
    """A new draft to b: insert the referral (KEY SHARE on agency b) -> head. The admin renames
    b meanwhile: a new name must not lock b's row against the rows that name it."""
    make_session = pg_app.extensions["handoff_db"]["sessionmaker"]
    with make_session() as setup:
        world = build_world(setup, pg_app.extensions["handoff_passwords"])
        setup.commit()
        a_id, admin_id, b_agency = world.users["a_liaison"].id, world.users["a_admin"].id, world.agencies["b"].id
        data = draft_data(world, "b")
    holding = threading.Event()
    inserted = referrals.flush_or_conflict

    def held_after_the_insert(session, what):
        inserted(session, what)
        if threading.current_thread().name == "new draft":
            holding.set()
            time.sleep(1.5)  # the rename runs meanwhile

    monkeypatch.setattr(referrals, "flush_or_conflict", held_after_the_insert)

    def new_draft():
        threading.current_thread().name = "new draft"
        with make_session() as s:
            referrals.create_draft(s, Actor(s.get(User, a_id), "t"), data)
            s.commit()

    assert _race(new_draft, lambda: _rename(make_session, admin_id, b_agency, "Bravo Federal Police"), holding) == []
    with make_session() as check:
        assert check.get(Agency, b_agency).name == "Bravo Federal Police"
        assert check.scalar(select(Referral.id).where(Referral.receiver_agency_id == b_agency)) is not None


def test_hit_acknowledge_vs_decision_moving_the_hit(pg_app, monkeypatch):
    """Acknowledge: head -> hit. Decision (set_jurisdiction): op -> holder -> draft -> hit
    (_keep_hits moves it / the draft's delete cascades) -> head."""
    make_session = pg_app.extensions["handoff_db"]["sessionmaker"]
    with make_session() as setup:
        world = build_world(setup, pg_app.extensions["handoff_passwords"])
        known_to_alpha(setup, world, "e1@example.org")
        run_import(setup, world, tip(account(1, email="e1@example.org", uploads_a="1")))
        draft = _draft_of(setup, world, "acc1")
        hit_id = setup.scalar(select(Hit.id).where((Hit.referral_low_id == draft.id) | (Hit.referral_high_id == draft.id)))
        assert hit_id is not None
        holder = holder_of(setup, world, "acc1")
        setup.commit()
        subject_id, lead_id, alpha_id = holder.subject_id, world.users["c_liaison"].id, world.users["a_liaison"].id
    holding = threading.Event()
    _pause(monkeypatch, deconfliction, "require_worker", alpha_id, holding, seconds=2)  # after its locks

    def ack():
        with make_session() as s:
            deconfliction.acknowledge(s, Actor(s.get(User, alpha_id), "t"), hit_id, None)
            s.commit()

    errors = _race(ack, _deciding(make_session, lead_id, subject_id), holding)
    assert errors == []


def test_subject_add_matching_a_draft_vs_decision_discarding_it(pg_app, monkeypatch):
    """Subject add (a, on its sent referral): referral -> head -> refresh_hits inserts a hit on the
    tip draft (KEY SHARE on it). Decision: op -> draft (locked, then DELETEd: FOR UPDATE) -> head."""
    make_session = pg_app.extensions["handoff_db"]["sessionmaker"]
    with make_session() as setup:
        world = build_world(setup, pg_app.extensions["handoff_passwords"])
        other = make_referral(setup, world, status="sent", sender="a", receiver="b")
        run_import(setup, world, tip(account(1, email="e1@example.org", uploads_a="1")))
        holder = holder_of(setup, world, "acc1")
        setup.commit()
        other_id = other.id
        subject_id, lead_id, alpha_id = holder.subject_id, world.users["c_liaison"].id, world.users["a_liaison"].id
    holding = threading.Event()
    original = deconfliction.refresh_hits

    def paused(session, actor, ids, **kw):
        if actor.user_id == alpha_id:
            holding.set()
            time.sleep(2)
        return original(session, actor, ids, **kw)

    monkeypatch.setattr(deconfliction, "refresh_hits", paused)

    def add():
        with make_session() as s:
            subjects.add_subject(s, Actor(s.get(User, alpha_id), "t"), other_id, "Known", "e1@example.org")
            s.commit()

    errors = _race(add, _deciding(make_session, lead_id, subject_id), holding)
    assert errors == []


@pytest.mark.parametrize("renamed", [False, True], ids=["", "renamed too"])
def test_a_directory_edit_that_reroutes_vs_an_edit_of_a_tip_draft(pg_app, monkeypatch, renamed):
    """An administrator withdraws the focal point a tip draft goes to (renaming it in the same
    save, or not) while the lead agency's officer edits that draft: the reroute locks the draft
    before the audit chain, as the edit does, so it waits for the edit."""
    from tests.unit.test_tips_import import _agency_data

    make_session = pg_app.extensions["handoff_db"]["sessionmaker"]
    with make_session() as setup:
        world = build_world(setup, pg_app.extensions["handoff_passwords"])
        run_import(setup, world, tip(account(1, email="p@example.org", uploads_a="1")))
        setup.commit()
        draft_id = _draft_of(setup, world, "acc1").id
        lead_id, admin_id, bravo_id = world.users["c_liaison"].id, world.users["a_admin"].id, world.agencies["b"].id
    holding = threading.Event()
    checked = referrals._keep_routing

    def held_after_locking_the_draft(session, referral, data):
        holding.set()
        time.sleep(1.5)  # the directory edit runs meanwhile
        return checked(session, referral, data)

    monkeypatch.setattr(referrals, "_keep_routing", held_after_locking_the_draft)

    def edit_draft():
        with make_session() as s:
            data = referrals.ReferralData.from_referral(s.get(Referral, draft_id))
            data.summary = "Edited by hand."
            referrals.update_draft(s, Actor(s.get(User, lead_id), "t"), draft_id, None, data)
            s.commit()

    def withdraw_focal_point():
        with make_session() as s:
            bravo = s.get(Agency, bravo_id)
            directory.update_agency(s, Actor(s.get(User, admin_id), "t"), bravo_id,
                                    _agency_data(bravo, is_focal_point=False,
                                                 name="Bravo Federal Police" if renamed else bravo.name))
            s.commit()

    assert _race(edit_draft, withdraw_focal_point, holding) == []
    with make_session() as check:
        holder = check.scalars(select(Holder).where(Holder.subject_id.is_not(None))).one()
        assert holder.receiver_agency_id != bravo_id  # rerouted after the edit


def test_an_import_waiting_for_a_transfer_adds_after_it(pg_app, monkeypatch):
    """Bravo transfers a tip package on while the lead imports more on its holder: the import
    waits for the transfer, and what it adds is after it, so not Bravo's to read or match."""
    make_session = pg_app.extensions["handoff_db"]["sessionmaker"]
    with make_session() as setup:
        world = build_world(setup, pg_app.extensions["handoff_passwords"])
        _holder, sent = _sent_package(setup, world, datetime.now(timezone.utc))
        referrals.transition(setup, world.actor("b_liaison"), sent.id, "acknowledge", None)
        referrals.grant_transfer_consent(setup, world.actor("c_liaison"), sent.id, None)
        setup.commit()
        sent_id, b_id, bureau = sent.id, world.users["b_liaison"].id, world.agencies["i"].id
    holding = threading.Event()
    _pause(monkeypatch, referrals, "require_worker", b_id, holding)

    transfer = _transferring(make_session, b_id, sent_id, bureau)

    def later_import():
        with make_session() as s:
            run_import(s, world, tip(account(7, email="p@example.org", phone="+61293744000")), file_name="later.csv")
            s.commit()

    assert _race(transfer, later_import, holding) == []
    with make_session() as s:
        onward = s.scalars(select(Referral).where(Referral.transferred_from_id == sent_id)).one()
        known_to_alpha(s, world, "+61 2 9374 4000")
        s.flush()
        bravo = s.get(User, b_id)
        assert deconfliction.list_hits(s, bravo, deconfliction.HitFilters()).items == []
        shown = {i.value for subject in subjects.subjects_of(s, bravo, onward.id) for i in subject.identifiers}
        assert "+61293744000" not in shown and "p@example.org" in shown


def test_two_imports_into_two_operations_each_refreshing_the_planners_statistics(pg_app, monkeypatch):
    """Each import analyzes the tables it grew before it commits (bulk.analyze_grown), which
    locks them against the other's ANALYZE until then. One holding the audit chain (it wrote
    drafts) must not wait there for one that analyzed first and now waits for the chain: both
    take the chain first."""
    make_session = pg_app.extensions["handoff_db"]["sessionmaker"]
    with make_session() as setup:
        world = build_world(setup, pg_app.extensions["handoff_passwords"])
        second = Operation(code="BEACON", lead_agency_id=world.agencies["c"].id, opened_on=world.operation.opened_on)
        setup.add(second)
        setup.commit()
        second_id = second.id
    holding = threading.Event()
    original = bulk.analyze_grown

    def analyze_later(session, added):  # the first to get here, with drafts written, waits a while
        if not holding.is_set():
            holding.set()
            time.sleep(2)
        return original(session, added)

    monkeypatch.setattr(bulk, "analyze_grown", analyze_later)

    def with_drafts():
        with make_session() as s:
            import_tip(s, Actor(s.get(User, world.users["c_liaison"].id), "t"), second_id,
                       tip(*(account(n, email=f"au{n}@example.org") for n in range(100))), "au.csv")
            s.commit()

    def at_home():  # holders in the lead's own country: no draft, no audit entry until the end
        with make_session() as s:
            run_import(s, world, tip(*(account(n, email=f"gb{n}@example.org", country_hint="GB", ip_country="GB")
                                       for n in range(60))), file_name="gb.csv")
            s.commit()

    assert _race(with_drafts, at_home, holding) == []
    with make_session() as s:
        assert s.scalar(select(func.count()).select_from(Holder)) == 160
