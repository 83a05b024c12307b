"""Two controller processes on one PostgreSQL never advance the same rollout twice: both sweep a
rollout of 1000 devices at the same moment, each pass under ``SELECT ... FOR UPDATE SKIP LOCKED``;
every device is ordered exactly once, by one of them. (Without the row lock both read the same
queued devices and order them twice, with two sequences.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.services.rollouts.policy import Selector, parse_policy
from edgefleet.cloud.store.tables import Device

from testkit import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.integration]

DEVICES = 1000
SWEEPER = Path(__file__).with_name("rollout_sweeper.py")


@pytest.fixture
def settings(settings, pg_url):
    return settings.model_copy(update={"database_url": pg_url})


def test_two_controller_processes_never_advance_one_rollout_twice(controller, client, make_bundle, upload, tmp_path,
                                                                   pg_url, clock):
    assert controller.engine.dialect.name == "postgresql"
    old, new = make_bundle(name="lock", version="1.0.0", build=1), make_bundle(name="lock", version="2.0.0", build=2)
    upload(old)
    upload(new)
    installed = {"name": "lock", "version": "1.0.0", "build": 1, "digest": old.digest, "runtime": "onnx"}
    with controller.session() as session:
        session.add_all(Device(id=f"lk-{i:04d}", mqtt_password_hash="$7$test", tags=["lock"], arch="x86_64",
                               os="linux", runtimes=["onnx"], agent_version="0.1.0", free_disk_bytes=1 << 34,
                               installed=installed, online=True, last_seen=clock(), enrolled_at=clock())
                        for i in range(DEVICES))
    policy = parse_policy({"stages": [{"name": "all", "select": "rest"}],
                           "gates": {"runtime": {"enabled": False}, "behaviour": {"enabled": False}}})
    with controller.session() as session:
        rollout_id = rollouts.create_rollout(session, bundle_digest=new.digest, selector=Selector(tags=["lock"]),
                                             policy=policy, protected_tags=[], actor="operator:test",
                                             now=time.time()).id
    go = tmp_path / "go"
    outs = [tmp_path / f"sweeper-{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(SWEEPER), "--database-url", pg_url, "--data-dir",
                               str(tmp_path / f"controller-{i}"), "--go", str(go), "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i, out in enumerate(outs)]
    for out in outs:   # both at the start line, then off at once
        wait_until(lambda o=out: o.with_suffix(".ready").exists() or any(p.poll() is not None for p in procs),
                   "both sweepers ready", timeout=60)
    go.touch()
    for proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output[-3000:]
    results = [json.loads(out.read_text()) for out in outs]
    ordered: dict[str, set[tuple[str, int]]] = {}
    for result in results:
        for o in result["orders"]:
            ordered.setdefault(o["device_id"], set()).add((o["deployment_id"], o["sequence"]))
    assert len(ordered) == DEVICES
    twice = {d: s for d, s in ordered.items() if len(s) != 1}
    assert twice == {}, f"{len(twice)} devices ordered more than once, e.g. {list(twice.items())[:3]}"
    with controller.session() as session:
        rows = rollouts.devices_of(session, rollout_id=rollout_id)
        rollout = rollouts.get_rollout(session, rollout_id=rollout_id)
    assert rollout.ordered == DEVICES
    assert {r.attempts for r in rows} == {1} and {r.state for r in rows} == {"in_progress"}
