"""Deconfliction on SQLite and PostgreSQL: subjects and identifiers, set-based matching, hits
and their workflow, notifications, common identifiers and the blind check."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, func, insert, select

from app.db import utcnow
from app.models import (
    AuditEntry,
    CommonIdentifier,
    Hit,
    HitMatch,
    HitSide,
    HitStatus,
    Identifier,
    Notification,
    NotificationKind,
    Status,
    Subject,
    referral_subjects,
)
from app.services import Conflict, DomainError, Forbidden, NotFound
from app.services import deconfliction as dc
from app.services import referrals as referrals_service
from app.services import subjects
from app.services.identifiers import IdentifierKind, match_key, normalise
from tests.factories import make_referral

SECRET = b"testing-match-key"


def add(session, world, referral, who, *lines, label="Account holder", kind=None, platform=None):
    return subjects.add_subject(session, world.actor(f"{who}_liaison"), referral.id, label, "\n".join(lines),
                                kind=kind, platform=platform)


def hits_between(session, first, second):
    low, high = sorted((first.id, second.id))
    return session.scalars(select(Hit).where(Hit.referral_low_id == low, Hit.referral_high_id == high)).all()


def count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


@contextmanager
def statements(session):
    """Count the SQL statements sent to the database inside the block."""
    seen: list[str] = []

    def listener(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", listener)


@pytest.fixture
def pair(session, world):
    """A draft of Alpha (to Bravo) and one of Charlie (to the international body)."""
    ra = make_referral(session, world, "draft", sender="a", receiver="b")
    rc = make_referral(session, world, "draft", sender="c", receiver="i", summary="Charlie confidential summary.")
    return ra, rc


# --- subjects and identifiers -----------------------------------------------------------

def test_identifiers_are_stored_raw_normalised_and_keyed(session, world, pair):
    ra, _ = pair
    subject = add(session, world, ra, "a", "email: Someone@Example.org", "phone: 021 555 0101",
                  "username/discord: @Alice", "ip: ::ffff:192.0.2.7")
    by_kind = {i.kind: i for i in subject.identifiers}
    assert by_kind[IdentifierKind.EMAIL].raw == "Someone@Example.org"
    assert by_kind[IdentifierKind.EMAIL].value == "someone@example.org"
    # the jurisdiction of the referral (AU for Bravo) reads numbers without a country code
    assert by_kind[IdentifierKind.PHONE].value == "+61215550101"
    assert by_kind[IdentifierKind.USERNAME].value == "alice"
    assert by_kind[IdentifierKind.USERNAME].platform == "discord"
    assert by_kind[IdentifierKind.IP].value == "192.0.2.7"
    for identifier in subject.identifiers:
        expected = match_key(SECRET, normalise(identifier.kind, identifier.raw, platform=identifier.platform,
                                               region=ra.jurisdiction))
        assert identifier.match_key == expected
        assert identifier.value not in identifier.match_key


def test_a_subject_with_a_bad_line_saves_nothing(session, world, pair):
    ra, _ = pair
    with pytest.raises(DomainError) as info:
        add(session, world, ra, "a", "someone@example.org", "not an address@", "bob", kind=None)
    assert info.value.field == "identifiers"
    assert "line 2" in info.value.message and "line 3" in info.value.message
    assert "cannot tell what kind" in info.value.message
    assert count(session, Subject) == 0 and count(session, Identifier) == 0


@pytest.mark.parametrize("lines, ending", [
    (["email: someone.example.org"], "line 1: not a valid e-mail address: An email address must have an @-sign."),
    (["email: someone.example.org", "bob"], "line 2: cannot tell what kind of identifier this is: choose a kind, "
                                            "or write it as 'username/discord: name'."),
])
def test_the_reasons_for_bad_lines_end_in_one_full_stop(session, world, pair, lines, ending):
    ra, _ = pair
    with pytest.raises(DomainError) as info:
        add(session, world, ra, "a", *lines)
    assert info.value.message.endswith(ending) and ".." not in info.value.message


def test_given_twice_is_stored_once(session, world, pair):
    ra, _ = pair
    subject = add(session, world, ra, "a", "someone@example.org", "SOMEONE@example.org")
    assert len(subject.identifiers) == 1
    added = subjects.add_identifiers(session, world.actor("a_liaison"), ra.id, subject.id, "someone@example.org\n192.0.2.1")
    assert [i.value for i in added] == ["192.0.2.1"]


def test_only_the_sending_agency_adds_subjects_while_draft_or_sent(session, world):
    referral = make_referral(session, world, "sent")
    with pytest.raises(Forbidden):
        add(session, world, referral, "b", "someone@example.org")
    with pytest.raises(Forbidden):
        subjects.add_subject(session, world.actor("a_viewer"), referral.id, "x", "someone@example.org")
    with pytest.raises(NotFound):
        add(session, world, referral, "c", "someone@example.org")
    add(session, world, referral, "a", "someone@example.org")  # sent: still allowed
    accepted = make_referral(session, world, "accepted")
    with pytest.raises(DomainError) as info:
        add(session, world, accepted, "a", "someone@example.org")
    assert "accepted" in info.value.message


def test_usernames_match_only_on_the_same_platform(session, world, pair):
    ra, rc = pair
    add(session, world, ra, "a", "alice", kind=IdentifierKind.USERNAME, platform="discord")
    add(session, world, rc, "c", "username/x: alice")
    assert hits_between(session, ra, rc) == []
    add(session, world, rc, "c", "username/discord: ALICE")
    assert len(hits_between(session, ra, rc)) == 1


# --- hits -------------------------------------------------------------------------------------

def test_a_shared_identifier_raises_one_hit_with_each_sides_identifiers(session, world, pair):
    ra, rc = pair
    add(session, world, ra, "a", "Shared@Example.org", "alpha-only@example.org")
    add(session, world, rc, "c", "shared@example.org", "charlie-only@example.org", "+64 21 555 0123")
    [hit] = hits_between(session, ra, rc)
    assert hit.status is HitStatus.NEW and not hit.is_duplicate
    assert {hit.agency_low_id, hit.agency_high_id} == {world.agencies["a"].id, world.agencies["c"].id}
    sides = {(m.side, session.get(Identifier, m.identifier_id).raw) for m in hit.matches}
    a_side = HitSide.LOW if hit.referral_low_id == ra.id else HitSide.HIGH
    c_side = HitSide.HIGH if a_side is HitSide.LOW else HitSide.LOW
    assert sides == {(a_side, "Shared@Example.org"), (c_side, "shared@example.org")}
    assert {m.kind for m in hit.matches} == {IdentifierKind.EMAIL}

    # More matches on the same pair stay on the one hit.
    add(session, world, ra, "a", "+64215550123", label="Second holder")
    session.expire_all()
    [again] = hits_between(session, ra, rc)
    assert again.id == hit.id
    assert {m.kind for m in again.matches} == {IdentifierKind.EMAIL, IdentifierKind.PHONE}
    assert again.version > 1


def test_a_match_within_one_agency_is_a_possible_duplicate(session, world):
    first = make_referral(session, world, "draft", sender="a", receiver="b")
    second = make_referral(session, world, "draft", sender="a", receiver="c")
    add(session, world, first, "a", "192.0.2.44")
    add(session, world, second, "a", "192.0.2.44")
    [hit] = hits_between(session, first, second)
    assert hit.is_duplicate
    notes = session.scalars(select(Notification).where(Notification.hit_id == hit.id)).all()
    assert [(n.agency_id, n.kind) for n in notes] == [(world.agencies["a"].id, NotificationKind.HIT_NEW)]
    assert "Possible duplicate" in notes[0].message
    [view] = dc.hits_for_referral(session, world.users["a_liaison"], first.id)
    assert view.is_duplicate and view.counterpart.reference == second.reference
    assert view.own_counterpart_id == second.id


def test_notifications_are_listed_newest_first_by_when_they_happened(session, world):
    """An import dates what it writes at its start, so a notification written after another
    can be older than it: the list goes by time, and showing its first page marks all read."""
    agency, user = world.agencies["a"].id, world.users["a_liaison"]
    start = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
    session.execute(insert(Notification), [
        {"agency_id": agency, "kind": NotificationKind.HIT_NEW, "message": message, "created_at": at}
        for message, at in (("later", start + timedelta(minutes=5)), ("earlier", start),
                            ("latest", start + timedelta(minutes=9)))])
    items, total = dc.list_notifications(session, user, per_page=2)
    assert ([item.message for item in items], total) == (["latest", "later"], 3)
    assert dc.unread_count(session, user) == 0


def test_both_agencies_are_notified_when_a_hit_appears_and_changes(session, world, pair):
    ra, rc = pair
    a_user, c_user, b_user = world.users["a_liaison"], world.users["c_liaison"], world.users["b_liaison"]
    add(session, world, ra, "a", "shared@example.org")
    add(session, world, rc, "c", "shared@example.org")
    assert dc.unread_count(session, a_user) == 1 and dc.unread_count(session, c_user) == 1
    assert dc.unread_count(session, b_user) == 0
    items, _ = dc.list_notifications(session, a_user)
    assert items[0].kind is NotificationKind.HIT_NEW and items[0].unread
    assert rc.reference in items[0].message and "Charlie Customs" in items[0].message
    assert dc.unread_count(session, a_user) == 0  # seen
    assert dc.unread_count(session, world.users["a_manager"]) == 1  # per user

    [hit] = hits_between(session, ra, rc)
    dc.acknowledge(session, world.actor("c_liaison"), hit.id, hit.version)
    # The other agency hears of a step; the acting one knows it already.
    assert dc.unread_count(session, a_user) == 1 and dc.unread_count(session, c_user) == 1
    dc.resolve(session, world.actor("a_liaison"), hit.id, hit.version, world.agencies["c"].id, "Agreed by phone.")

    def kinds(agency: str) -> list[NotificationKind]:
        return [n.kind for n in session.scalars(
            select(Notification).where(Notification.agency_id == world.agencies[agency].id).order_by(Notification.id))]
    assert kinds("a") == [NotificationKind.HIT_NEW, NotificationKind.HIT_ACKNOWLEDGED]
    assert kinds("c") == [NotificationKind.HIT_NEW, NotificationKind.HIT_RESOLVED]
    add(session, world, rc, "c", "192.0.2.9", label="Other")
    add(session, world, ra, "a", "192.0.2.9", label="Other")
    latest = session.scalars(select(Notification).order_by(Notification.id.desc()).limit(2)).all()
    assert {n.kind for n in latest} == {NotificationKind.HIT_UPDATED}
    assert {n.agency_id for n in latest} == {world.agencies["a"].id, world.agencies["c"].id}


def test_acknowledge_and_resolve(session, world, pair):
    ra, rc = pair
    add(session, world, ra, "a", "shared@example.org")
    add(session, world, rc, "c", "shared@example.org")
    [hit] = hits_between(session, ra, rc)
    with pytest.raises(Forbidden):
        dc.acknowledge(session, world.actor("a_viewer"), hit.id, hit.version)
    with pytest.raises(Conflict):
        dc.acknowledge(session, world.actor("a_liaison"), hit.id, hit.version - 1 if hit.version > 1 else 99)
    dc.acknowledge(session, world.actor("a_liaison"), hit.id, hit.version)
    assert hit.status is HitStatus.NEW
    assert (hit.acknowledged_low_at or hit.acknowledged_high_at) is not None
    with pytest.raises(DomainError, match="already"):
        dc.acknowledge(session, world.actor("a_manager"), hit.id, hit.version)
    dc.acknowledge(session, world.actor("c_manager"), hit.id, hit.version)
    assert hit.status is HitStatus.ACKNOWLEDGED
    assert hit.acknowledged_low_at and hit.acknowledged_high_at

    with pytest.raises(DomainError) as info:
        dc.resolve(session, world.actor("a_liaison"), hit.id, hit.version, world.agencies["b"].id, "x")
    assert info.value.field == "lead_agency_id"
    with pytest.raises(DomainError) as info:
        dc.resolve(session, world.actor("a_liaison"), hit.id, hit.version, world.agencies["a"].id, "  ")
    assert info.value.field == "note"
    dc.resolve(session, world.actor("a_liaison"), hit.id, hit.version, world.agencies["a"].id, "Alpha leads.")
    assert hit.status is HitStatus.RESOLVED and hit.lead_agency_id == world.agencies["a"].id
    assert hit.resolved_at and hit.resolution_note == "Alpha leads."
    with pytest.raises(DomainError, match="resolved already"):
        dc.resolve(session, world.actor("c_liaison"), hit.id, hit.version, world.agencies["c"].id, "No.")
    actions = session.scalars(select(AuditEntry.action).where(AuditEntry.object_type == "hit")).all()
    assert actions == ["hit.acknowledge", "hit.acknowledge", "hit.resolve"]


def test_hits_are_seen_by_their_two_agencies_only(session, world, pair):
    ra, rc = pair
    add(session, world, ra, "a", "shared@example.org")
    add(session, world, rc, "c", "shared@example.org")
    [hit] = hits_between(session, ra, rc)
    for outsider in ("b_liaison", "i_liaison", "b_admin"):
        with pytest.raises(NotFound):
            dc.view_hit(session, world.actor(outsider), hit.id)
        with pytest.raises(NotFound):
            dc.acknowledge(session, world.actor(outsider), hit.id, None)
        with pytest.raises(NotFound):
            dc.resolve(session, world.actor(outsider), hit.id, None, world.agencies["a"].id, "x")
        assert dc.list_hits(session, world.users[outsider], dc.HitFilters()).total == 0
    # Bravo receives Alpha's referral once sent, but is no party to the hit; the draft was not Bravo's to see.
    with pytest.raises(NotFound):
        dc.hits_for_referral(session, world.users["b_liaison"], ra.id)
    referrals_service.transition(session, world.actor("a_liaison"), ra.id, "send", None)
    assert dc.hits_for_referral(session, world.users["b_liaison"], ra.id) == []
    assert dc.list_hits(session, world.users["a_viewer"], dc.HitFilters()).total == 1


def test_a_hit_view_carries_the_contact_card_only(session, world, pair):
    ra, rc = pair
    add(session, world, ra, "a", "shared@example.org", "alpha-only@example.org", label="Alpha holder")
    add(session, world, rc, "c", "SHARED@example.org", "charlie-only@example.org", label="Charlie holder")
    [view] = dc.list_hits(session, world.users["a_liaison"], dc.HitFilters()).items
    charlie = world.agencies["c"]
    assert view.other == dc.Contact(charlie.id, charlie.name, charlie.country_code, charlie.desk_email,
                                    charlie.desk_phone, rc.reference)
    assert [(m.kind, m.raw) for m in view.own_matches] == [(IdentifierKind.EMAIL, "shared@example.org")]
    assert view.own_referrals == [(ra.id, ra.reference)]
    [their_view] = dc.list_hits(session, world.users["c_liaison"], dc.HitFilters()).items
    assert [m.raw for m in their_view.own_matches] == ["SHARED@example.org"]
    text = repr(view) + repr(their_view)
    for secret in ("Charlie confidential summary.", "charlie-only", "alpha-only", "Charlie holder",
                   "Alpha holder", "Intl Bureau"):
        assert secret not in text


def test_a_referrals_hits_are_shown_relative_to_that_referral(session, world):
    """Charlie leads the operation of Bravo's referral, so may open it; its hit with Charlie's
    own referral shows there with Charlie's referral as the other side, and the identifiers of
    Bravo's referral that matched, whichever agency looks."""
    rb = make_referral(session, world, "sent", sender="b", receiver="i", operation_id=world.operation.id)
    rc = make_referral(session, world, "draft", sender="c", receiver="a")
    add(session, world, rb, "b", "Shared@Example.org", "bravo-only@example.org")
    add(session, world, rc, "c", "SHARED@example.org", "charlie-only@example.org")
    bravo, charlie = world.agencies["b"], world.agencies["c"]
    on_charlies_page_of_bravos = dc.hits_for_referral(session, world.users["c_liaison"], rb.id)
    on_bravos_page_of_bravos = dc.hits_for_referral(session, world.users["b_liaison"], rb.id)
    for [view] in (on_charlies_page_of_bravos, on_bravos_page_of_bravos):
        assert view.counterpart == dc.Contact(charlie.id, charlie.name, charlie.country_code, charlie.desk_email,
                                              charlie.desk_phone, rc.reference)
        assert [m.raw for m in view.matches] == ["Shared@Example.org"]
    assert on_charlies_page_of_bravos[0].own_counterpart_id == rc.id
    assert on_bravos_page_of_bravos[0].own_counterpart_id is None  # Charlie's referral is not Bravo's to open
    [view] = dc.hits_for_referral(session, world.users["c_liaison"], rc.id)
    assert view.counterpart == dc.Contact(bravo.id, bravo.name, bravo.country_code, bravo.desk_email,
                                          bravo.desk_phone, rb.reference)
    assert [m.raw for m in view.matches] == ["SHARED@example.org"] and view.own_counterpart_id is None


