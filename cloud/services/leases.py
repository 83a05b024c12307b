"""Leases: exactly one controller process at a time runs each background loop (the reconciler, the
compression and retraining workers, the webhook sender, the incident pass) when several controllers
share one database (docs/operations.md, "Several controllers").

A lease is a row of ``leases``: its holder and when it expires. Taking or renewing it is one
conditional ``UPDATE`` (the row is free, expired, or already ours), so two processes can never both
succeed, on SQLite and PostgreSQL alike, without advisory-lock functions of one server. A holder
renews every ``ttl / 3``; a process that dies (kill -9, lost host) stops renewing and another one takes
the lease over once it expires; a process that stops cleanly releases it at once.

:class:`LeaseKeeper` is the reconciler of the leases of one process: one pass tries every lease the
process wants, and says which it holds now and which it has just taken over (its loop then runs the
recovery a new holder owes, e.g. failing the jobs the dead holder left "running").
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from edgefleet.cloud.store.engine import OpenSession
from edgefleet.cloud.store.tables import Lease

log = logging.getLogger(__name__)


def instance_name() -> str:
    """A name for this controller process no other process shares: host, pid and a random part."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Outcome(StrEnum):
    RENEWED = "renewed"
    """The holder had it already: it keeps it longer."""
    TAKEN = "taken"
    """It was free or expired: the holder has it now (a takeover when someone else held it before)."""
    REFUSED = "refused"
    """Another holder has it and it has not expired."""


def try_acquire(session: Session, *, name: str, holder: str, now: float, ttl_s: float) -> Outcome:
    """Take or renew lease ``name`` for ``holder`` until ``now + ttl_s``. Each change is a compare-and-set
    on the holder the row had when read, so of two processes racing for a free lease one wins. The
    caller commits."""
    lease = session.get(Lease, name)
    if lease is None:
        try:
            with session.begin_nested():
                session.add(Lease(name=name, holder=holder, expires_at=now + ttl_s, acquired_at=now))
        except IntegrityError:
            return Outcome.REFUSED   # another process created it first: it holds it
        return Outcome.TAKEN
    previous, renewing = lease.holder, lease.holder == holder
    if not renewing and lease.expires_at > now:
        return Outcome.REFUSED
    values: dict[str, object] = {"holder": holder, "expires_at": now + ttl_s}
    if not renewing:
        values.update(acquired_at=now, generation=lease.generation + 1)
    result = session.exec(update(Lease).where(
        col(Lease.name) == name, col(Lease.holder) == previous,
        col(Lease.generation) == lease.generation).values(**values).execution_options(synchronize_session=False))
    session.expire(lease)
    if not result.rowcount:
        return Outcome.REFUSED   # someone else changed it between our read and our write
    return Outcome.RENEWED if renewing else Outcome.TAKEN


def release(session: Session, *, names: Iterable[str], holder: str) -> None:
    """Give up ``holder``'s leases among ``names`` now (a clean stop): another process may take them at once."""
    session.exec(update(Lease).where(col(Lease.name).in_(list(names)),
                                     col(Lease.holder) == holder).values(expires_at=0.0))


def holder_of(session: Session, name: str, *, now: float) -> str | None:
    """Who holds lease ``name`` at ``now`` (``None``: nobody, or it expired)."""
    lease = session.get(Lease, name)
    return lease.holder if lease is not None and lease.expires_at > now else None


@dataclass(frozen=True)
class KeeperPass:
    held: frozenset[str]
    taken: frozenset[str]
    """Leases this pass took (free, or expired in another holder's name): what their loop's previous holder
    left undone is now this process's to clean up. A renewal after a failed pass is not a take."""
    lost: frozenset[str]
    """Leases this process held before the pass and no longer holds."""


class LeaseKeeper:
    """Keeps the leases of one controller process: :meth:`run_pass` takes or renews each wanted lease
    (the controller calls it every ``ttl / 3`` on a thread of its own, so a long pass of a loop keeps
    its lease), :meth:`holds` is what a loop checks before each pass."""

    def __init__(self, open_session: OpenSession, *, holder: str, names: Iterable[str],
                 ttl_s: float, clock: Callable[[], float]) -> None:
        self.open_session = open_session
        self.holder = holder
        self.names = tuple(names)
        self.ttl_s = ttl_s
        self.clock = clock
        self._held: frozenset[str] = frozenset()
        self._valid_until = 0.0
        self._lock = threading.Lock()

    def holds(self, name: str) -> bool:
        """Whether this process holds lease ``name`` now (as of its last renewal, which is still valid)."""
        with self._lock:
            return name in self._held and self.clock() < self._valid_until

    def run_pass(self) -> KeeperPass:
        now = self.clock()
        outcomes: dict[str, Outcome] = {}
        try:
            with self.open_session() as session:
                for name in self.names:
                    outcomes[name] = try_acquire(session, name=name, holder=self.holder, now=now, ttl_s=self.ttl_s)
        except Exception:
            log.exception("renewing the controller's leases failed: its background loops pause until the "
                          "database answers again")
            outcomes = {}
        held = {name for name, outcome in outcomes.items() if outcome != Outcome.REFUSED}
        with self._lock:
            before = self._held
            self._held = frozenset(held)
            # a margin below the TTL: a renewal that comes late must not overlap the next holder's first pass
            self._valid_until = now + self.ttl_s * 2 / 3
        report = KeeperPass(held=frozenset(held),
                            taken=frozenset(n for n, o in outcomes.items() if o == Outcome.TAKEN),
                            lost=frozenset(before - held))
        for name in sorted(report.taken):
            log.info("lease %s taken by %s", name, self.holder)
        for name in sorted(report.lost):
            log.warning("lease %s lost by %s (another controller runs it now)", name, self.holder)
        return report

    def release_all(self) -> None:
        with self._lock:
            names, self._held = self._held, frozenset()
        if not names:
            return
        try:
            with self.open_session() as session:
                release(session, names=names, holder=self.holder)
        except Exception:  # they expire on their own
            log.exception("releasing the controller's leases failed; they expire in %.0f s", self.ttl_s)
