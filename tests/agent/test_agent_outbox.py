from __future__ import annotations

import pytest

from edgefleet.agent.outbox import Outbox, OutboxPump


class FakeClient:
    def __init__(self) -> None:
        self.sent: list[tuple[int, str, bytes]] = []
        self.next_mid = 1

    def publish(self, topic, payload, qos):
        mid = self.next_mid
        self.next_mid += 1
        self.sent.append((mid, topic, payload))
        return mid


def test_rows_leave_only_when_acknowledged(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    pump = OutboxPump(box)
    client = FakeClient()
    for i in range(3):
        box.enqueue("t", f"m{i}".encode(), msg_id=f"id{i}")
    assert pump.pump(client.publish, connected=False) == 0
    assert pump.pump(client.publish, connected=True) == 3
    assert pump.pump(client.publish, connected=True) == 0  # in flight: not handed twice
    pump.acked(client.sent[0][0])
    pump.acked(client.sent[2][0])
    pump.pump(client.publish, connected=True)
    assert [r.msg_id for r in box.pending()] == ["id1"]


def test_unacknowledged_rows_survive_a_restart_and_are_resent(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    box.enqueue("t", b"a", msg_id="a")
    box.enqueue("t", b"b", msg_id="b")
    client = FakeClient()
    pump = OutboxPump(box)
    pump.pump(client.publish, connected=True)
    pump.acked(client.sent[0][0])
    pump.pump(client.publish, connected=True)
    box.close()

    box2 = Outbox(tmp_path / "o.sqlite")
    client2 = FakeClient()
    OutboxPump(box2).pump(client2.publish, connected=True)
    assert [p for _, _, p in client2.sent] == [b"b"]


def test_enqueue_is_idempotent_by_msg_id(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    assert box.enqueue("t", b"x", msg_id="same")
    assert not box.enqueue("t", b"x", msg_id="same")
    assert len(box) == 1


def test_publish_refused_keeps_the_row(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    box.enqueue("t", b"x", msg_id="x")
    pump = OutboxPump(box)
    assert pump.pump(lambda *a: None, connected=True) == 0
    client = FakeClient()
    assert pump.pump(client.publish, connected=True) == 1


def test_window_bounds_in_flight_messages(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    for i in range(10):
        box.enqueue("t", b"x", msg_id=str(i))
    pump = OutboxPump(box, window=4)
    client = FakeClient()
    assert pump.pump(client.publish, connected=True) == 4
    assert pump.inflight == 4


def test_bounded_size_drops_oldest(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_rows=3)
    for i in range(5):
        box.enqueue("t", b"x", msg_id=str(i))
    assert [r.msg_id for r in box.pending()] == ["2", "3", "4"]


def test_sequenced_enqueue_is_gapless_and_atomic(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    assert box.enqueue_sequenced("t", "w", lambda n: (f"w{n}".encode(), f"id{n}")) == 0
    with pytest.raises(RuntimeError):
        box.enqueue_sequenced("t", "w", lambda n: (_ for _ in ()).throw(RuntimeError("crash")))
    assert box.enqueue_sequenced("t", "w", lambda n: (f"w{n}".encode(), f"id{n}")) == 1
    box.close()
    box = Outbox(tmp_path / "o.sqlite")
    assert box.counter("w") == 2 and [r.payload for r in box.pending()] == [b"w0", b"w1"]