def test_a_referrals_matches_are_what_its_page_shows_of_its_identifiers(session, world):
    """Charlie declined Bravo's referral: what was added to its subjects afterwards is not
    Charlie's to read, on the subjects list or among the identifiers that matched."""
    rb = make_referral(session, world, "sent", sender="b", receiver="c")
    rc = make_referral(session, world, "draft", sender="c", receiver="a")
    subject = add(session, world, rb, "b", "Shared@Example.org", "192.0.2.60")
    add(session, world, rc, "c", "shared@example.org", "192.0.2.60")
    for step in ("acknowledge", "decline"):
        referrals_service.transition(session, world.actor("c_liaison"), rb.id, step, None, "Not ours.")
    later = session.scalars(select(Identifier).where(Identifier.subject_id == subject.id,
                                                     Identifier.kind == IdentifierKind.IP)).one()
    later.created_at = rb.declined_at + timedelta(minutes=5)  # as an import would add it, after the decline
    session.flush()
    charlie = world.users["c_liaison"]
    [view] = dc.hits_for_referral(session, charlie, rb.id)
    [shown] = subjects.subjects_of(session, charlie, rb.id)
    assert [m.raw for m in view.matches] == ["Shared@Example.org"] == [i.raw for i in shown.identifiers]
    [view] = dc.hits_for_referral(session, world.users["b_liaison"], rb.id)
    assert sorted(m.raw for m in view.matches) == ["192.0.2.60", "Shared@Example.org"]


