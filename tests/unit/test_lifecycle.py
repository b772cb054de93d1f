"""The referral state machine, on SQLite and PostgreSQL: every allowed and refused step."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.db import utcnow
from app.models import AuditEntry, HandlingCode, Priority, Referral, ReferralEvent, Status
from app.services import Conflict, DomainError, Forbidden, NotFound
from app.services import referrals as service
from tests.factories import draft_data, make_referral

ALL_STATUSES = [s.value for s in Status]


def _actor_for(world, action, sender="a", receiver="b"):
    side = service.TRANSITIONS[action].side
    return world.actor(f"{sender if side == 'sender' else receiver}_liaison")


@pytest.mark.parametrize("status", ALL_STATUSES)
@pytest.mark.parametrize("action", list(service.TRANSITIONS))
def test_every_transition_from_every_status(session, world, status, action):
    referral = make_referral(session, world, status)
    rule = service.TRANSITIONS[action]
    target = world.agencies["c"].id if action == "transfer" else None
    if action == "transfer" and referral.handling_code is HandlingCode.CONSENT_REQUIRED:
        referral.transfer_consent_at = utcnow()
        session.flush()
    call = lambda: service.transition(session, _actor_for(world, action), referral.id, action,
                                      referral.version, "A reason.", transfer_to_agency_id=target)
    if Status(status) in rule.sources:
        result = call()
        session.refresh(referral)
        assert referral.status is rule.target
        assert getattr(referral, rule.stamp) is not None
        assert referral.events[-1].action == action
        if action == "transfer":
            assert result.id != referral.id and result.transferred_from_id == referral.id
    else:
        events_before = len(referral.events)
        with pytest.raises(DomainError) as info:
            call()
        assert not isinstance(info.value, Forbidden)
        if status == "draft" and rule.side == "receiver":  # the receiver cannot see a draft
            assert isinstance(info.value, NotFound)
        else:
            assert f"is {status}" in info.value.message
        session.refresh(referral)
        assert referral.status is Status(status)
        assert len(referral.events) == events_before


@pytest.mark.parametrize("action", list(service.TRANSITIONS))
def test_only_the_right_agency_may_take_a_step(session, world, action):
    rule = service.TRANSITIONS[action]
    start = next(iter(rule.sources)).value
    referral = make_referral(session, world, start)
    wrong_side = world.actor("b_liaison" if rule.side == "sender" else "a_liaison")
    # b cannot even see a draft (it has not been sent to b yet)
    with pytest.raises(NotFound if start == "draft" else Forbidden):
        service.transition(session, wrong_side, referral.id, action, None, "A reason.",
                           transfer_to_agency_id=world.agencies["c"].id)
    session.refresh(referral)
    assert referral.status.value == start


@pytest.mark.parametrize("role", ["viewer", "admin"])
def test_readers_cannot_work_referrals(session, world, role):
    with pytest.raises(Forbidden):
        service.create_draft(session, world.actor(f"a_{role}"), draft_data(world))
    referral = make_referral(session, world, "draft")
    with pytest.raises(Forbidden):
        service.transition(session, world.actor(f"a_{role}"), referral.id, "send", None)


def test_managers_work_referrals_of_their_agency(session, world):
    referral = make_referral(session, world, "sent")
    service.transition(session, world.actor("b_manager"), referral.id, "acknowledge", referral.version)
    assert referral.status is Status.ACKNOWLEDGED


def test_each_step_stamps_names_and_audits(session, world):
    referral = make_referral(session, world, "draft")
    before = utcnow()
    service.transition(session, world.actor("a_liaison"), referral.id, "send", referral.version, "Over to you.")
    assert referral.sent_at >= before
    event = referral.events[-1]
    assert (event.action, event.from_status, event.to_status) == ("send", "draft", "sent")
    assert event.user_id == world.users["a_liaison"].id and event.agency_id == world.agencies["a"].id
    assert event.note == "Over to you."
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "referral.send")).one()
    assert entry.object_id == str(referral.id) and entry.user_id == world.users["a_liaison"].id


@pytest.mark.parametrize("action", ["decline", "withdraw"])
def test_decline_and_withdraw_need_a_reason(session, world, action):
    rule = service.TRANSITIONS[action]
    referral = make_referral(session, world, next(iter(rule.sources)).value)
    with pytest.raises(DomainError, match="reason"):
        service.transition(session, _actor_for(world, action), referral.id, action, referral.version, "  ")


def test_transfer_refused_without_the_senders_consent(session, world):
    referral = make_referral(session, world, "acknowledged", handling_code=HandlingCode.CONSENT_REQUIRED)
    assert "transfer" not in service.allowed_actions(referral, world.users["b_liaison"])  # not offered
    with pytest.raises(DomainError, match="consent") as refused:  # a rule of its handling, not of who acts
        service.transition(session, world.actor("b_liaison"), referral.id, "transfer", referral.version,
                           transfer_to_agency_id=world.agencies["c"].id)
    assert not isinstance(refused.value, Forbidden)
    assert referral.status is Status.ACKNOWLEDGED
    assert session.scalar(select(func.count()).select_from(Referral)) == 1


def test_consent_then_transfer_creates_a_linked_sent_referral(session, world):
    referral = make_referral(session, world, "acknowledged", handling_code=HandlingCode.CONSENT_REQUIRED)
    with pytest.raises(Forbidden):  # only the sender consents
        service.grant_transfer_consent(session, world.actor("b_liaison"), referral.id, None)
    service.grant_transfer_consent(session, world.actor("a_liaison"), referral.id, referral.version)
    new = service.transition(session, world.actor("b_liaison"), referral.id, "transfer", referral.version,
                             "Better placed.", transfer_to_agency_id=world.agencies["c"].id)
    assert referral.status is Status.TRANSFERRED and referral.transferred_at is not None
    assert new.status is Status.SENT and new.sent_at is not None
    assert new.sender_agency_id == world.agencies["b"].id and new.receiver_agency_id == world.agencies["c"].id
    assert new.transferred_from_id == referral.id and new.reference != referral.reference
    assert new.summary == referral.summary and new.priority == referral.priority
    assert new.reference in referral.events[-1].note


def test_transfer_with_permissive_handling_code_needs_no_consent(session, world):
    referral = make_referral(session, world, "acknowledged", handling_code=HandlingCode.ONWARD_PERMITTED)
    new = service.transition(session, world.actor("b_liaison"), referral.id, "transfer", None,
                             transfer_to_agency_id=world.agencies["c"].id)
    assert new.receiver_agency_id == world.agencies["c"].id


@pytest.mark.parametrize("target", ["a", "b", None])
def test_transfer_target_must_be_a_third_agency(session, world, target):
    referral = make_referral(session, world, "acknowledged", handling_code=HandlingCode.ONWARD_PERMITTED)
    with pytest.raises(DomainError):
        service.transition(session, world.actor("b_liaison"), referral.id, "transfer", None,
                           transfer_to_agency_id=world.agencies[target].id if target else None)
    assert referral.status is Status.ACKNOWLEDGED


def test_outcomes_on_accepted_referrals_by_the_receiver(session, world):
    sent = make_referral(session, world, "sent")
    data = service.OutcomeData(occurred_on=utcnow().date(), arrests=1, charges=2, children_safeguarded=1)
    with pytest.raises(DomainError, match="accepted"):
        service.record_outcome(session, world.actor("b_liaison"), sent.id, data)
    accepted = make_referral(session, world, "accepted")
    with pytest.raises(Forbidden):
        service.record_outcome(session, world.actor("a_liaison"), accepted.id, data)
    with pytest.raises(DomainError) as info:
        service.record_outcome(session, world.actor("b_liaison"), accepted.id,
                               service.OutcomeData(occurred_on=utcnow().date(), arrests=-1))
    assert info.value.field == "arrests"
    outcome = service.record_outcome(session, world.actor("b_liaison"), accepted.id, data)
    assert outcome.children_safeguarded == 1
    session.refresh(accepted)
    assert [o.arrests for o in accepted.outcomes] == [1]
    # the sender sees it
    again = service.view(session, world.actor("a_viewer"), accepted.id)
    assert again.outcomes[0].charges == 2


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"jurisdiction": "XX"}, "jurisdiction"),
        ({"jurisdiction": "Neverland"}, "jurisdiction"),
        ({"receiver_agency_id": -1}, "receiver_agency_id"),
        ({"grade_a": -1}, "grade_a"),
        ({"grade_c": -5}, "grade_c"),
        ({"summary": "x" * (service.SUMMARY_MAX + 1)}, "summary"),
        ({"material_description": "x" * (service.MATERIAL_MAX + 1)}, "material_description"),
        ({"operation_id": 999_999}, "operation_id"),
    ],
)
def test_bad_drafts_are_refused_and_nothing_is_written(session, world, overrides, field):
    with pytest.raises(DomainError) as info:
        service.create_draft(session, world.actor("a_liaison"), draft_data(world, **overrides))
    assert info.value.field == field
    assert session.scalar(select(func.count()).select_from(Referral)) == 0


def test_receiver_cannot_be_the_sender(session, world):
    with pytest.raises(DomainError) as info:
        service.create_draft(session, world.actor("a_liaison"), draft_data(world, receiver="a"))
    assert info.value.field == "receiver_agency_id"


def test_references_are_readable_and_unique(session, world):
    refs = [make_referral(session, world).reference for _ in range(3)]
    assert all(re.fullmatch(rf"HND-{utcnow().year}-\d{{6}}", r) for r in refs)
    assert len(set(refs)) == 3
    assert [int(r[-6:]) for r in refs] == sorted(int(r[-6:]) for r in refs)


def test_edit_only_drafts_and_only_at_the_current_version(session, world):
    referral = make_referral(session, world, "draft")
    version = referral.version
    service.update_draft(session, world.actor("a_liaison"), referral.id, version,
                         draft_data(world, priority=Priority.P1))
    assert referral.priority is Priority.P1 and referral.version == version + 1
    with pytest.raises(Conflict):
        service.update_draft(session, world.actor("a_liaison"), referral.id, version, draft_data(world))
    with pytest.raises(NotFound):  # the receiver does not see a draft
        service.update_draft(session, world.actor("b_liaison"), referral.id, referral.version, draft_data(world))
    sent = make_referral(session, world, "sent")
    with pytest.raises(DomainError, match="drafts"):
        service.update_draft(session, world.actor("a_liaison"), sent.id, sent.version, draft_data(world))


def test_stale_version_is_a_conflict_for_transitions(session, world):
    referral = make_referral(session, world, "sent")
    stale = referral.version
    service.grant_transfer_consent(session, world.actor("a_liaison"), referral.id, stale)
    with pytest.raises(Conflict):
        service.transition(session, world.actor("b_liaison"), referral.id, "acknowledge", stale)
    assert referral.status is Status.SENT


@pytest.mark.parametrize(
    "priority, hours_ago, overdue",
    [(Priority.P1, 23, False), (Priority.P1, 25, True), (Priority.P2, 25, False),
     (Priority.P4, 71, False), (Priority.P3, 73, True)],
)
def test_overdue_is_computed_from_priority_and_sending_time(session, world, priority, hours_ago, overdue):
    referral = make_referral(session, world, "sent", priority=priority)
    referral.sent_at = utcnow() - timedelta(hours=hours_ago)
    session.flush()
    assert referral.is_overdue() is overdue
    page = service.list_referrals(session, world.users["a_viewer"], service.ListFilters(overdue=True))
    assert [r.id for r in page.items] == ([referral.id] if overdue else [])


def test_acknowledged_referrals_are_never_overdue(session, world):
    referral = make_referral(session, world, "acknowledged", priority=Priority.P1)
    referral.sent_at = utcnow() - timedelta(days=10)
    session.flush()
    assert not referral.is_overdue()
    page = service.list_referrals(session, world.users["b_viewer"], service.ListFilters(overdue=True))
    assert page.total == 0


def test_history_lists_every_step_in_order(session, world):
    referral = make_referral(session, world, "closed")
    actions = [e.action for e in session.scalars(
        select(ReferralEvent).where(ReferralEvent.referral_id == referral.id).order_by(ReferralEvent.id))]
    assert actions == ["create", "send", "acknowledge", "accept", "outcome", "close"]
