"""Staged rollouts with real agents on a real broker (Mosquitto and the embedded one), driven from
the CLI as an engineer does it, with live inference traffic on every device:

(a) a good bundle goes through three stages to every device;
(b) a bundle that installs fine but predicts differently in the field fails its gate at the
    canary: the rollout aborts, the canary is rolled back to the bundle it ran before, the others
    never receive the new one;
(c) a rollout to a protected tag waits for approval, which its creator cannot give;
(d) the controller is killed in the middle of a stage and restarted: the rollout resumes, no
    device is skipped or ordered twice.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import pytest
from fleetkit import Agents, ControllerProcess, Traffic, cli_json, run_cli

from edgefleet.cloud.cli.client import ControllerClient
from edgefleet.cloud.cli.demo_rollouts import predicts_one_class
from edgefleet.compression.samples import load_digits_split, train_mlp
from edgefleet.protocol.messages import decode

from agentkit.observer import Observer
from testkit import wait_until

pytestmark = pytest.mark.integration

DEVICES = ("d1", "d2", "d3", "d4")
RECIPE = """
[bundle]
name = "digits"
version = "{version}"
build = {build}
runtime = "onnx"
model = "model.onnx"
labels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]

[drift]
min_samples = 40
"""
POLICY = """
device_timeout_s = 120

[[stages]]
name = "canary"
select = "count"
count = 1
soak_s = {soak}
max_soak_s = {max_soak}

[[stages]]
name = "half"
select = "percent"
percent = 50
soak_s = {soak}
max_soak_s = {max_soak}

[[stages]]
name = "rest"
select = "rest"

[gates.statistics]
min_windows = 10

[gates.runtime]
latency_ratio = 2.0
latency_margin_ms = 5.0

[gates.behaviour]
min_samples = 200
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    data = load_digits_split()
    out = tmp_path_factory.mktemp("rollout-models")
    v1 = train_mlp(data, hidden=(32,), seed=0)
    onnx_models = {"v1": v1, "v2": train_mlp(data, hidden=(32,), seed=1), "bad": predicts_one_class(v1)}
    paths = {}
    for build, (name, model) in enumerate(onnx_models.items(), start=1):
        folder = out / name
        folder.mkdir()
        (folder / "model.onnx").write_bytes(model)
        version = {"v1": "1.0.0", "v2": "2.0.0", "bad": "2.0.1"}[name]
        (folder / "recipe.toml").write_text(RECIPE.format(version=version, build=build))
        paths[name] = folder / "recipe.toml"
    np.save(out / "samples.npy", data.x_train[:300])
    np.save(out / "traffic.npy", data.x_test)
    paths["samples"], paths["traffic"] = out / "samples.npy", out / "traffic.npy"
    return paths


class Fleet:
    def __init__(self, capsys, base: Path, controller: ControllerProcess, agents: Agents, models: dict[str, Path],
                 prefix: str, broker) -> None:
        self.capsys, self.base, self.controller, self.agents, self.models = capsys, base, controller, agents, models
        self.prefix, self.broker = prefix, broker
        self.digests: dict[str, str] = {}

    def cli(self, *args: str):
        return cli_json(self.capsys, *args)

    def start_devices(self, *tags: str) -> None:
        for device_id in DEVICES:
            self.agents.start(self.capsys, self.controller.url, device_id, *tags)
        wait_until(lambda: {d["id"] for d in self.cli("devices", "list", "--online")} == set(DEVICES),
                   "every agent online", timeout=90)

    def push(self, name: str) -> str:
        built = self.cli("bundle", "build", str(self.models[name]), "--key", "keys/release.key",
                         "--samples", str(self.models["samples"]), "--out", f"{name}.efb")
        self.cli("bundle", "push", built["bundle"])
        self.digests[name] = built["digest"]
        return built["digest"]

    def install_everywhere(self, name: str) -> None:
        dep = self.cli("deploy", self.push(name), "--tag", "site", "--wait")
        assert dep["status"] == "succeeded", dep

    def policy(self, soak: float = 10.0) -> Path:
        """The test policy; a stage still inconclusive after its soak goes on collecting for up to a
        minute, which leaves a busy CI machine's one control device time for its ``min_windows``."""
        path = self.base / "policy.toml"
        path.write_text(POLICY.format(soak=soak, max_soak=max(soak, 60.0)))
        return path

    def cli_api(self, path: str):
        with ControllerClient(self.controller.url, self.controller.env["EDGEFLEET_ADMIN_TOKEN"]) as api:
            return api.get(path)

    def rollout(self, rollout_id: str) -> dict:
        return self.cli("rollout", "show", rollout_id)

    def wait_final(self, rollout_id: str, timeout: float = 240) -> dict:
        return wait_until(lambda: (r := self.rollout(rollout_id))["state"] in ("succeeded", "aborted", "cancelled",
                                                                               "paused") and r,
                          f"rollout {rollout_id} to end", timeout=timeout)

    def running(self, device_id: str) -> str | None:
        installed = self.cli("devices", "show", device_id)["device"]["installed"]
        return installed["digest"] if installed else None

    def traffic(self) -> Traffic:
        return Traffic([self.agents.dirs[d] for d in DEVICES], np.load(self.models["traffic"]))