def test_list_filters(session, world, pair):
    ra, rc = pair
    add(session, world, ra, "a", "shared@example.org")
    add(session, world, rc, "c", "shared@example.org")
    user = world.users["a_liaison"]
    assert dc.list_hits(session, user, dc.HitFilters(kind=IdentifierKind.EMAIL)).total == 1
    assert dc.list_hits(session, user, dc.HitFilters(kind=IdentifierKind.IP)).total == 0
    assert dc.list_hits(session, user, dc.HitFilters(status=HitStatus.NEW)).total == 1
    assert dc.list_hits(session, user, dc.HitFilters(status=HitStatus.RESOLVED)).total == 0


# --- hooks into the lifecycle ---------------------------------------------------------------

def _raw_subject(session, world, referral, agency_key, value):
    """A subject written straight to the tables, bypassing the service (and its matching)."""
    subject = Subject(agency_id=world.agencies[agency_key].id, label="Imported")
    ident = normalise(IdentifierKind.EMAIL, value)
    subject.identifiers.append(Identifier(kind=ident.kind, raw=value, value=ident.value,
                                          match_key=match_key(SECRET, ident)))
    session.add(subject)
    session.flush()
    session.execute(insert(referral_subjects).values(referral_id=referral.id, subject_id=subject.id))
    return subject


