"""The fleet simulator's pure parts: the update state machine table, what a simulated device publishes
(strictly decodable, sealed with its own key), its telemetry windows and drift, its state file, and the
CLI's refusal of bad knobs. The simulator over real sockets: tests/integration/test_fleet_simulator.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgefleet.cloud.cli import main as cli
from edgefleet.cloud.simulate import telemetry
from edgefleet.cloud.simulate.credentials import DeviceCredentials, FleetCredentials, load_state, save_state
from edgefleet.cloud.simulate.device import TRANSITIONS, Phase, SimDevice, SimulationError, Step, report_id
from edgefleet.protocol.device_signatures import raw_public_key, verify
from edgefleet.protocol.errors import ConfigError
from edgefleet.protocol.keys import generate_private_key
from edgefleet.protocol.messages import decode
from edgefleet.protocol.vocabulary import DriftLevel, Outcome, UpdateState


def device(shift: float = 0.0) -> SimDevice:
    return SimDevice(device_id="sim-00001", key=generate_private_key(), prefix="t/edgefleet/v1",
                     profile=telemetry.Profile(rate_per_s=2.0, latency_mu=1.0, shift=shift), started_at=100.0)


@pytest.mark.parametrize(("steps", "trace"), [
    ([Step.ORDER, Step.DOWNLOADED, Step.VERIFIED], [Phase.DOWNLOADING, Phase.VERIFYING, Phase.INSTALLED]),
    ([Step.ORDER, Step.FAILED], [Phase.DOWNLOADING, Phase.FAILED]),
    ([Step.ORDER, Step.DOWNLOADED, Step.FAILED, Step.ORDER], [Phase.DOWNLOADING, Phase.VERIFYING, Phase.FAILED,
                                                              Phase.DOWNLOADING]),
])
def test_the_update_path_follows_the_table(steps, trace):
    d = device()
    assert [d.step(s) for s in steps] == trace


@pytest.mark.parametrize(("phase", "step"), [(Phase.IDLE, Step.VERIFIED), (Phase.DOWNLOADING, Step.ORDER),
                                             (Phase.INSTALLED, Step.DOWNLOADED)])
def test_a_step_the_table_lacks_is_refused_and_changes_nothing(phase, step):
    assert (phase, step) not in TRANSITIONS
    d = device()
    d.phase = phase
    with pytest.raises(SimulationError) as info:
        d.step(step)
    assert d.phase == phase and info.value.where == "simulate.device"


def test_messages_are_sealed_with_the_device_key_and_decode_strictly():
    d = device()
    d.deployment_id, d.sequence = "dep-1", 4
    d.step(Step.ORDER)
    for kind, message in [("hello", d.hello(101.0)), ("state", d.state(101.0, heartbeat_s=30)),
                          ("status", d.report(101.0, bytes_done=0, bytes_total=10)),
                          ("telemetry", d.window(np.random.default_rng(1), 161.0))]:
        topic, payload = d.seal(kind, message)
        assert topic == f"t/edgefleet/v1/devices/sim-00001/{kind}"
        verify(raw_public_key(d.key.public_key()), topic, payload)      # raises if not
        assert decode(kind, payload).device_id == "sim-00001"


def test_final_reports_carry_the_outcome_and_the_agents_message_id():
    d = device()
    d.deployment_id, d.sequence = "dep-1", 4
    for step in (Step.ORDER, Step.DOWNLOADED, Step.VERIFIED):
        d.step(step)
    final = d.report(102.0)
    assert final.final and final.outcome == Outcome.COMMITTED and final.state == UpdateState.COMMITTED
    assert final.msg_id == report_id("sim-00001", "dep-1", 4, "committed", 0, True)
    assert d.state(103.0, heartbeat_s=30).outcome == Outcome.COMMITTED   # the heartbeat repeats it


def test_windows_count_up_and_drifting_devices_score_higher():
    rng = np.random.default_rng(3)
    calm, drifted = device(0.0), device(1.5)
    calm.window_start = drifted.window_start = 100.0   # the fleet starts the first window at connect
    calm_w = [calm.window(rng, 100.0 + 60 * i) for i in range(1, 6)]
    drift_w = [drifted.window(rng, 100.0 + 60 * i) for i in range(1, 6)]
    assert [w.window_seq for w in calm_w] == [0, 1, 2, 3, 4]
    assert all(w.window_end - w.window_start == 60 for w in calm_w)
    assert all(sum(w.latency_ms.counts) == w.requests and len(w.features) == telemetry.FEATURES for w in calm_w)
    assert max(w.drift.psi for w in calm_w) < min(w.drift.psi for w in drift_w)
    assert {w.drift.level for w in drift_w} == {DriftLevel.ALARM}
    assert {w.drift.level for w in calm_w} <= {DriftLevel.OK, DriftLevel.WARN}


def test_the_state_file_round_trips_and_belongs_to_one_controller(tmp_path):
    path = tmp_path / "state.json"
    creds = FleetCredentials(controller_url="http://a:1", topic_prefix="p/edgefleet/v1", broker_url="mqtt://a:2")
    cred = DeviceCredentials(device_id="sim-00000", username="sim-00000", password="pw", key_hex="00" * 32)
    creds.devices[cred.device_id] = cred
    save_state(path, creds)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_state(path, "http://a:1").devices == creds.devices
    assert load_state(path, "http://other:1").devices == {}        # another controller: enroll again
    path.write_text(json.dumps({"version": 99}))
    with pytest.raises(ConfigError) as info:
        load_state(path, "http://a:1")
    assert info.value.where == str(path) and "delete it" in (info.value.hint or "")


def test_the_cli_refuses_a_bad_knob_before_touching_anything(tmp_path, capsys):
    state = tmp_path / "state.json"
    rc = cli(["simulate", "--devices", "5", "--drift-fraction", "2", "--url", "http://127.0.0.1:9",
              "--state-file", str(state), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--drift-fraction" in err and "less than or equal to 1" in err
    assert not state.exists()
