"""Durable outbox (SQLite, WAL) for everything the device must not lose: telemetry windows,
deployment status reports, events.

A row is written (and synced) before anything is published and deleted only when it is known to
be delivered. Delivery is end to end once the controller has been seen acknowledging (a signed
``ack`` naming the row's ``msg_id`` after the controller committed it, docs/protocol.md "Delivery
acknowledgements"; the fact is kept in the outbox, so it survives restarts): the broker's PUBACK
then only starts a timer, and a row the controller has not acknowledged when it runs out is
published again, with jittered exponential backoff per row, until it is. Before that (a controller
that never acknowledges) a row goes on the broker's PUBACK (paho's ``on_publish`` of a QoS 1
publish), as before. Rows handed to the client survive reconnects inside the client (paho re-sends
unacknowledged QoS 1 messages with the DUP flag); after a process restart every remaining row is
published again. Every payload carries a ``msg_id`` so the receiver de-duplicates.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.backoff import delay

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.sqlite"
"""Its name in the state directory."""

CONTROLLER_ACKS = "controller_acks"
"""Counter set to 1 once the controller has acknowledged a message: delivery is end to end from then on."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Row:
    id: int
    msg_id: str
    topic: str
    payload: bytes
    qos: int


class Outbox:
    def __init__(self, path: Path, *, max_rows: int = 100_000) -> None:
        self.path = path
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def enqueue(self, topic: str, payload: bytes, *, msg_id: str, qos: int = 1) -> bool:
        """Store a message; False if a row with this ``msg_id`` is already waiting."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO outbox (msg_id, topic, payload, qos, created) VALUES (?, ?, ?, ?, ?)",
                (msg_id, topic, payload, qos, time.time()))
            if cur.rowcount and self.max_rows:
                # Bounded: the oldest rows go first when a device is offline for very long.
                self._db.execute("DELETE FROM outbox WHERE id <= (SELECT MAX(id) FROM outbox) - ?",
                                 (self.max_rows,))
            return bool(cur.rowcount)

    def counter(self, name: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def enqueue_sequenced(self, topic: str, counter: str, build: Callable[[int], tuple[bytes, str]], *,
                          qos: int = 1) -> int:
        """Take the next number of ``counter`` and store ``build(n) -> (payload, msg_id)`` in ONE
        transaction: a crash never reuses a number for another message nor skips one."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM counters WHERE name = ?", (counter,)).fetchone()
                n = row[0] if row else 0
                payload, msg_id = build(n)
                self._db.execute("INSERT INTO outbox (msg_id, topic, payload, qos, created) VALUES (?, ?, ?, ?, ?)",
                                 (msg_id, topic, payload, qos, time.time()))
                self._db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                                 "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (counter, n + 1))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return n

    def pending(self, *, exclude: set[int] | frozenset[int] = frozenset(), limit: int = 100) -> list[Row]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, msg_id, topic, payload, qos FROM outbox ORDER BY id LIMIT ?",
                (limit + len(exclude),)).fetchall()
        return [Row(*r) for r in rows if r[0] not in exclude][:limit]

    def discard_messages(self) -> int:
        """Delete every queued message (the counters stay, so numbers are never reused); returns how many.
        For a re-enrollment: what is queued was signed with the key it replaces."""
        with self._lock:
            return self._db.execute("DELETE FROM outbox").rowcount

    def ack(self, row_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def delete_msg_ids(self, msg_ids: Iterable[str]) -> list[int]:
        """Delete the rows of these message ids (those still here); returns their row ids."""
        ids = list(msg_ids)
        if not ids:
            return []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = []
                for start in range(0, len(ids), 500):
                    chunk = ids[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    found = [r[0] for r in self._db.execute(   # no RETURNING: devices may have SQLite < 3.35
                        f"SELECT id FROM outbox WHERE msg_id IN ({marks})", chunk).fetchall()]
                    self._db.execute(f"DELETE FROM outbox WHERE msg_id IN ({marks})", chunk)
                    rows += found
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return rows

    def set_counter(self, name: str, value: int) -> None:
        with self._lock:
            self._db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                             "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


class OutboxPump:
    """Moves outbox rows to an MQTT client and deletes them once delivered.

    ``publish(topic, payload, qos) -> mid | None`` hands a message to the client (None: not
    connected, try later). ``acked(mid)`` (the broker's PUBACK) and ``delivered(msg_ids)`` (the
    controller's verified acknowledgement) only record what they are told; the pump thread
    (``pump()``) does the bookkeeping, so no lock is shared with the client's internals.

    ``window`` bounds the rows handed to the client and not yet PUBACKed. Once end to end, a
    PUBACKed row waits ``delay(attempt, base=ack_timeout_s, cap=retry_cap_s)`` for the controller's
    acknowledgement, then is published again (attempt + 1).
    """

    def __init__(self, outbox: Outbox, *, window: int = 64, ack_timeout_s: float = 30.0,
                 retry_cap_s: float = 600.0, end_to_end: bool | None = None, rng: random.Random | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.outbox = outbox
        self.window = window
        self.ack_timeout_s = ack_timeout_s
        self.retry_cap_s = retry_cap_s
        self.rng = rng or random.Random()
        self.monotonic = monotonic
        self.end_to_end = bool(outbox.counter(CONTROLLER_ACKS)) if end_to_end is None else end_to_end
        """Wait for the controller's acknowledgement (``None`` at construction: as the outbox remembers)."""
        self._learn = end_to_end is None
        self._inflight: dict[int, int] = {}   # mid -> row id, not PUBACKed yet
        self._awaiting: dict[int, float] = {}  # row id -> when to publish it again (end to end)
        self._attempts: dict[int, int] = {}    # row id -> times published again
        self._handed: set[int] = set()         # row ids given to the client and not yet due again
        self._acks: list[int] = []
        self._delivered: list[str] = []
        self._acks_lock = threading.Lock()
        self.resent = 0
        """Rows published again because no acknowledgement came in time (this process)."""

    def acked(self, mid: int) -> None:
        with self._acks_lock:
            self._acks.append(mid)

    def delivered(self, msg_ids: Iterable[str]) -> None:
        """The controller acknowledged these messages (its signature already checked by the caller)."""
        with self._acks_lock:
            self._delivered.extend(msg_ids)

    def pump(self, publish: Callable[[str, bytes, int], int | None], connected: bool) -> int:
        """Process acknowledgements and timeouts, then hand rows to the client. Returns rows handed."""
        with self._acks_lock:
            acks, self._acks = self._acks, []
            delivered, self._delivered = self._delivered, []
        now = self.monotonic()
        if delivered:
            self._on_delivered(delivered)
        for acked in acks:
            row_id = self._inflight.pop(acked, None)
            if row_id is None:
                continue
            if self.end_to_end:
                attempt = self._attempts.get(row_id, 0)
                self._awaiting[row_id] = now + delay(attempt, self.rng, base=self.ack_timeout_s, cap=self.retry_cap_s)
            else:
                self.outbox.ack(row_id)
                self._handed.discard(row_id)
        self._expire(now)
        if not connected:
            return 0
        room = self.window - len(self._inflight)
        if room <= 0:
            return 0
        handed = 0
        for row in self.outbox.pending(exclude=self._handed, limit=room):
            mid = publish(row.topic, row.payload, row.qos)
            if mid is None:
                break
            self._inflight[mid] = row.id
            self._handed.add(row.id)
            handed += 1
        return handed

    def _on_delivered(self, msg_ids: list[str]) -> None:
        if not self.end_to_end and self._learn:
            self.end_to_end = True
            self.outbox.set_counter(CONTROLLER_ACKS, 1)
            log.info("the controller acknowledges what it stores: outbox rows now wait for its acknowledgement")
        gone = set(self.outbox.delete_msg_ids(msg_ids))
        for row_id in gone:
            self._handed.discard(row_id)
            self._awaiting.pop(row_id, None)
            self._attempts.pop(row_id, None)
        if gone and any(row_id in gone for row_id in self._inflight.values()):   # acknowledged before its PUBACK
            self._inflight = {mid: row_id for mid, row_id in self._inflight.items() if row_id not in gone}

    def _expire(self, now: float) -> None:
        """Rows whose acknowledgement is overdue become pending again."""
        due = [row_id for row_id, at in self._awaiting.items() if at <= now]
        for row_id in due:
            del self._awaiting[row_id]
            self._handed.discard(row_id)
            self._attempts[row_id] = self._attempts.get(row_id, 0) + 1
        if due:
            self.resent += len(due)
            log.info("%d outbox row(s) not acknowledged by the controller in time: publishing them again", len(due))

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def awaiting(self) -> int:
        """Rows the broker has but the controller has not acknowledged yet."""
        return len(self._awaiting)