@pytest.fixture(params=["mosquitto", "embedded"])
def fleet(request, tmp_path, monkeypatch, topic_prefix, capsys, models):
    broker = request.getfixturevalue("mqtt_broker") if request.param == "mosquitto" else None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keys").mkdir()
    assert run_cli(capsys, "keys", "generate", "release", "--out", str(tmp_path / "keys"))[0] == 0
    admin = "efa_test_" + secrets.token_urlsafe(12)
    controller = ControllerProcess(tmp_path, admin_token=admin, broker_url=broker.url if broker else None,
                                   prefix=topic_prefix, release_pub=tmp_path / "keys" / "release.pub",
                                   reconcile_interval_s=0.5, heartbeat_timeout_s=30, protected_tags='["production"]')
    controller.start()
    monkeypatch.setenv("EDGEFLEET_URL", controller.url)
    monkeypatch.setenv("EDGEFLEET_TOKEN", admin)
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "no-cli.toml"))
    agents = Agents(tmp_path)
    try:
        yield Fleet(capsys, tmp_path, controller, agents, models, topic_prefix, broker)
    finally:
        agents.stop()
        controller.stop()


def test_a_good_bundle_goes_through_three_stages_to_every_device(fleet):
    fleet.start_devices("site")
    fleet.install_everywhere("v1")
    v2 = fleet.push("v2")
    with fleet.traffic() as traffic:
        ro = fleet.cli("rollout", "create", v2, "--tag", "site", "--policy", str(fleet.policy()))
        assert ro["state"] == "running" and [s["name"] for s in ro["stages"]] == ["canary", "half", "rest"]
        paused = fleet.cli("rollout", "pause", ro["id"], "--reason", "lunch")
        assert (paused["state"], paused["reason"]) == ("paused", "paused by admin:admin: lunch")
        assert fleet.cli("rollout", "resume", ro["id"])["state"] == "running"
        assert [r["id"] for r in fleet.cli("rollout", "list", "--state", "running")] == [ro["id"]]
        done = fleet.wait_final(ro["id"])
    assert done["state"] == "succeeded", (done["reason"], [f"{s['name']} {v['gate']} {v['verdict']}: {v['summary']}"
                                                           for s in done["stages"] for v in s["verdicts"]])
    assert traffic.sent > 100
    assert [s["state"] for s in done["stages"]] == ["passed", "passed", "passed"]
    assert [sum(s["devices"].values()) for s in done["stages"]] == [1, 2, 1]
    canary_gates = {v["gate"]: v["verdict"] for v in done["stages"][0]["verdicts"]}
    # judged on the devices' real telemetry against the control cohort still on v1
    assert canary_gates == {"install": "pass", "error_rate": "pass", "latency_p95": "pass", "drift_psi": "pass",
                            "predictions": "pass", "accuracy": "pass"}, done["stages"][0]["verdicts"]
    assert all(fleet.running(d) == v2 for d in DEVICES)
    rc, out, _ = run_cli(fleet.capsys, "rollout", "show", ro["id"], "--watch")   # ended: returns at once
    assert rc == 0 and "succeeded" in out and "canary" in out and "rest" in out and "4/4" not in out
    assert "#" * 20 + " 1/1" in out and "#" * 20 + " 2/2" in out   # the stage bars
    audit = [e["action"] for e in fleet.cli_api("/api/v1/audit")]
    assert {"rollout.create", "rollout.pause", "rollout.resume", "rollout.stage_passed",
            "rollout.succeeded"} <= set(audit)


