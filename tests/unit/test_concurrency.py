"""Two people working the same referral at the same moment on PostgreSQL: neither change is
lost; the second gets a Conflict."""

from __future__ import annotations

import threading

from sqlalchemy.orm import sessionmaker

from app.models import Referral, Status
from app.services import Conflict
from app.services import referrals as service
from app.services.audit import Actor
from tests.factories import build_world, make_referral


def test_simultaneous_transitions_one_wins_one_conflicts(pg_app):
    engine = pg_app.extensions["handoff_db"]["engine"]
    make_session = sessionmaker(bind=engine, expire_on_commit=False)
    with make_session() as setup:
        world = build_world(setup, pg_app.extensions["handoff_passwords"])
        referral = make_referral(setup, world, "sent")
        setup.commit()
        referral_id, version = referral.id, referral.version
        liaison_id, manager_id = world.users["b_liaison"].id, world.users["b_manager"].id

    barrier = threading.Barrier(2)
    results: dict[str, str] = {}

    def work(name: str, user_id: int, action: str) -> None:
        with make_session() as session:
            user = session.get(type(world.users["b_liaison"]), user_id)
            session.get(Referral, referral_id)  # both have loaded the same version
            barrier.wait()
            try:
                service.transition(session, Actor(user, "test"), referral_id, action, version, "A reason.")
                session.commit()
                results[name] = "ok"
            except Conflict:
                session.rollback()
                results[name] = "conflict"

    threads = [threading.Thread(target=work, args=("liaison", liaison_id, "acknowledge")),
               threading.Thread(target=work, args=("manager", manager_id, "acknowledge"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results.values()) == ["conflict", "ok"]
    with make_session() as check:
        final = check.get(Referral, referral_id)
        assert final.status is Status.ACKNOWLEDGED
        assert [e.action for e in final.events].count("acknowledge") == 1
        assert final.version == version + 1


def test_lost_update_is_impossible_without_a_version_from_the_form(pg_app):
    """Even a caller that passes no expected version cannot overwrite a concurrent change:
    the row lock plus the version column make the second writer see the first's result."""
    engine = pg_app.extensions["handoff_db"]["engine"]
    make_session = sessionmaker(bind=engine, expire_on_commit=False)
    with make_session() as setup:
        world = build_world(setup, pg_app.extensions["handoff_passwords"])
        referral = make_referral(setup, world, "sent")
        setup.commit()
        referral_id = referral.id
        sender_id, receiver_id = world.users["a_liaison"].id, world.users["b_liaison"].id

    first, second = make_session(), make_session()
    try:
        user_b = second.get(type(world.users["b_liaison"]), receiver_id)
        user_a = first.get(type(world.users["a_liaison"]), sender_id)
        service.transition(first, Actor(user_a, "t"), referral_id, "withdraw", None, "Withdrawn by sender.")
        done = threading.Event()

        def acknowledge():
            try:
                service.transition(second, Actor(user_b, "t"), referral_id, "acknowledge", None)
                second.commit()
            except Exception as exc:  # noqa: BLE001 - the refusal is what we look at
                results.append(exc)
                second.rollback()
            done.set()

        results: list[Exception] = []
        thread = threading.Thread(target=acknowledge)
        thread.start()
        assert not done.wait(0.5)  # blocked on the row lock held by the first transaction
        first.commit()
        thread.join(timeout=30)
        assert len(results) == 1 and "withdrawn" in str(results[0])
    finally:
        first.close()
        second.close()
    with make_session() as check:
        assert check.get(Referral, referral_id).status is Status.WITHDRAWN
