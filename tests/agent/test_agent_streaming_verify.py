"""The updater verifies bundles by streaming them from disk (protocol/bundle.py ``verify_bundle_file``):
the download once, each file hashed and dropped, its fingerprint recorded; the slot's bundle (a hard link
to the download) against that fingerprint whenever it is loaded, the whole-file digest only for a slot
staged without one; no bundle file is ever read whole, none is hashed twice."""

from __future__ import annotations

import errno
import io
import os
import tarfile
from pathlib import Path

import pytest
from test_agent_updater import World

import edgefleet.agent.updater as updater_module
from edgefleet.agent.slots import Slots
from edgefleet.agent.updater import UpdatePolicy
from edgefleet.protocol.bundle import bundle_digest, read_manifest, verify_bundle


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
    """Every verify_bundle_file call of the updater: its path, what it was checked against, what it kept."""
    seen: list[dict] = []
    real = updater_module.verify_bundle_file

    def spy(path, **kw):
        verified = real(path, **kw)
        seen.append({"path": Path(path), "out_dir": kw.get("out_dir"), "digest": kw.get("expected_digest"),
                     "fingerprint": kw.get("expected_fingerprint"), "kept": sorted(verified.files),
                     "computed": verified.fingerprint})
        return verified
    monkeypatch.setattr(updater_module, "verify_bundle_file", spy)
    return seen


def test_the_download_is_verified_once_and_the_slot_against_its_fingerprint(world, keys, calls,
                                                                            no_whole_bundle_reads):
    data = keys.bundle()
    world.deploy(data)
    assert world.finals()[0].outcome == "committed"
    digest = bundle_digest(data)
    files = sorted(f.path for f in read_manifest(data).files)
    fingerprint = verify_bundle(data, trusted=keys.trusted_release).fingerprint
    verifying, activating = calls
    assert verifying["path"] == world.updater.downloads / f"{digest}.bundle"
    # the download hashed it while streaming: no digest; no file kept but the arrays verification reads
    assert (verifying["digest"], verifying["fingerprint"], verifying["out_dir"]) == (None, None, None)
    assert verifying["kept"] == [f for f in files if f.startswith(("smoke/", "profile/"))] != files
    assert verifying["computed"] == fingerprint
    assert activating == {"path": world.updater.slots.bundle_path("a"), "out_dir": None, "digest": None,
                          "fingerprint": fingerprint, "kept": files, "computed": fingerprint}
    assert world.updater.slots.fingerprint("a") == fingerprint and world.updater.slots.digest("a") == digest
    assert list(world.updater.downloads.iterdir()) == []   # download and its fingerprint gone

    world.restart()   # loading the active slot at boot streams it too, against the same fingerprint
    assert calls[-1]["path"] == world.updater.slots.bundle_path("a")
    assert (calls[-1]["digest"], calls[-1]["fingerprint"]) == (None, fingerprint)
    assert world.predictor.model.installed.digest == digest


def test_a_slot_staged_without_a_fingerprint_is_checked_with_its_digest_and_gets_one(world, keys, calls):
    """What an agent upgraded from a version that recorded no fingerprint finds in its slots."""
    data = keys.bundle()
    world.deploy(data)
    fingerprint = world.updater.slots.fingerprint("a")
    (world.tmp / "slots" / "a" / "fingerprint").unlink()
    world.restart()
    assert world.predictor.model.installed.digest == bundle_digest(data)
    assert (calls[-1]["digest"], calls[-1]["fingerprint"]) == (bundle_digest(data), None)
    assert world.updater.slots.fingerprint("a") == fingerprint   # recorded from the digest-checked file
    world.restart()
    assert (calls[-1]["digest"], calls[-1]["fingerprint"]) == (None, fingerprint)


def test_another_genuine_bundle_in_the_slot_is_refused_at_activation(keys, tmp_path):
    """The slot's file is swapped after staging for another bundle the release key signed: every file of it
    checks out, the fingerprint recorded at download does not."""
    world = World(tmp_path, keys, pause_in=frozenset({"activating"}))
    world.deploy(keys.bundle())
    assert world.updater.record.state.value == "activating"
    other = keys.bundle(version="0.9.0", seed=5)
    slot = world.updater.slots.bundle_path("a")
    slot.unlink()
    slot.write_bytes(other)
    world.policy = UpdatePolicy(health_check_inferences=0)
    world.restart()   # nothing to roll back to: activating again, from the slot
    final = world.finals()[-1]
    assert (final.outcome, final.reason) == ("rolled_back", "digest_mismatch")
    assert "recorded when it was verified" in final.detail
    assert world.predictor.model is None


def test_the_slot_is_a_link_to_the_verified_download_or_a_copy_where_links_fail(tmp_path, monkeypatch):
    source = tmp_path / "d.bundle"
    source.write_bytes(b"bundle bytes")
    slots = Slots(tmp_path / "slots")
    slots.install("a", source, "d" * 64, "f" * 64)
    assert os.stat(slots.bundle_path("a")).st_ino == os.stat(source).st_ino
    assert (slots.digest("a"), slots.fingerprint("a")) == ("d" * 64, "f" * 64)

    def no_links(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", no_links)
    slots.install("b", source, "e" * 64)
    assert slots.bundle_path("b").read_bytes() == b"bundle bytes"
    assert os.stat(slots.bundle_path("b")).st_ino != os.stat(source).st_ino
    assert (slots.digest("b"), slots.fingerprint("b")) == ("e" * 64, None)
    assert sorted(p.name for p in (tmp_path / "slots" / "b").iterdir()) == ["bundle", "digest"]   # no temp left
    source.unlink()
    with pytest.raises(FileNotFoundError):   # the updater reports missing_download
        slots.install("a", source, "d" * 64)


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
