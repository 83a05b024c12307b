"""A broker outage during telemetry loses nothing and duplicates nothing (durable outbox).

Runs its own Mosquitto on a free port (the shared one on 1883 is never stopped)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from agentkit.bundles import samples
from agentkit.harness import Harness
from testkit import wait_until

pytestmark = pytest.mark.integration


def windows_by_seq(observer) -> dict[int, set[str]]:
    seen: dict[int, set[str]] = defaultdict(set)
    for t in observer.of("telemetry"):
        seen[t["window_seq"]].add(t["msg_id"])
    return seen


def test_broker_outage_every_window_arrives_exactly_once(tmp_path, private_mosquitto, topic_prefix, release_key,
                                                         controller_key, file_server, tiny_onnx):
    broker = private_mosquitto
    h = Harness(tmp_path, broker.broker, topic_prefix, release_key, controller_key, file_server, tiny_onnx,
                persistent_observer=True)
    try:
        agent = h.start(telemetry_interval_s=0.2)
        assert h.install(h.bundle())["outcome"] == "committed"

        def stats():
            return agent.get("/v1/stats")[1]

        def traffic():
            assert agent.predict({"x": samples(n=3).tolist()})[0] == 200

        # phase 1: the broker goes away while the agent keeps producing windows
        traffic()
        broker.stop()
        wait_until(lambda: not stats()["connected"], what="agent notices the outage")
        before = stats()["telemetry_windows"]
        for _ in range(4):
            traffic()
        wait_until(lambda: stats()["telemetry_windows"] >= before + 5, what="windows during the outage")
        assert stats()["outbox_pending"] >= 5
        assert agent.get("/v1/health")[0] == 200  # inference keeps serving offline
        broker.start()
        wait_until(lambda: stats()["connected"] and stats()["outbox_pending"] == 0, what="outbox drained")

        # phase 2: outage AND the agent is killed; the next process sends what the last one queued
        broker.stop()
        wait_until(lambda: not stats()["connected"], what="second outage noticed")
        traffic()
        wait_until(lambda: stats()["outbox_pending"] >= 3, what="windows queued")
        h.agent.kill()
        broker.start()
        agent = h.start()
        wait_until(lambda: agent.get("/v1/stats")[1]["outbox_pending"] == 0 and agent.get("/v1/stats")[1]["connected"],
                   what="outbox drained after restart")
        last = agent.get("/v1/stats")[1]["telemetry_windows"] - 1

        try:
            seen = h.observer.wait_for(lambda o: (lambda w: w if all(s in w for s in range(last + 1)) else None)(
                windows_by_seq(o)), what=f"windows 0..{last}")
        except AssertionError:
            got = windows_by_seq(h.observer)
            raise AssertionError(f"missing windows {[s for s in range(last + 1) if s not in got]} of 0..{last}") \
                from None
        assert sorted(seen)[: last + 1] == list(range(last + 1)), "a window was lost"
        assert all(len(ids) == 1 for ids in seen.values()), "a window arrived under two message ids"
        served = sum(t["requests"] for t in {t["msg_id"]: t for t in h.observer.of("telemetry")}.values())
        assert served >= 6  # every request of phase 1 and 2 is in some window (no window lost)
    finally:
        h.close()