@pytest.mark.parametrize("step", ["update", "send"])
def test_saving_or_sending_matches(session, world, pair, step):
    ra, rc = pair
    add(session, world, rc, "c", "shared@example.org")
    _raw_subject(session, world, ra, "a", "shared@example.org")
    assert hits_between(session, ra, rc) == []
    if step == "update":
        data = referrals_service.ReferralData.from_referral(ra)
        referrals_service.update_draft(session, world.actor("a_liaison"), ra.id, ra.version, data)
    else:
        referrals_service.transition(session, world.actor("a_liaison"), ra.id, "send", ra.version)
    assert len(hits_between(session, ra, rc)) == 1


def test_a_transfer_carries_the_same_subjects_and_raises_no_hit_with_itself(session, world):
    original = make_referral(session, world, "draft", sender="a", receiver="b", handling_code="H1")
    subject = add(session, world, original, "a", "shared@example.org", "192.0.2.10")
    for actor, action in (("a_liaison", "send"), ("b_liaison", "acknowledge")):
        referrals_service.transition(session, world.actor(actor), original.id, action, None)
    new = referrals_service.transition(session, world.actor("b_liaison"), original.id, "transfer", None,
                                       transfer_to_agency_id=world.agencies["i"].id)
    assert new.status is Status.SENT and new.sender_agency_id == world.agencies["b"].id
    linked = session.scalars(select(referral_subjects.c.subject_id).where(referral_subjects.c.referral_id == new.id)).all()
    assert linked == [subject.id]
    assert [s.id for s in subjects.subjects_of(session, world.users["i_liaison"], new.id)] == [subject.id]
    assert count(session, Hit) == 0  # the same subject on both is no news

    # A third agency's referral on the same identifier meets the case where it came in: Alpha
    # is the one to call, not Bravo, which passed it on.
    other = make_referral(session, world, "draft", sender="c", receiver="i")
    add(session, world, other, "c", "shared@example.org")
    assert len(hits_between(session, other, original)) == 1
    assert hits_between(session, other, new) == []
    # Bravo may add a subject of its own to the new referral, but not identifiers to Alpha's;
    # what it records itself makes it a party.
    with pytest.raises(Forbidden):
        subjects.add_identifiers(session, world.actor("b_liaison"), new.id, subject.id, "192.0.2.11")
    add(session, world, new, "b", "192.0.2.12", label="Found by Bravo")
    add(session, world, other, "c", "192.0.2.12", label="Seen by Charlie")
    [hit] = hits_between(session, other, new)
    assert {hit.agency_low_id, hit.agency_high_id} == {world.agencies["b"].id, world.agencies["c"].id}


