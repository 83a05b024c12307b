"""End-to-end delivery, agent side (agent/outbox.py): once the controller acknowledges, rows leave
the outbox on its acknowledgement only and are published again, with backoff, until it comes;
before that (a controller that never acknowledges) they leave on the broker's PUBACK as before."""

from __future__ import annotations

import random

from edgefleet.agent.backoff import delay
from edgefleet.agent.outbox import CONTROLLER_ACKS, Outbox, OutboxPump


class Client:
    """Records publishes; each gets the next mid."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int) -> int:
        self.sent.append((len(self.sent) + 1, payload))
        return len(self.sent)

    def puback_all(self, pump: OutboxPump) -> None:
        for mid, _ in self.sent:
            pump.acked(mid)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _box(tmp_path, n: int = 3, **kw) -> Outbox:
    box = Outbox(tmp_path / "o.sqlite", **kw)
    for i in range(n):
        box.enqueue("t", f"m{i}".encode(), msg_id=f"id{i}")
    return box


def test_before_any_controller_ack_rows_leave_on_the_pubAck(tmp_path):
    box = _box(tmp_path)
    pump = OutboxPump(box)
    client = Client()
    pump.pump(client.publish, connected=True)
    client.puback_all(pump)
    pump.pump(client.publish, connected=True)
    assert len(box) == 0 and not pump.end_to_end   # an old controller: the outbox does not grow


def test_the_first_controller_ack_switches_to_end_to_end_and_is_remembered(tmp_path):
    box = _box(tmp_path)
    pump = OutboxPump(box)
    client = Client()
    pump.pump(client.publish, connected=True)
    pump.delivered(["id0"])
    client.puback_all(pump)
    pump.pump(client.publish, connected=True)
    assert pump.end_to_end and [r.msg_id for r in box.pending()] == ["id1", "id2"]   # PUBACK no longer deletes
    assert box.counter(CONTROLLER_ACKS) == 1
    box.close()
    assert OutboxPump(Outbox(tmp_path / "o.sqlite")).end_to_end


def test_unacknowledged_rows_are_published_again_with_growing_backoff(tmp_path):
    box = _box(tmp_path, n=2)
    clock, seed = Clock(), 7
    pump = OutboxPump(box, end_to_end=True, ack_timeout_s=10, retry_cap_s=1000, rng=random.Random(seed),
                      monotonic=clock)
    client = Client()
    assert pump.pump(client.publish, connected=True) == 2
    client.puback_all(pump)
    pump.pump(client.publish, connected=True)
    assert pump.awaiting == 2 and len(client.sent) == 2

    rng = random.Random(seed)
    waits = [delay(0, rng, base=10, cap=1000), delay(0, rng, base=10, cap=1000)]
    clock.now += max(waits) - 0.01 if waits[0] == waits[1] else min(waits) - 0.01
    pump.pump(client.publish, connected=True)
    assert len(client.sent) == 2                 # not yet due
    clock.now = 100.0 + max(waits) + 0.01
    assert pump.pump(client.publish, connected=True) == 2   # both due: published again
    assert [p for _, p in client.sent[2:]] == [b"m0", b"m1"] and pump.resent == 2

    pump.delivered(["id0"])                       # the controller stored m0 this time
    for mid, _ in client.sent[2:]:
        pump.acked(mid)
    pump.pump(client.publish, connected=True)
    assert [r.msg_id for r in box.pending()] == ["id1"]
    second_wait = delay(1, random.Random(0), base=10, cap=1000)
    assert second_wait >= 10                      # attempt 1 waits at least the base, up to twice it
    clock.now += 20.01                            # past the longest second wait (2 x base)
    assert pump.pump(client.publish, connected=True) == 1 and client.sent[-1][1] == b"m1"


def test_a_row_is_not_published_twice_while_it_waits(tmp_path):
    box = _box(tmp_path, n=1)
    clock = Clock()
    pump = OutboxPump(box, end_to_end=True, ack_timeout_s=30, monotonic=clock)
    client = Client()
    pump.pump(client.publish, connected=True)
    client.puback_all(pump)
    for _ in range(5):
        clock.now += 1
        assert pump.pump(client.publish, connected=True) == 0
    assert len(client.sent) == 1


def test_acks_for_unknown_ids_or_before_the_pubAck_are_harmless(tmp_path):
    box = _box(tmp_path, n=2)
    pump = OutboxPump(box, end_to_end=True)
    client = Client()
    pump.pump(client.publish, connected=True)
    pump.delivered(["id1", "never-sent", "id1"])  # before its PUBACK; an id this device never had
    pump.pump(client.publish, connected=True)
    client.puback_all(pump)
    pump.pump(client.publish, connected=True)
    assert [r.msg_id for r in box.pending()] == ["id0"] and pump.awaiting == 1 and pump.inflight == 0


def test_after_a_restart_every_unacknowledged_row_is_sent_again(tmp_path):
    box = _box(tmp_path, n=2)
    pump = OutboxPump(box, end_to_end=True)
    client = Client()
    pump.pump(client.publish, connected=True)
    client.puback_all(pump)
    pump.pump(client.publish, connected=True)
    box.close()
    box2 = Outbox(tmp_path / "o.sqlite")
    client2 = Client()
    assert OutboxPump(box2, end_to_end=True).pump(client2.publish, connected=True) == 2


def test_delivery_broker_never_waits_for_the_controller(tmp_path):
    box = _box(tmp_path, n=2)
    pump = OutboxPump(box, end_to_end=False)
    client = Client()
    pump.pump(client.publish, connected=True)
    pump.delivered(["id0"])
    client.puback_all(pump)
    pump.pump(client.publish, connected=True)
    assert len(box) == 0 and not pump.end_to_end and box.counter(CONTROLLER_ACKS) == 0


def test_the_outbox_stays_bounded_while_nothing_is_acknowledged(tmp_path):
    box = _box(tmp_path, n=0, max_rows=5)
    pump = OutboxPump(box, end_to_end=True)
    client = Client()
    for i in range(12):
        box.enqueue("t", b"x", msg_id=f"w{i}")
        pump.pump(client.publish, connected=True)
        client.puback_all(pump)
    assert len(box) == 5 and [r.msg_id for r in box.pending()] == [f"w{i}" for i in range(7, 12)]
