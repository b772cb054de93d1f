"""The access scope: a matrix over roles and own/other agency for the list, detail and every
action. Outsiders get NotFound everywhere, never a hint that the referral exists."""

from __future__ import annotations

import unicodedata

import pytest

from sqlalchemy import select

from app.db import utcnow
from app.models import Agency, AgencyKind, Role
from app.services import Forbidden, NotFound
from app.services import referrals as service
from app.services.access import get_visible_referral, visible_operations
from tests.factories import draft_data, make_referral

# a sends to b inside operation LANTERN led by c; i is unrelated.
VISIBILITY = {"a": True, "b": True, "c": True, "i": False}
ROLES = [r.value for r in Role]


@pytest.fixture
def referral(session, world):
    return make_referral(session, world, "sent", operation_id=world.operation.id)


@pytest.mark.parametrize("agency", list(VISIBILITY))
@pytest.mark.parametrize("role", ROLES)
def test_list_and_detail_follow_need_to_know(session, world, referral, agency, role):
    user = world.users[f"{agency}_{role}"]
    page = service.list_referrals(session, user, service.ListFilters())
    assert ([r.id for r in page.items] == [referral.id]) is VISIBILITY[agency]
    assert page.total == (1 if VISIBILITY[agency] else 0)
    if VISIBILITY[agency]:
        assert service.view(session, world.actor(f"{agency}_{role}"), referral.id).id == referral.id
    else:
        with pytest.raises(NotFound):
            service.view(session, world.actor(f"{agency}_{role}"), referral.id)


def test_operation_lead_sees_only_its_operations_referrals(session, world):
    outside = make_referral(session, world, "sent")  # a -> b, no operation
    with pytest.raises(NotFound):
        get_visible_referral(session, world.users["c_viewer"], outside.id)


def _attempt(session, world, key, referral, action):
    actor = world.actor(key)
    if action == "edit":
        return service.update_draft(session, actor, referral.id, referral.version, draft_data(world))
    if action == "consent":
        return service.grant_transfer_consent(session, actor, referral.id, None)
    if action == "outcome":
        return service.record_outcome(session, actor, referral.id, service.OutcomeData(occurred_on=utcnow().date()))
    return service.transition(session, actor, referral.id, action, None, "A reason.",
                              transfer_to_agency_id=world.agencies["i"].id)


ACTIONS = ["edit", "consent", "outcome", *service.TRANSITIONS]
# the status in which each action is allowed, and the side that may take it
ALLOWED = {"edit": ("draft", "a"), "consent": ("sent", "a"), "outcome": ("accepted", "b")}
ALLOWED.update({name: (next(iter(t.sources)).value, "a" if t.side == "sender" else "b")
                for name, t in service.TRANSITIONS.items()})


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("agency", list(VISIBILITY))
@pytest.mark.parametrize("role", ROLES)
def test_every_action_by_every_role_and_agency(session, world, action, agency, role):
    status, side = ALLOWED[action]
    referral = make_referral(session, world, status, operation_id=world.operation.id)
    if action == "transfer":
        referral.transfer_consent_at = referral.sent_at
        session.flush()
    key = f"{agency}_{role}"
    if not VISIBILITY[agency] or (status == "draft" and agency != "a"):  # a draft is its sender's alone
        expected = NotFound
    elif agency != side or role not in ("liaison", "manager"):
        expected = Forbidden
    else:
        expected = None
    if expected is None:
        _attempt(session, world, key, referral, action)
    else:
        with pytest.raises(expected):
            _attempt(session, world, key, referral, action)
        session.refresh(referral)
        assert referral.status.value == status


def test_a_draft_is_hidden_from_its_receiver_and_the_operations_lead_until_sent(session, world):
    """An import drafts referrals to many agencies; none of them may see a draft (its
    subjects, identifiers or holders) before the sender sends it. Nor may the lead of the
    operation a partner's draft names: it is the partner's unsent work."""
    draft = make_referral(session, world, "draft", operation_id=world.operation.id)
    for key in ("b_manager", "c_viewer"):  # the receiver, and the operation's lead
        user = world.users[key]
        assert service.list_referrals(session, user, service.ListFilters()).total == 0
        with pytest.raises(NotFound):
            get_visible_referral(session, user, draft.id)
    assert [o.code for o in session.scalars(visible_operations(world.users["b_manager"]))] == []
    assert get_visible_referral(session, world.users["a_viewer"], draft.id).id == draft.id  # the sender's
    service.transition(session, world.actor("a_liaison"), draft.id, "send", draft.version, None)
    for key in ("b_manager", "c_viewer"):
        assert get_visible_referral(session, world.users[key], draft.id).id == draft.id


