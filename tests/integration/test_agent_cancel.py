"""A cancelled update shows as cancelled, not failed (issue 12 item 8): a real agent whose download
is held gets a signed cancel order; its final report, its heartbeat and its local stats all say
``cancelled``, nothing is left in its downloads, and the next order installs normally."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_a_cancelled_update_shows_cancelled(agent_harness):
    h = agent_harness
    h.start()
    h.files.faults.hold_after = 100   # the first bytes, then nothing until released
    data = h.bundle()
    dep = h.deploy(data)
    h.observer.wait_for(lambda o: "downloading" in o.states_of(dep), what="the download started")
    _, cancel = h.order(data, deployment_id=dep, action="cancel")
    h.observer.publish("cmd", cancel)

    final = h.observer.final_status(dep, timeout=60)
    assert (final["state"], final["outcome"], final["reason"]) == ("cancelled", "cancelled", "cancelled")
    assert "failed" not in h.observer.states_of(dep)
    beat = h.observer.wait_for(lambda o: next((m for m in reversed(o.of("state")) if m["status"] == "online"
                                               and m["deployment_id"] == dep), None), what="a heartbeat after it")
    assert (beat["update_state"], beat["outcome"]) == ("cancelled", "cancelled")
    _, stats = h.agent.get("/v1/stats")
    assert stats["update_state"] == "cancelled" and stats["bundle"] is None
    assert [p.name for p in (h.agent.state_dir / "downloads").iterdir()] == []

    h.files.faults.hold_after = None
    h.files.faults.release.set()
    again = h.install(data)
    assert (again["state"], again["outcome"]) == ("committed", "committed")
