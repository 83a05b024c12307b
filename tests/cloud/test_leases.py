"""Leases (services/leases.py): one holder at a time, renewals keep it, expiry hands it over, a clean
release hands it over at once, a race for a free lease has exactly one winner; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import delete
from sqlmodel import Session

from edgefleet.cloud.services import leases
from edgefleet.cloud.services.leases import LeaseKeeper, Outcome
from edgefleet.cloud.store.engine import create_schema, make_engine, session_scope
from edgefleet.cloud.store.tables import Lease

from cloudkit import FakeClock

BACKENDS = ["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.integration])]


@pytest.fixture(params=BACKENDS)
def engine(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'leases.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    create_schema(engine)
    with session_scope(engine) as session:   # the PostgreSQL database is the module's: start each test empty
        session.exec(delete(Lease))  # type: ignore[call-overload]
    yield engine
    engine.dispose()


def acquire(engine, holder: str, now: float, name: str = "reconciler", ttl_s: float = 10.0) -> Outcome:
    with session_scope(engine) as session:
        return leases.try_acquire(session, name=name, holder=holder, now=now, ttl_s=ttl_s)


def test_one_holder_until_it_expires(engine):
    assert acquire(engine, "a", 100.0) == Outcome.TAKEN
    assert acquire(engine, "b", 105.0) == Outcome.REFUSED
    assert acquire(engine, "a", 106.0) == Outcome.RENEWED   # until 116 now
    assert acquire(engine, "b", 112.0) == Outcome.REFUSED
    assert acquire(engine, "b", 116.0) == Outcome.TAKEN
    assert acquire(engine, "a", 117.0) == Outcome.REFUSED
    with Session(engine) as session:
        lease = session.get(Lease, "reconciler")
        assert lease is not None
        assert (lease.holder, lease.acquired_at, lease.expires_at, lease.generation) == ("b", 116.0, 126.0, 2)
        assert leases.holder_of(session, "reconciler", now=125.0) == "b"
        assert leases.holder_of(session, "reconciler", now=126.0) is None


def test_a_renewal_keeps_when_it_was_taken(engine):
    acquire(engine, "a", 100.0)
    acquire(engine, "a", 103.0)
    with Session(engine) as session:
        lease = session.get(Lease, "reconciler")
        assert lease is not None and (lease.acquired_at, lease.expires_at, lease.generation) == (100.0, 113.0, 1)


def test_release_hands_over_at_once_and_only_the_holders_own(engine):
    acquire(engine, "a", 100.0, name="reconciler")
    acquire(engine, "b", 100.0, name="webhooks")
    with session_scope(engine) as session:
        leases.release(session, names=["reconciler", "webhooks"], holder="a")
    assert acquire(engine, "b", 101.0, name="reconciler") == Outcome.TAKEN
    assert acquire(engine, "a", 101.0, name="webhooks") == Outcome.REFUSED   # b's was not a's to release


def test_a_race_for_a_free_lease_has_one_winner(engine):
    barrier = threading.Barrier(4)
    outcomes: list[Outcome] = []

    def race(holder: str) -> None:
        barrier.wait()
        for attempt in range(3):   # SQLite may answer "database is locked" to a writer that waited too long
            try:
                outcomes.append(acquire(engine, holder, 100.0, name="race"))
                return
            except Exception:
                if attempt == 2:
                    raise

    threads = [threading.Thread(target=race, args=(f"h{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == sorted([Outcome.TAKEN] + [Outcome.REFUSED] * 3)


def test_keeper_takes_renews_and_loses(engine):
    clock = FakeClock(1000.0)

    def open_session():
        return session_scope(engine)

    a = LeaseKeeper(open_session, holder="a", names=["reconciler", "webhooks"], ttl_s=9.0, clock=clock)
    b = LeaseKeeper(open_session, holder="b", names=["reconciler", "webhooks"], ttl_s=9.0, clock=clock)
    first = a.run_pass()
    assert first.taken == first.held == {"reconciler", "webhooks"} and not first.lost
    assert a.holds("reconciler") and not b.holds("reconciler")
    assert not b.run_pass().held
    clock.advance(3)
    again = a.run_pass()
    assert again.held == {"reconciler", "webhooks"} and not again.taken   # a renewal is not a take
    clock.advance(6.5)   # a's last renewal is 6.5 s old: past its 2/3 margin, a stops acting on it
    assert not a.holds("reconciler")
    clock.advance(3)   # 9.5 s after the renewal: expired, b takes over
    taken = b.run_pass()
    assert taken.taken == {"reconciler", "webhooks"}
    lost = a.run_pass()
    assert lost.lost == {"reconciler", "webhooks"} and not lost.held and not a.holds("webhooks")
    b.release_all()
    assert a.run_pass().taken == {"reconciler", "webhooks"}


def test_keeper_pass_that_cannot_reach_the_database_holds_nothing(engine):
    clock = FakeClock(1000.0)
    keeper = LeaseKeeper(lambda: session_scope(engine), holder="a", names=["reconciler"], ttl_s=9.0, clock=clock)
    keeper.run_pass()

    def broken():
        raise ConnectionError("database gone")

    keeper.open_session = broken  # type: ignore[assignment]
    failed = keeper.run_pass()
    assert failed.lost == {"reconciler"} and not keeper.holds("reconciler")
    keeper.open_session = lambda: session_scope(engine)
    back = keeper.run_pass()
    assert back.held == {"reconciler"} and not back.taken   # still its own lease: nothing to recover
