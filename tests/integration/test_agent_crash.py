"""Power cuts: SIGKILL the real agent in each update state, restart it, and check that it
ends on a working model (new or old, never mixed) with a truthful final status report."""

from __future__ import annotations

import numpy as np
import pytest

from agentkit.bundles import samples
from onnx_models import mlp_onnx, reference_forward

pytestmark = pytest.mark.integration

OLD, NEW = "1.0.0", "2.0.0"

# state killed in -> (final state/outcome, version serving afterwards, reason)
TABLE = [
    ("downloading", "committed", NEW, None),
    ("verifying", "committed", NEW, None),
    ("staged", "committed", NEW, None),
    ("activating", "rolled_back", OLD, "interrupted"),
    ("health_check", "rolled_back", OLD, "interrupted"),
    ("committed", "committed", NEW, None),
    ("rolled_back", "rolled_back", OLD, "smoke_test_failed"),
]


@pytest.mark.parametrize("state,outcome,serving,reason", TABLE, ids=[t[0] for t in TABLE])
def test_sigkill_in_each_state(agent_harness, state, outcome, serving, reason):
    h = agent_harness
    models = {OLD: mlp_onnx(seed=1), NEW: mlp_onnx(seed=2)}
    h.start()
    assert h.install(h.bundle(version=OLD, build=1, model=models[OLD]))["outcome"] == "committed"
    new = h.bundle(version=NEW, build=2, model=models[NEW])
    if state == "rolled_back":  # a bundle that fails its smoke test, killed before the final report
        from agentkit.bundles import replace_smoke_expected, resign, split
        manifest, _, stored = split(new)
        manifest["smoke_test"]["atol"] = manifest["smoke_test"]["rtol"] = 0.0

        def shift(out):
            out[0, 0] += 0.25
            return out
        replace_smoke_expected(manifest, stored, "probs", shift)
        new = resign(manifest, stored, h.release_key.private)
    h.agent.terminate()
    h.start(fault_pause_in=[state])
    dep = h.deploy(new)
    h.agent.wait_file(f"paused-{state}")
    h.agent.kill()
    assert not any(m["final"] for m in h.observer.of("status") if m["deployment_id"] == dep)

    agent = h.start(fault_pause_in=None)
    final = h.observer.final_status(dep)
    assert (final["state"], final["outcome"], final["reason"]) == (outcome, outcome, reason), final
    finals = [m for m in h.observer.of("status") if m["deployment_id"] == dep and m["final"]]
    assert len({m["msg_id"] for m in finals}) == 1  # exactly one final report (re-sends share the id)

    status, health = agent.get("/v1/health")
    assert status == 200 and health["bundle"]["version"] == serving
    x = samples(n=5, seed=3)
    status, body = agent.predict({"x": x.tolist()})
    assert status == 200 and body["bundle"]["version"] == serving
    np.testing.assert_allclose(np.asarray(body["outputs"]["probs"]), reference_forward(models[serving], x),
                               rtol=1e-5, atol=1e-6)


def test_sigkill_during_first_install_activation_finishes_it(agent_harness):
    """Nothing to roll back to: the agent re-activates and health-checks the new bundle."""
    h = agent_harness
    h.start(fault_pause_in=["activating"])
    dep = h.deploy(h.bundle(version=NEW))
    h.agent.wait_file("paused-activating")
    h.agent.kill()
    agent = h.start(fault_pause_in=None)
    final = h.observer.final_status(dep)
    assert (final["outcome"], final["attempt"]) == ("committed", 1)
    assert agent.get("/v1/health")[1]["bundle"]["version"] == NEW


def test_download_killed_midway_resumes_with_range(agent_harness):
    h = agent_harness
    big = h.bundle(version=NEW, model=mlp_onnx(n_in=4, n_hidden=512, layers=2, seed=4))
    assert len(big) > 200_000
    h.files.faults.hold_after = 100_000
    h.start()
    dep = h.deploy(big)
    part = h.agent.state_dir / "downloads"
    h.observer.wait_for(lambda o: any(p.name.endswith(".part") and p.stat().st_size >= 100_000
                                      for p in part.iterdir()), what="half a download")
    h.agent.kill()
    h.files.faults.release.set()
    h.start()
    final = h.observer.final_status(dep)
    assert final["outcome"] == "committed", final
    assert {"path": h.files.faults.requests[-1]["path"], "range": "bytes=100000-"} == h.files.faults.requests[-1]


def test_connection_cut_midway_resumes_with_range(agent_harness):
    h = agent_harness
    big = h.bundle(version=NEW, model=mlp_onnx(n_in=4, n_hidden=512, layers=2, seed=4))
    h.files.faults.cut_after, h.files.faults.cut_times = 50_000, 2
    h.start()
    final = h.install(big)
    assert (final["outcome"], final["attempt"]) == ("committed", 2)
    assert [r["range"] for r in h.files.faults.requests] == [None, "bytes=50000-", "bytes=100000-"]
    assert "downloading" in h.observer.states_of(final["deployment_id"])


def test_server_errors_exhaust_bounded_retries(agent_harness):
    h = agent_harness
    h.files.faults.fail_status, h.files.faults.fail_times = 503, 100
    h.start(download_attempts=3)
    final = h.install(h.bundle())
    assert (final["state"], final["outcome"], final["reason"], final["attempt"]) == ("failed", "failed", "http_503", 2)
    assert len(h.files.faults.requests) == 3