# --- common identifiers ---------------------------------------------------------------------

def test_an_identifier_held_by_more_than_the_threshold_is_common(any_app, session, world):
    any_app.config["COMMON_IDENTIFIER_THRESHOLD"] = 2
    ra = make_referral(session, world, "draft", sender="a", receiver="b")
    rc = make_referral(session, world, "draft", sender="c", receiver="i")
    rb = make_referral(session, world, "draft", sender="b", receiver="a")
    add(session, world, ra, "a", "192.0.2.200")
    add(session, world, rc, "c", "192.0.2.200")
    assert count(session, Hit) == 1 and count(session, CommonIdentifier) == 0
    add(session, world, rb, "b", "192.0.2.200", "b-only@example.org")
    assert count(session, Hit) == 1  # no hit for the third holder
    [common] = session.scalars(select(CommonIdentifier)).all()
    assert (common.kind, common.value, common.case_count) == (IdentifierKind.IP, "192.0.2.200", 3)
    result = dc.blind_check(session, world.actor("i_liaison"), "192.0.2.200")
    assert result.lines[0].outcome == dc.CheckOutcome.COMMON and result.lines[0].contacts == []
    items, total = dc.list_common_identifiers(session, world.actor("a_admin"))
    assert total == 1 and items[0].value == "192.0.2.200"
    with pytest.raises(Forbidden):
        dc.list_common_identifiers(session, world.actor("a_liaison"))


@pytest.mark.parametrize("step", ["full refresh", "refresh since"])
@pytest.mark.parametrize("cause", ["threshold raised", "holders gone"])
def test_a_key_no_longer_common_raises_its_hits_between_every_two_holders(any_app, session, world, cause, step):
    """Under a threshold of 3 an address held by five referrals is common: the fourth and
    fifth holders got no hit. Once it is no longer common (the threshold raised to 5, or two
    of the first holders gone), a step that matches one of its holders raises every pair's
    hit, the pair of two referrals the step did not touch included, and unmarks it."""
    any_app.config["COMMON_IDENTIFIER_THRESHOLD"] = 3
    address = "192.0.2.200"
    holders = [make_referral(session, world, "draft", sender=sender, receiver=receiver)
               for sender, receiver in (("a", "b"), ("c", "i"), ("b", "a"), ("a", "c"), ("c", "a"))]
    held_by = [add(session, world, referral, sender, address, label=f"Holder {n}")
               for n, (referral, sender) in enumerate(zip(holders, "acbac"))]
    first, second, third, fourth, fifth = holders
    assert {(h.referral_low_id, h.referral_high_id) for h in session.scalars(select(Hit))} == {
        (first.id, second.id), (first.id, third.id), (second.id, third.id)}
    assert session.scalar(select(CommonIdentifier.case_count)) == 5
    if cause == "threshold raised":
        any_app.config["COMMON_IDENTIFIER_THRESHOLD"] = 5
    else:  # say, routing moved their holders elsewhere
        for referral, subject in ((first, held_by[0]), (second, held_by[1])):
            session.execute(referral_subjects.delete().where(referral_subjects.c.referral_id == referral.id,
                                                             referral_subjects.c.subject_id == subject.id))
    before = session.scalar(select(func.max(Notification.id)))

    if step == "full refresh":  # matches every identifier of the third holder
        subjects.add_identifiers(session, world.actor("b_liaison"), third.id, held_by[2].id, "b-only@example.org")
    else:  # an import's or a holder decision's: what the third gained (nothing), and its marked keys
        dc.refresh_hits(session, world.actor("b_liaison"), [third.id], since=utcnow())

    holding = [third, fourth, fifth] if cause == "holders gone" else holders
    expected = {(low.id, high.id) for n, low in enumerate(holding) for high in holding[n + 1:]}
    hits = session.scalars(select(Hit)).all()
    assert expected <= {(h.referral_low_id, h.referral_high_id) for h in hits}
    untouched = hits_between(session, fourth, fifth)[0]  # Alpha's and Charlie's: neither was matched
    assert {m.side for m in untouched.matches} == {HitSide.LOW, HitSide.HIGH}
    assert count(session, CommonIdentifier) == 0
    notes = session.scalars(select(Notification).where(Notification.hit_id == untouched.id,
                                                       Notification.id > before)).all()
    assert sorted((n.agency_id, n.kind) for n in notes) == sorted(
        [(world.agencies["a"].id, NotificationKind.HIT_NEW), (world.agencies["c"].id, NotificationKind.HIT_NEW)])
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "deconfliction.match")
                            .order_by(AuditEntry.seq.desc())).first()
    assert f'"referrals": [{third.id}]' in entry.detail and str(untouched.id) in entry.detail
    assert '"no_longer_common": 1' in entry.detail
    if cause == "threshold raised":  # the first and the fourth, both Alpha's, are a possible duplicate
        assert hits_between(session, first, fourth)[0].is_duplicate


