"""Durable outbox (SQLite, WAL) for everything the device must not lose: telemetry windows,
deployment status reports, events.

A row is written (and synced) before anything is published and deleted only when the broker
has acknowledged it (paho's ``on_publish`` for the row's message id, i.e. the PUBACK of a
QoS 1 publish). Rows handed to the client survive reconnects inside the client (paho re-sends
unacknowledged QoS 1 messages with the DUP flag); after a process restart every remaining row
is published again. Every payload carries a ``msg_id`` so the receiver de-duplicates.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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

    def ack(self, row_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


class OutboxPump:
    """Moves outbox rows to an MQTT client and deletes them on acknowledgement.

    ``publish(topic, payload, qos) -> mid | None`` hands a message to the client (None: not
    connected, try later). ``acked(mid)`` is called from the client's network thread; it only
    records the mid, the pump thread (``pump()``) does the bookkeeping, so no lock is shared
    with the client's internals.
    """

    def __init__(self, outbox: Outbox, *, window: int = 64) -> None:
        self.outbox = outbox
        self.window = window
        self._inflight: dict[int, int] = {}  # mid -> row id
        self._handed: set[int] = set()       # row ids given to the client in this process
        self._acks: list[int] = []
        self._acks_lock = threading.Lock()

    def acked(self, mid: int) -> None:
        with self._acks_lock:
            self._acks.append(mid)

    def pump(self, publish: Callable[[str, bytes, int], int | None], connected: bool) -> int:
        """Process acknowledgements, then hand new rows to the client. Returns rows handed."""
        with self._acks_lock:
            acks, self._acks = self._acks, []
        for acked in acks:
            row_id = self._inflight.pop(acked, None)
            if row_id is not None:
                self.outbox.ack(row_id)
                self._handed.discard(row_id)
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

    @property
    def inflight(self) -> int:
        return len(self._inflight)
