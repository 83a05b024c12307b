"""The device's sample reservoir (agent/capture.py): caps, drift weighting, labels, restarts, sealing."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.capture import DB_NAME, WAL_PAGES, Capture, Reservoir, decode_inputs
from edgefleet.protocol.manifest import CapturePolicy
from edgefleet.protocol.vocabulary import DriftLevel

DIGEST = "ab" * 32
OTHER = "cd" * 32


@dataclass(frozen=True)
class Served:
    """Stands in for edgefleet.agent.inference.Served (same fields)."""

    prediction_id: str
    at: float
    bundle_digest: str
    inputs: dict[str, np.ndarray]
    classes: np.ndarray


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def policy(**kw) -> CapturePolicy:
    values = {"enabled": True, "max_samples": 50, "max_bytes": 1024 * 1024, "min_samples_to_upload": 10,
              "upload_interval_s": 60} | kw
    return CapturePolicy(**values)


def serve(capture: Capture, n: int, *, features: int = 4, marker: float = 0.0, digest: str = DIGEST,
          pid: str | None = None, at: float = 0.0) -> Served:
    x = np.full((n, features), marker, dtype=np.float32)
    x[:, 0] = np.arange(n)
    served = Served(pid or os.urandom(16).hex(), at, digest, {"x": x}, np.arange(n) % 3)
    capture.on_served(served)
    return served


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(tmp_path: Path, clock: Clock, seed: int = 0, **kw) -> Capture:
    capture = Capture(tmp_path / "capture", clock=clock, rng=np.random.default_rng(seed))
    capture.set_model(DIGEST, policy(**kw))
    return capture


def test_the_sample_cap_holds_under_ten_times_its_inserts(tmp_path, clock):
    capture = make(tmp_path, clock, max_samples=50)
    for _ in range(50):
        serve(capture, 10)  # 500 samples, 10x the cap
        capture.tick()
        assert capture.reservoir.count <= 50
    assert capture.reservoir.count == 50
    keys = sorted(k for _, _, k, *_ in capture.reservoir.samples())
    assert len(keys) == 50


def test_the_byte_cap_holds_on_disk_too(tmp_path, clock):
    cap = 1024 * 1024
    capture = make(tmp_path, clock, max_samples=10_000, max_bytes=cap)
    per_sample = 1024 * 4 + 4 * 32 + 64  # 1024 float32 inputs + id + bookkeeping
    for _ in range(60):
        serve(capture, 40, features=1024)   # 2400 samples of ~4.3 KB: 10x what fits
        capture.tick()
        assert capture.reservoir.bytes <= cap
    assert capture.reservoir.count == cap // per_sample
    # on disk: the samples with SQLite's page overhead (measured ~1.2x), a write-ahead log of at most
    # WAL_PAGES pages and the 32 KiB shared-memory index
    assert disk_bytes(tmp_path / "capture") <= 1.5 * cap + WAL_PAGES * 4096 + 64 * 1024


def test_memory_between_ticks_is_bounded_and_drops_are_counted(tmp_path, clock):
    capture = make(tmp_path, clock, max_samples=50)
    for _ in range(30):
        serve(capture, 10)  # no tick: the agent loop is stalled
    assert capture._queued_samples == 50
    assert capture.dropped == 250
    capture.tick()
    assert capture.reservoir.count == 50 and capture._queued_samples == 0


def test_drifting_windows_are_over_represented(tmp_path, clock):
    def share_drifting(weight: float) -> float:
        capture = Capture(tmp_path / f"w{weight}", clock=clock, rng=np.random.default_rng(7))
        capture.set_model(DIGEST, policy(max_samples=100, drift_weight=weight))
        for window in range(20):
            drifting = window % 2 == 1
            capture.observe_window(DIGEST, DriftLevel.WARN if drifting else DriftLevel.OK)
            for _ in range(4):
                serve(capture, 50, marker=1.0 if drifting else 0.0)   # 2000 drifting, 2000 ok samples
                capture.tick()
        reservoir = capture.reservoir
        rows = reservoir._db.execute("SELECT layout, inputs FROM samples").fetchall()
        markers = [decode_inputs(layout, data)["x"][1] for layout, data in rows]
        assert len(markers) == 100
        return float(np.mean(markers))

    # A-Res with weights 4:1 and equal counts keeps about 4/5 drifting samples when the reservoir is small
    assert share_drifting(4.0) > 0.65
    assert 0.35 < share_drifting(1.0) < 0.65


def test_alarm_weighs_and_ok_resets_the_weight(tmp_path, clock):
    capture = make(tmp_path, clock, drift_weight=5.0)
    capture.observe_window(DIGEST, DriftLevel.ALARM)
    assert capture.weight == 5.0
    capture.observe_window(OTHER, DriftLevel.OK)  # another bundle's window: not ours
    assert capture.weight == 5.0
    capture.observe_window(DIGEST, DriftLevel.INSUFFICIENT)
    assert capture.weight == 1.0


def test_labels_attach_to_the_samples_still_kept(tmp_path, clock):
    capture = make(tmp_path, clock, max_samples=50)
    served = serve(capture, 3)
    capture.tick()
    capture.on_labelled(served.prediction_id, np.array([2, 0, 1]))
    capture.on_labelled("never-served", np.array([1]))
    capture.tick()
    labels = {(pid, idx): label for pid, idx, _, _, _, label in capture.reservoir.samples()}
    assert labels == {(served.prediction_id, 0): 2, (served.prediction_id, 1): 0, (served.prediction_id, 2): 1}
    assert capture.reservoir.labelled() == 3


def test_a_restart_keeps_the_reservoir(tmp_path, clock):
    capture = make(tmp_path, clock, max_samples=50)
    for _ in range(8):
        serve(capture, 10)
        capture.tick()
    before = capture.reservoir.samples()
    capture.close()
    again = Capture(tmp_path / "capture", clock=clock, rng=np.random.default_rng(1))
    assert again.reservoir is not None and again.reservoir.samples() == before
    again.set_model(DIGEST, policy(max_samples=50))
    lowest = min(k for _, _, k, *_ in before)
    serve(again, 20)
    again.tick()
    after = again.reservoir.samples()
    assert len(after) == 50                                  # still capped after the restart
    assert min(k for _, _, k, *_ in after) >= lowest          # new samples only displaced lower keys


def test_a_bundle_without_capture_stores_nothing(tmp_path, clock):
    capture = Capture(tmp_path / "capture", clock=clock)
    capture.set_model(DIGEST, None)
    serve(capture, 10)
    capture.set_model(DIGEST, CapturePolicy())  # present but not enabled: off too
    serve(capture, 10)
    capture.tick()
    assert capture.reservoir is None and not (tmp_path / "capture").exists()
    assert capture.stats()["samples"] == 0


@pytest.mark.parametrize("existing", [False, True])
def test_captured_inputs_are_readable_by_the_agents_user_only(tmp_path, clock, existing):
    """Raw model inputs: the capture directory is 0700 under a permissive umask, and a directory left
    group- or world-readable (by an older agent, a copy, an operator) is narrowed when capture starts."""
    if existing:
        (tmp_path / "capture").mkdir(mode=0o755)
        os.chmod(tmp_path / "capture", 0o755)
    old = os.umask(0o002)
    try:
        capture = make(tmp_path, clock)
        serve(capture, 5)
        capture.tick()
    finally:
        os.umask(old)
    assert capture.stats()["samples"] == 5
    for directory in (tmp_path / "capture", tmp_path / "capture" / "batches"):
        assert directory.stat().st_mode & 0o777 == 0o700, directory


def test_a_batch_is_sealed_when_due_and_moves_the_samples(tmp_path, clock):
    capture = make(tmp_path, clock, max_samples=50, min_samples_to_upload=10, upload_interval_s=60)
    served = serve(capture, 12, at=clock.now)
    capture.tick()
    assert capture.tick() is None                       # interval not over
    clock.now += 61
    batch = capture.tick()
    assert batch is not None and (batch.samples, batch.bundle_digest) == (12, DIGEST)
    assert capture.reservoir.count == 0 and capture.reservoir.pending_batch() == batch
    with np.load(io.BytesIO(batch.path.read_bytes()), allow_pickle=False) as npz:
        assert sorted(npz.files) == ["at", "bundle_digest", "input:x", "label", "predicted", "prediction_id",
                                     "sample_index"]
        np.testing.assert_array_equal(npz["input:x"][np.argsort(npz["sample_index"])], served.inputs["x"])
        assert set(npz["label"]) == {-1} and str(npz["bundle_digest"]) == DIGEST
    serve(capture, 12)
    clock.now += 61
    capture.tick()
    assert capture.reservoir.pending_batch() == batch   # one batch waits at a time
    capture.reservoir.finish(batch.upload_id)
    assert not batch.path.exists() and capture.reservoir.bytes > 0


def test_an_alarm_seals_before_the_interval(tmp_path, clock):
    capture = make(tmp_path, clock, min_samples_to_upload=10, upload_interval_s=3600)
    serve(capture, 10)
    capture.tick()
    assert capture.reservoir.pending_batch() is None
    capture.observe_window(DIGEST, DriftLevel.ALARM)
    assert capture.tick() is not None


def test_samples_of_a_replaced_bundle_are_sealed_first(tmp_path, clock):
    capture = make(tmp_path, clock, min_samples_to_upload=10, upload_interval_s=3600)
    serve(capture, 3)
    capture.tick()
    capture.set_model(OTHER, policy(min_samples_to_upload=10, upload_interval_s=3600))
    serve(capture, 3, digest=OTHER)
    batch = capture.tick()
    assert batch is not None and (batch.bundle_digest, batch.samples) == (DIGEST, 3)
    assert capture.reservoir.count == 3


def test_a_crash_while_sealing_leaves_the_samples_in_place(tmp_path, clock):
    capture = make(tmp_path, clock)
    serve(capture, 5)
    capture.tick()
    capture.close()
    orphan = tmp_path / "capture" / "batches" / f"{'e' * 32}.npz"  # written, never recorded
    orphan.write_bytes(b"partial")
    reservoir = Reservoir(tmp_path / "capture", max_samples=50, max_bytes=1024 * 1024)
    assert not orphan.exists() and reservoir.count == 5 and reservoir.pending_batch() is None
    assert (tmp_path / "capture" / DB_NAME).exists()