def test_rechecking_common_marks_follows_the_threshold_and_what_is_held(any_app, session, world):
    """Under a threshold of 3, an address of five referrals and one of four are marked common;
    an address of three is not. The four let the second address go, and no step meets it again:
    a recheck clears its mark. Lowered to 2, the three's address is marked though no step met
    it; raised to 5, the five's address is unmarked and raises every missing pair's hit."""
    any_app.config["COMMON_IDENTIFIER_THRESHOLD"] = 3
    pairs = (("a", "b"), ("c", "i"), ("b", "a"), ("a", "c"), ("c", "a"))
    five = [make_referral(session, world, "draft", sender=s, receiver=r) for s, r in pairs]
    for n, (referral, (sender, _)) in enumerate(zip(five, pairs)):
        add(session, world, referral, sender, "192.0.2.210", label=f"Five {n}")
    four = [make_referral(session, world, "draft", sender=s, receiver=r) for s, r in pairs[:4]]
    left = [add(session, world, referral, sender, "192.0.2.211", label=f"Four {n}")
            for n, (referral, (sender, _)) in enumerate(zip(four, pairs))]
    three = [make_referral(session, world, "draft", sender=s, receiver=r) for s, r in pairs[:3]]
    for n, (referral, (sender, _)) in enumerate(zip(three, pairs)):
        add(session, world, referral, sender, "192.0.2.212", label=f"Three {n}")
    marked = lambda: set(session.scalars(select(CommonIdentifier.value)))  # noqa: E731
    assert marked() == {"192.0.2.210", "192.0.2.211"}
    session.execute(referral_subjects.delete().where(referral_subjects.c.subject_id.in_([s.id for s in left])))

    with pytest.raises(Forbidden):
        dc.recheck_common(session, world.actor("a_manager"))
    result = dc.recheck_common(session, world.actor("a_admin"))
    assert marked() == {"192.0.2.210"} and (result.marked, result.newly_marked, result.unmarked) == (1, 0, 1)
    assert result.hits == []

    any_app.config["COMMON_IDENTIFIER_THRESHOLD"] = 2
    hits_before = count(session, Hit)
    result = dc.recheck_common(session, world.actor("a_admin"))
    assert marked() == {"192.0.2.210", "192.0.2.212"} and (result.newly_marked, result.unmarked) == (1, 0)
    assert session.scalar(select(CommonIdentifier.case_count).where(CommonIdentifier.value == "192.0.2.212")) == 3
    assert count(session, Hit) == hits_before  # a lowered threshold leaves the hits raised before it

    any_app.config["COMMON_IDENTIFIER_THRESHOLD"] = 5
    result = dc.recheck_common(session, world.actor("a_admin"))
    assert marked() == set() and (result.marked, result.unmarked) == (0, 2)
    expected = {(low.id, high.id) for n, low in enumerate(five) for high in five[n + 1:]}
    assert expected <= {(h.referral_low_id, h.referral_high_id) for h in session.scalars(select(Hit))}
    assert len(result.hits) == len(expected) - 3  # the first three's hits were raised when they came
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "deconfliction.recheck_common")
                            .order_by(AuditEntry.seq.desc())).first()
    assert '"threshold": 5' in entry.detail and '"unmarked": 2' in entry.detail


