"""The updater verifies bundles by streaming them from disk (protocol/bundle.py ``verify_bundle_file``):
the download into a staging directory that is gone when the step ends, the slot's bundle with its digest
whenever it is loaded; no bundle file is ever read whole."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from test_agent_updater import World

import edgefleet.agent.updater as updater_module
from edgefleet.agent.updater import UpdatePolicy
from edgefleet.protocol.bundle import bundle_digest, read_manifest


@pytest.fixture
def world(tmp_path, keys) -> World:
    return World(tmp_path, keys)


@pytest.fixture
def no_whole_bundle_reads(monkeypatch):
    """Reading any bundle file whole fails the test."""
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        assert not (self.name == "bundle" or self.suffix == ".bundle"), f"{self} read whole"
        return real(self)
    monkeypatch.setattr(Path, "read_bytes", read_bytes)


@pytest.fixture
def calls(monkeypatch):
    """Every verify_bundle_file call of the updater: its path, out_dir, digest and what it staged."""
    seen: list[dict] = []
    real = updater_module.verify_bundle_file

    def spy(path, **kw):
        verified = real(path, **kw)
        out = kw.get("out_dir")
        staged = sorted(str(p.relative_to(out)) for p in Path(out).rglob("*") if p.is_file()) if out else None
        seen.append({"path": Path(path), "out_dir": out, "digest": kw.get("expected_digest"), "staged": staged})
        return verified
    monkeypatch.setattr(updater_module, "verify_bundle_file", spy)
    return seen


def test_the_download_is_verified_into_staging_and_the_slot_with_its_digest(world, keys, calls,
                                                                            no_whole_bundle_reads):
    data = keys.bundle()
    world.deploy(data)
    assert world.finals()[0].outcome == "committed"
    digest = bundle_digest(data)
    verifying, activating = calls
    assert verifying["path"] == world.updater.downloads / f"{digest}.bundle"
    assert verifying["out_dir"] == world.updater.downloads / f"{digest}.staging"
    assert verifying["digest"] is None   # the download hashed it while streaming
    assert verifying["staged"] == sorted(f.path for f in read_manifest(data).files)
    assert activating == {"path": world.updater.slots.bundle_path("a"), "out_dir": None, "digest": digest,
                          "staged": None}
    assert list(world.updater.downloads.iterdir()) == []   # staging and download gone

    world.restart()   # loading the active slot at boot streams it too
    assert calls[-1]["path"] == world.updater.slots.bundle_path("a") and calls[-1]["digest"] == digest
    assert world.predictor.model.installed.digest == digest


def test_a_refused_bundle_leaves_nothing_staged(world, keys):
    data = bytearray(keys.bundle())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        model = tar.getmember("files/model.onnx")
    data[model.offset_data + 10] ^= 0xFF   # the model no longer matches the signed manifest
    world.deploy(bytes(data))
    (final,) = world.finals()
    assert (final.outcome, final.reason) == ("refused", "digest_mismatch")
    assert list(world.updater.downloads.iterdir()) == []
    assert world.predictor.model is None


def _cut_during_verifying(world: World, keys) -> Path:
    """A power cut while verifying, with half a staging directory on disk."""
    world.policy = UpdatePolicy(health_check_inferences=0, pause_in=frozenset({"verifying"}))
    world.updater = world.make()
    data = keys.bundle()
    world.deploy(data)
    assert world.updater.record.state.value == "verifying"
    staging = world.updater.downloads / f"{bundle_digest(data)}.staging"
    (staging / "model").mkdir(parents=True)
    (staging / "model" / "half.onnx").write_bytes(b"half of a model")
    return staging


def test_a_staging_directory_a_power_cut_left_is_replaced(world, keys):
    _cut_during_verifying(world, keys)
    world.policy = UpdatePolicy(health_check_inferences=0)
    world.restart()
    assert world.finals()[-1].outcome == "committed"
    assert list(world.updater.downloads.iterdir()) == []


def test_a_leftover_staging_directory_is_cleaned_when_the_update_fails(world, keys):
    _cut_during_verifying(world, keys)
    world.policy = UpdatePolicy(health_check_inferences=0, download_attempts=1)   # no attempt left after a restart
    world.restart()
    final = world.finals()[-1]
    assert (final.outcome, final.reason) == ("failed", "interrupted")
    assert list(world.updater.downloads.iterdir()) == []