def test_a_bundle_bad_in_the_field_fails_at_the_canary_and_is_rolled_back(fleet):
    fleet.start_devices("site")
    fleet.install_everywhere("v1")
    v1, bad = fleet.digests["v1"], fleet.push("bad")
    with fleet.traffic():
        ro = fleet.cli("rollout", "create", bad, "--tag", "site", "--policy", str(fleet.policy(soak=60)))
        done = fleet.wait_final(ro["id"])
        assert done["state"] == "aborted", done["reason"]
        canary = [r for r in done["device_rows"] if r["stage_index"] == 0]
        assert len(canary) == 1
        wait_until(lambda: fleet.rollout(ro["id"])["device_rows"] and all(
            r["state"] == "reverted" for r in fleet.rollout(ro["id"])["device_rows"] if r["stage_index"] == 0),
            "the canary rolled back", timeout=120)
    done = fleet.rollout(ro["id"])
    assert "stage canary failed its gates (predictions: the canary predicts differently" in done["reason"]
    verdicts = {v["gate"]: v for v in done["stages"][0]["verdicts"]}
    assert verdicts["predictions"]["verdict"] == "fail" and verdicts["predictions"]["evidence"]["js"] > 0.3
    assert verdicts["install"]["verdict"] == "pass"   # it installed fine: only the field shows the fault
    (rollback,) = done["rollback"]
    back = fleet.cli("deployments", "show", rollback)
    assert back["bundle_digest"] == v1 and [t["device_id"] for t in back["targets"]] == [canary[0]["device_id"]]
    assert all(fleet.running(d) == v1 for d in DEVICES)
    others = [r for r in done["device_rows"] if r["stage_index"] != 0]
    assert len(others) == 3 and all(r["state"] == "skipped" and r["ordered_at"] is None for r in others)


def test_a_rollout_to_a_protected_tag_waits_for_someone_else_to_approve(fleet):
    fleet.start_devices("site", "production")
    fleet.install_everywhere("v1")
    v2 = fleet.push("v2")
    ro = fleet.cli("rollout", "create", v2, "--tag", "site", "--template", "all-at-once")
    assert ro["state"] == "waiting_approval" and ro["protected_tags"] == ["production"]
    rc, _, err = run_cli(fleet.capsys, "rollout", "approve", ro["id"])
    assert rc == 1 and "needs approval by someone other than its creator" in err
    assert fleet.rollout(ro["id"])["state"] == "waiting_approval"
    assert all(fleet.running(d) == fleet.digests["v1"] for d in DEVICES)   # nothing went out
    approved = cli_json(fleet.capsys, "rollout", "approve", ro["id"], "--token", approver_token(fleet, "second"))
    assert approved["approved_by"] == "approver:second" and approved["state"] in ("running", "succeeded")
    done = fleet.wait_final(ro["id"])
    assert done["state"] == "succeeded" and all(fleet.running(d) == v2 for d in DEVICES)


def approver_token(fleet: Fleet, name: str) -> str:
    """An API token for another person who may approve (the admin creates it over REST)."""
    with ControllerClient(fleet.controller.url, fleet.controller.env["EDGEFLEET_ADMIN_TOKEN"]) as api:
        return api.post("/api/v1/tokens", {"name": name, "role": "approver"})["token"]


def test_a_controller_killed_mid_stage_resumes_without_skipping_or_reordering(fleet):
    fleet.start_devices("site")
    fleet.install_everywhere("v1")
    v2 = fleet.push("v2")
    host, port = (fleet.broker.host, fleet.broker.port) if fleet.broker else _embedded(fleet)
    observers = {d: Observer(host, port, fleet.prefix, d) for d in DEVICES}
    try:
        with fleet.traffic():
            ro = fleet.cli("rollout", "create", v2, "--tag", "site", "--policy", str(fleet.policy()))
            second = wait_until(lambda: r if (r := fleet.rollout(ro["id"]))["stage_index"] == 1
                                or r["state"] != "running" else None, "the second stage started", timeout=120)
            assert second["state"] == "running", second["reason"]
            fleet.controller.kill()
            fleet.controller.start()
            done = fleet.wait_final(ro["id"])
        rows = [(r["device_id"], r["stage_index"], r["state"], r["attempts"], r["reason"]) for r in done["device_rows"]]
        assert done["state"] == "succeeded", (done["reason"], rows)
        assert all(fleet.running(d) == v2 for d in DEVICES)
        assert all(r["state"] == "succeeded" and r["attempts"] == 1 for r in done["device_rows"])
        orders = {device_id: {(m.order.signed.deployment_id, m.order.signed.sequence)
                              for m in (decode("cmd", raw) for kind, _, raw, _ in list(observer.messages)
                                        if kind == "cmd")
                              if m.order.signed.bundle_digest == v2}
                  for device_id, observer in observers.items()}
        # every device got exactly one order for v2: none skipped, none ordered twice
        assert {d: len(o) for d, o in orders.items()} == dict.fromkeys(DEVICES, 1), orders
    finally:
        for observer in observers.values():
            observer.close()


def _embedded(fleet: Fleet) -> tuple[str, int]:
    return "127.0.0.1", int(fleet.controller.env["EDGEFLEET_EMBEDDED_BROKER_PORT"])