def test_a_transfer_chain_counts_once_towards_common(any_app, session, world):
    """An address on Alpha's referral, transferred on twice, sits on three referrals of one
    case: with Charlie's referral holding it too, two cases hold it, not four referrals, and
    under a threshold of 2 it raises its hit and answers a blind check as a hit. A third case
    makes it common, counted by case."""
    any_app.config["COMMON_IDENTIFIER_THRESHOLD"] = 2
    address = "192.0.2.201"
    chain = [make_referral(session, world, "sent", sender="a", receiver="b", handling_code="H1")]
    add(session, world, chain[0], "a", address)
    for receiver, onward in (("b", "i"), ("i", "c")):
        actor = world.actor(f"{receiver}_liaison")
        referrals_service.transition(session, actor, chain[-1].id, "acknowledge", None)
        chain.append(referrals_service.transition(session, actor, chain[-1].id, "transfer", None,
                                                  transfer_to_agency_id=world.agencies[onward].id))
    original = chain[0]
    assert [r.transferred_from_id for r in chain] == [None, chain[0].id, chain[1].id]
    charlie = make_referral(session, world, "draft", sender="c", receiver="a")
    add(session, world, charlie, "c", address)

    key = match_key(SECRET, normalise(IdentifierKind.IP, address))
    batch = dc.match_batch(session, [key], threshold=2)
    assert batch.counts == {key: 2} and not batch.common
    assert len(hits_between(session, original, charlie)) == 1 and count(session, CommonIdentifier) == 0
    [line] = dc.blind_check(session, world.actor("b_liaison"), address).lines
    assert line.outcome == dc.CheckOutcome.HIT
    assert sorted(c.reference for c in line.contacts) == sorted([original.reference, charlie.reference])

    bravo = make_referral(session, world, "draft", sender="b", receiver="c")
    add(session, world, bravo, "b", address)
    assert hits_between(session, bravo, original) == [] and hits_between(session, bravo, charlie) == []
    [common] = session.scalars(select(CommonIdentifier)).all()
    assert common.case_count == 3  # cases: the chain, Charlie's and Bravo's
    assert dc.blind_check(session, world.actor("b_liaison"), address).lines[0].outcome == dc.CheckOutcome.COMMON


# --- the blind check ------------------------------------------------------------------------

def test_blind_check_outcomes_and_reasons(session, world, pair):
    ra, rc = pair
    add(session, world, rc, "c", "shared@example.org", "+64 21 555 0123", "username/discord: alice")
    add(session, world, ra, "a", "alpha@example.org")
    before = {m: count(session, m) for m in (Identifier, Subject, Hit, HitMatch, Notification, CommonIdentifier)}
    text = "\n".join([
        "SHARED@example.org",
        "",
        "nobody@example.org",
        "not-an-ip:1.2.3",
        "021 555 0123",
        "username/discord: @Alice",
        "bob",
        "email: alpha@example.org",
        "ip/discord: 192.0.2.1",
    ])
    result = dc.blind_check(session, world.actor("b_liaison"), text, region="NZ")
    by_line = {line.line_no: line for line in result.lines}
    assert sorted(by_line) == [1, 3, 4, 5, 6, 7, 8, 9]  # blank lines are skipped
    assert by_line[1].outcome == dc.CheckOutcome.HIT
    charlie = world.agencies["c"]
    assert by_line[1].contacts == [dc.Contact(charlie.id, charlie.name, "GB", charlie.desk_email,
                                              charlie.desk_phone, rc.reference)]
    assert by_line[3].outcome == dc.CheckOutcome.NO_HIT
    assert by_line[4].outcome == dc.CheckOutcome.INVALID and "cannot tell" in by_line[4].reason
    assert by_line[5].outcome == dc.CheckOutcome.HIT and by_line[5].kind is IdentifierKind.PHONE  # the region hint
    assert by_line[6].outcome == dc.CheckOutcome.HIT
    assert by_line[7].outcome == dc.CheckOutcome.INVALID
    assert by_line[8].outcome == dc.CheckOutcome.HIT and by_line[8].contacts[0].agency_name == "Alpha Police"
    assert by_line[9].outcome == dc.CheckOutcome.INVALID and "platform" in by_line[9].reason
    # Alpha's own referral shows as its own, not as a contact.
    mine = dc.blind_check(session, world.actor("a_liaison"), "alpha@example.org")
    assert mine.lines[0].own_references == [ra.reference] and mine.lines[0].contacts == []

    after = {m: count(session, m) for m in before}
    assert after == before  # nothing from the check is stored...
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "deconfliction.blind_check")
                            .order_by(AuditEntry.seq)).first()
    assert entry is not None and "example.org" not in entry.detail  # ...but the audit entry
    assert '"identifiers": 8' in entry.detail and '"invalid": 3' in entry.detail


def test_blind_check_with_a_chosen_kind(session, world, pair):
    _, rc = pair
    add(session, world, rc, "c", "account_id/steam: 7656119", "username/x: bob")
    result = dc.blind_check(session, world.actor("a_liaison"), "7656119\nbob",
                            kind=IdentifierKind.ACCOUNT_ID, platform="steam")
    assert [line.outcome for line in result.lines] == [dc.CheckOutcome.HIT, dc.CheckOutcome.NO_HIT]
    result = dc.blind_check(session, world.actor("a_liaison"), "bob", kind=IdentifierKind.USERNAME)
    assert result.lines[0].outcome == dc.CheckOutcome.INVALID and "needs a platform" in result.lines[0].reason


def test_blind_check_limit(session, world):
    limit = 10_000
    lines = [f"192.0.2.{n % 250}" if n % 2 else f"2001:db8::{n:x}" for n in range(limit)]
    result = dc.blind_check(session, world.actor("a_liaison"), "\n".join(lines))
    assert len(result.lines) == limit and result.count(dc.CheckOutcome.NO_HIT) == limit
    with pytest.raises(DomainError) as info:
        dc.blind_check(session, world.actor("a_liaison"), "\n".join(lines + ["192.0.2.1"]))
    assert "At most 10,000 identifiers" in info.value.message and "10,001" in info.value.message
    assert info.value.field == "identifiers"
    with pytest.raises(DomainError):
        dc.blind_check(session, world.actor("a_liaison"), "\n \n")


