"""The updater with injected clock, sleep and downloader: no threads, no sleeps, no network."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edgefleet.agent.inference import Predictor
from edgefleet.agent.slots import Slots
from edgefleet.agent.statemachine import RecordStore
from edgefleet.agent.updater import UpdatePolicy, Updater
from edgefleet.protocol.errors import TransportError
from edgefleet.protocol.manifest import DeviceFacts
from edgefleet.protocol.messages import HealthCheck

FACTS = DeviceFacts(arch="x86_64", runtimes=["onnx"], agent_version="0.1.0")


class World:
    """A device: state dir, fake clock, a dict of 'URLs' the fake downloader serves."""

    def __init__(self, tmp_path: Path, keys, **policy) -> None:
        self.tmp = tmp_path
        self.keys = keys
        self.now = 1_800_000_000.0
        self.sleeps: list[float] = []
        self.reports = []
        self.failures: list[Exception] = []
        self.served: bytes = b""
        self.policy = UpdatePolicy(**{"health_check_inferences": 0, "download_attempts": 3, **policy})
        self.predictor = Predictor(clock=lambda: self.now)
        self.updater = self.make()

    def make(self) -> Updater:
        return Updater(device_id="dev-1", state_dir=self.tmp, slots=Slots(self.tmp / "slots"),
                       predictor=self.predictor, release_keys=self.keys.trusted_release,
                       controller_keys=self.keys.trusted_controller, facts=FACTS, report=self.reports.append,
                       policy=self.policy, clock=lambda: self.now, rng=random.Random(0), downloader=self.download,
                       sleep=self.sleeps.append, threaded=False)

    def download(self, url, dest: Path, *, expected_size, expected_sha256, **kw) -> Path:
        if self.failures:
            raise self.failures.pop(0)
        dest.write_bytes(self.served)
        return dest

    def deploy(self, data: bytes, **order) -> None:
        self.served = data
        self.updater.submit(self.keys.order(data, now=self.now, **order))
        self.updater.run()

    def finals(self):
        return [r for r in self.reports if r.final]

    def restart(self) -> Updater:
        self.predictor = Predictor(clock=lambda: self.now)
        self.updater = self.make()
        self.updater.boot()
        self.updater.run()
        return self.updater


@pytest.fixture
def world(tmp_path, keys):
    return World(tmp_path, keys)


def test_install_walks_the_table_and_reports_once(world, keys):
    world.deploy(keys.bundle())
    assert world.updater.trace == ["downloading", "verifying", "staged", "activating", "health_check", "committed"]
    assert [r.state for r in world.reports] == world.updater.trace
    (final,) = world.finals()
    assert (final.outcome, final.sequence, final.deployment_id) == ("committed", 1, "dep-1")
    assert world.predictor.model.installed.version == "1.0.0"
    assert world.updater.slots.active() == "a"
    assert not list(world.updater.downloads.iterdir())


def test_second_install_uses_the_other_slot_and_keeps_the_first(world, keys):
    world.deploy(keys.bundle())
    world.deploy(keys.bundle(version="1.1.0", seed=3), sequence=2, deployment_id="dep-2")
    assert world.updater.slots.active() == "b" and world.updater.slots.has_bundle("a")


def test_transient_download_errors_retry_with_backoff_then_succeed(world, keys):
    world.failures = [TransportError("boom"), TransportError("boom")]
    world.deploy(keys.bundle())
    assert world.finals()[0].outcome == "committed" and world.finals()[0].attempt == 2
    assert len(world.sleeps) == 2 and all(s > 0 for s in world.sleeps)


def test_retries_are_bounded(world, keys):
    world.failures = [TransportError("down", code="http_503")] * 5
    world.deploy(keys.bundle())
    (final,) = world.finals()
    assert (final.state, final.outcome, final.reason) == ("failed", "failed", "http_503")
    assert world.predictor.model is None


def test_in_progress_timeout_fails_the_update(tmp_path, keys):
    w = World(tmp_path, keys, update_timeout_s=100)

    def slow(*a, **k):
        w.now += 101
        raise TransportError("slow")
    w.download = slow
    w.updater = w.make()
    w.deploy(keys.bundle())
    (final,) = w.finals()
    assert (final.outcome, final.reason) == ("failed", "timeout")


def test_replayed_and_concurrent_orders_are_refused(world, keys):
    data = keys.bundle()
    signed = keys.order(data, now=world.now)
    world.served = data
    world.updater.submit(signed)
    world.updater.submit(keys.order(data, now=world.now, sequence=2, deployment_id="dep-2"))  # busy
    world.updater.run()
    world.deploy(data, sequence=3, deployment_id="dep-3")
    world.updater.submit(signed)  # replay of an older order
    refusals = [(r.deployment_id, r.reason) for r in world.finals() if r.outcome == "refused"]
    assert refusals == [("dep-2", "busy"), ("dep-1", "replayed_order")]
    assert RecordStore(world.tmp / "update.json").load().last_sequence == 3


def test_redelivered_current_order_re_reports_instead_of_refusing(world, keys):
    data = keys.bundle()
    signed = keys.order(data, now=world.now)
    world.served = data
    world.updater.submit(signed)
    world.updater.run()
    first_final = world.finals()[-1]
    trace = list(world.updater.trace)
    world.updater.submit(signed)  # the controller re-sent it (e.g. the device had not connected yet)
    again = world.reports[-1]
    assert world.updater.trace == trace  # nothing re-done
    assert (again.final, again.outcome, again.msg_id) == (True, "committed", first_final.msg_id)
    assert [r for r in world.finals() if r.outcome == "refused"] == []


def test_expired_order_is_refused_before_anything_happens(world, keys):
    data = keys.bundle()
    world.updater.submit(keys.order(data, now=world.now - 1000, ttl=10))
    (final,) = world.finals()
    assert (final.outcome, final.reason) == ("refused", "expired") and world.updater.trace == []


def test_cancel_before_activation(world, keys):
    data = keys.bundle()
    world.served = data
    world.updater.submit(keys.order(data, now=world.now))
    world.updater.submit(keys.order(data, now=world.now, sequence=2, action="cancel"))
    world.updater.run()
    (final,) = world.finals()
    assert (final.state, final.outcome) == ("cancelled", "cancelled")


@pytest.mark.parametrize("state,outcome,version", [
    ("downloading", "committed", "2.0.0"),
    ("verifying", "committed", "2.0.0"),
    ("staged", "committed", "2.0.0"),
    ("activating", "rolled_back", "1.0.0"),
    ("health_check", "rolled_back", "1.0.0"),
    ("committed", "committed", "2.0.0"),
])
def test_power_cut_in_each_state(tmp_path, keys, state, outcome, version):
    w = World(tmp_path, keys)
    w.deploy(keys.bundle())
    w.policy = UpdatePolicy(health_check_inferences=0, pause_in=frozenset({state}))
    w.updater = w.make()
    w.deploy(keys.bundle(version="2.0.0", seed=7), sequence=2, deployment_id="dep-2")
    assert w.updater.record.state.value == state  # "power cut" right after persisting it
    w.policy = UpdatePolicy(health_check_inferences=0)
    w.restart()
    final = [r for r in w.finals() if r.deployment_id == "dep-2"]
    assert [f.outcome for f in final] == [outcome]
    assert w.predictor.model.installed.version == version


def test_restart_after_final_report_sends_nothing_new(world, keys):
    world.deploy(keys.bundle())
    n = len(world.reports)
    world.restart()
    assert len(world.reports) == n and world.predictor.model.installed.version == "1.0.0"


def test_corrupted_active_slot_is_not_served(world, keys):
    world.deploy(keys.bundle())
    slot = world.updater.slots.bundle_path("a")
    slot.write_bytes(slot.read_bytes()[:-10] + b"0123456789")
    world.restart()
    assert world.predictor.model is None


def test_the_order_sets_the_health_window(tmp_path, keys):
    """A device configured to wait for 5 live inferences for 10 minutes commits at once when the
    order says 0; the health_check report says what the device waits for."""
    world = World(tmp_path, keys, health_check_inferences=5, health_check_timeout_s=600)
    world.deploy(keys.bundle(), health_check=HealthCheck(inferences=0, timeout_s=0))
    (final,) = world.finals()
    assert final.outcome == "committed"
    (check,) = [r for r in world.reports if r.state == "health_check"]
    assert check.detail == "health check: the bundle's smoke test; commits when they pass"


def test_the_health_window_is_reported_and_bounded(world, keys):
    world.deploy(keys.bundle(), health_check=HealthCheck(inferences=3, timeout_s=0))
    (check,) = [r for r in world.reports if r.state == "health_check"]
    assert check.detail == ("health check: the bundle's smoke test, then up to 3 live inferences within 0 s; "
                            "commits when they pass")
    assert world.finals()[0].outcome == "committed"   # no traffic came in 0 s and none failed


def test_orders_without_a_health_check_sign_and_verify_as_before(keys):
    """Absent, the field is left out of the JSON, so the signed bytes are those of older controllers."""
    signed = keys.order(keys.bundle())
    assert "health_check" not in signed.signed.model_dump(mode="json")
    assert "health_check" in keys.order(keys.bundle(), health_check=HealthCheck(inferences=1, timeout_s=5)
                                        ).signed.model_dump(mode="json")