def test_creating_needs_a_working_role(session, world):
    for role in ("viewer", "admin"):
        with pytest.raises(Forbidden):
            service.create_draft(session, world.actor(f"a_{role}"), draft_data(world))
    assert service.create_draft(session, world.actor("a_manager"), draft_data(world)).sender_agency_id == world.agencies["a"].id


def test_operations_listed_to_the_lead_and_to_agencies_involved(session, world, referral):
    codes = lambda key: [o.code for o in session.scalars(visible_operations(world.users[key]))]
    assert codes("c_viewer") == ["LANTERN"]
    assert codes("a_viewer") == ["LANTERN"]
    assert codes("i_viewer") == []


def test_filters_cannot_widen_the_scope(session, world, referral):
    user = world.users["i_manager"]
    for filters in (service.ListFilters(jurisdiction="AU"), service.ListFilters(operation_id=world.operation.id),
                    service.ListFilters(status=referral.status), service.ListFilters(direction="in")):
        assert service.list_referrals(session, user, filters).total == 0



@pytest.mark.parametrize("first, second", [("Polizei Österreich", "POLIZEI ÖSTERREICH"), ("Alpha Unit", "alpha UNIT")])
def test_an_agency_name_taken_whatever_its_case_is_refused_beside_the_field(session, first, second, monkeypatch):
    """The database folds case as its unique index does, so the check and the index agree; a
    name another admin saved between the check and the write is refused the same way."""
    from app.services import DomainError, directory
    from app.services.audit import SYSTEM

    def data(name):
        return directory.AgencyData(name=name, kind=AgencyKind.POLICE, country_code="AT",
                                    desk_email="desk@example.org", desk_phone="+43 1 555 0100")

    directory.create_agency(session, SYSTEM, data(first))
    with pytest.raises(DomainError) as refused:
        directory.create_agency(session, SYSTEM, data(second))
    assert (refused.value.field, refused.value.message) == ("name", "Another agency has this name.")
    # Another admin's save between this one's check and its write: the index refuses it.
    monkeypatch.setattr(directory, "normalise_agency", lambda _session, checked, agency_id=None: checked)
    with pytest.raises(DomainError) as raced:
        directory.create_agency(session, SYSTEM, data(second))
    assert raced.value.field == "name"
    assert session.scalars(select(Agency.name).where(Agency.country_code == "AT")).all() == [first]


@pytest.mark.parametrize("look_alike", ["\uff37ellington Online Safety Unit",  # a full-width W
                                        "WELL\u0130NGTON ONLINE SAFETY UNIT",  # a dotted capital I
                                        "Wellington  Online Safety Unit"])
def test_an_agency_name_that_looks_like_a_taken_one_is_refused_beside_the_field(session, look_alike):
    """A picker would show both alike; the database's lower() tells them apart, so the service
    must not."""
    from app.services import DomainError, directory
    from app.services.audit import SYSTEM

    def data(name):
        return directory.AgencyData(name=name, kind=AgencyKind.POLICE, country_code="NZ",
                                    desk_email="desk@example.org", desk_phone="+64 4 555 0100")

    taken = directory.create_agency(session, SYSTEM, data("Wellington Online Safety Unit"))
    with pytest.raises(DomainError) as refused:
        directory.create_agency(session, SYSTEM, data(look_alike))
    assert (refused.value.field, refused.value.message) == ("name", "Another agency has this name.")
    other = directory.create_agency(session, SYSTEM, data("Auckland Online Safety Unit"))
    with pytest.raises(DomainError, match="Another agency has this name"):
        directory.update_agency(session, SYSTEM, other.id, data(look_alike))
    directory.update_agency(session, SYSTEM, taken.id, data(look_alike))  # its own name, written otherwise
    assert session.scalars(select(Agency.name).where(Agency.country_code == "NZ").order_by(Agency.id)).all() == [
        unicodedata.normalize("NFKC", look_alike), "Auckland Online Safety Unit"]


def test_an_agency_name_is_stored_in_its_nfkc_form(session):
    from app.services import directory
    from app.services.audit import SYSTEM

    agency = directory.create_agency(session, SYSTEM, directory.AgencyData(
        name=" \uff24elta \uff30olice ", kind=AgencyKind.POLICE, country_code="FJ",
        desk_email="desk@example.org", desk_phone="+679 555 0100"))
    assert agency.name == "Delta Police"