def test_blind_check_needs_a_working_role(session, world):
    for role in ("viewer", "admin"):
        with pytest.raises(Forbidden):
            dc.blind_check(session, world.actor(f"a_{role}"), "192.0.2.1")


# --- set-based matching ---------------------------------------------------------------------

def _seed_holders(session, world, n):
    """Charlie holds n distinct addresses on one referral, and Bravo one of them too."""
    rc = make_referral(session, world, "draft", sender="c", receiver="i")
    addresses = [f"holder{k}@example.org" for k in range(n)]
    add(session, world, rc, "c", *addresses)
    rb = make_referral(session, world, "draft", sender="b", receiver="a")
    add(session, world, rb, "b", addresses[0])
    return addresses


def test_match_batch_is_one_statement_whatever_the_batch_size(session, world):
    addresses = _seed_holders(session, world, 60)
    keys = [match_key(SECRET, normalise("email", a)) for a in addresses]
    misses = [match_key(SECRET, normalise("email", f"miss{k}@example.org")) for k in range(5000)]
    for batch in (keys[:3], keys + misses):
        with statements(session) as seen:
            result = dc.match_batch(session, batch, threshold=20)
        assert len(seen) == 1
    assert set(result.holders) == set(keys)
    assert result.counts[keys[0]] == 2 and len(result.holders[keys[0]]) == 2


def test_match_batch_shared_only_leaves_out_keys_a_single_referral_holds(session, world):
    addresses = _seed_holders(session, world, 3)
    another = make_referral(session, world, "draft", sender="c", receiver="i")
    add(session, world, another, "c", addresses[1])  # on two of Charlie's referrals
    keys = [match_key(SECRET, normalise("email", a)) for a in addresses]

    everything = dc.match_batch(session, keys, threshold=20)
    shared = dc.match_batch(session, keys, threshold=20, shared_only=True)
    assert set(everything.holders) == set(keys) and everything.counts[keys[2]] == 1
    assert shared.counts == {keys[0]: 2, keys[1]: 2} and not shared.common
    for key in keys[:2]:
        assert sorted(shared.holders[key]) == sorted(everything.holders[key])

    # Common keys stay, whatever the threshold: under 0, even a key of one referral is common.
    assert dc.match_batch(session, keys, threshold=1, shared_only=True).common == set(keys[:2])
    assert dc.match_batch(session, keys, threshold=0, shared_only=True).common == set(keys)


def test_refresh_issues_a_bounded_number_of_statements(session, world):
    addresses = _seed_holders(session, world, 120)
    counts = []
    for size in (2, 120):
        referral = make_referral(session, world, "draft", sender="a", receiver="b")
        subject = add(session, world, referral, "a", f"seed{size}@example.org", label=f"size {size}")
        session.flush()
        with statements(session) as seen:
            subjects.add_identifiers(session, world.actor("a_liaison"), referral.id, subject.id,
                                     "\n".join(addresses[:size]))
        counts.append(len(seen))
        matched = session.scalar(select(func.count()).select_from(HitMatch).join(Hit, Hit.id == HitMatch.hit_id)
                                 .where(Hit.referral_high_id == referral.id))
        assert matched >= size * 2
    assert counts[0] == counts[1], counts
    assert counts[1] <= 25


def test_blind_check_statements_do_not_grow_with_the_batch(session, world):
    addresses = _seed_holders(session, world, 30)
    counts = []
    for size in (3, 3000):
        lines = (addresses * 100)[:size]
        with statements(session) as seen:
            dc.blind_check(session, world.actor("a_liaison"), "\n".join(lines))
        counts.append(len(seen))
    assert counts[0] == counts[1], counts


def test_unmarking_common_keys_issues_a_bounded_number_of_statements(any_app, session, world):
    """Keys common under a threshold of 2 (four referrals hold each), then freed by a threshold
    of 4: one refresh of the last holder unmarks them and raises the hits between all four, in
    as many statements for 30 keys as for one."""
    counts = []
    for size in (1, 30):
        any_app.config["COMMON_IDENTIFIER_THRESHOLD"] = 2
        addresses = [f"shared{size}.{k}@example.org" for k in range(size)]
        holders = [make_referral(session, world, "draft", sender=sender, receiver=receiver)
                   for sender, receiver in (("a", "b"), ("c", "i"), ("b", "a"), ("a", "c"))]
        for referral, sender in zip(holders, "acba"):
            add(session, world, referral, sender, *addresses)
        assert count(session, CommonIdentifier) == size
        any_app.config["COMMON_IDENTIFIER_THRESHOLD"] = 4
        session.flush()
        with statements(session) as seen:
            result = dc.refresh_hits(session, world.actor("a_liaison"), [holders[-1].id], since=utcnow())
        counts.append(len(seen))
        assert len(result.uncommon) == size and count(session, CommonIdentifier) == 0
        assert all(hits_between(session, low, high) for n, low in enumerate(holders) for high in holders[n + 1:])
    assert counts[0] == counts[1], counts
