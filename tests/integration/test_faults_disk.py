"""Disk full on the device during an update (issue 12 item 9), with a real agent process whose whole
state directory (slots, downloads, outbox) is a small tmpfs mounted by the test:

(a) a bundle larger than the free space: refused before a byte is written, status ``failed`` with
    reason ``no_space`` and what to do;
(b) a bundle that fits, but the disk fills up while it downloads (the test writes a file into the device's
    disk while the bundle server holds the rest of the body, then cuts it): the resume finds no room for
    the rest, the same precise failure, the partial download deleted. (A write that hits the full disk
    itself ends the same way: tests/agent/test_agent_download_space.py.)

Each time the old model keeps serving on the agent's local inference endpoint, the daemon stays up,
nothing half-written is left in the slots or the download directory, and once space is freed the next
update installs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from faultkit import SmallDisk

from edgefleet.protocol.vocabulary import Reason

from agentkit.bundles import samples
from agentkit.harness import Harness
from onnx_models import mlp_onnx
from testkit import wait_until

pytestmark = pytest.mark.integration

DISK = 6 * 1024 * 1024


def _leftovers(state: Path) -> list[str]:
    """Files in the download directory and the inactive slot's bundle (temp names included)."""
    found = [f"downloads/{p.name}" for p in (state / "downloads").iterdir()]
    active = (state / "slots" / "active").read_text().strip()
    inactive = "b" if active == "a" else "a"
    found += [f"slots/{inactive}/{p.name}" for p in (state / "slots" / inactive).iterdir()]
    return found


def test_a_full_disk_fails_the_update_precisely_and_the_old_model_keeps_serving(
        tmp_path, mqtt_broker, topic_prefix, release_key, controller_key, file_server, tiny_onnx):
    disk = SmallDisk(tmp_path / "device-disk", DISK).mount()
    h = Harness(tmp_path, mqtt_broker, topic_prefix, release_key, controller_key, file_server, tiny_onnx)
    state = disk.path / "state"
    h.agent.config["state_dir"], h.agent.state_dir = str(state), state
    try:
        agent = h.start()
        assert h.install(h.bundle(version="1.0.0"))["outcome"] == "committed"

        def serving() -> dict:
            status, body = agent.predict({"x": samples(n=2).tolist()})
            assert status == 200, body
            return body["bundle"]

        assert serving()["version"] == "1.0.0"

        # (a) larger than the disk: refused before the download starts
        big = h.bundle(model=mlp_onnx(n_hidden=220_000), version="2.0.0", build=2)
        assert len(big) > disk.free()
        big_url = h.serve(big)
        dep = h.deploy(big, url=big_url)
        final = h.observer.final_status(dep)
        assert (final["outcome"], final["reason"]) == ("failed", Reason.NO_SPACE), final
        assert "bytes free" in final["detail"] and "free space on the agent's state_dir" in final["detail"]
        assert not [r for r in h.files.faults.requests if big_url.endswith(r["path"])], "the big bundle was fetched"
        assert h.observer.states_of(dep) == ["downloading"]            # no retries: a full disk is final
        assert serving()["version"] == "1.0.0" and agent.proc.poll() is None
        assert _leftovers(state) == []

        # (b) fits, but the disk fills up mid-download
        mid = h.bundle(model=mlp_onnx(n_hidden=70_000), version="2.1.0", build=3)
        assert len(mid) + 512 * 1024 < disk.free()
        h.files.faults.hold_after = 256 * 1024                          # then the server holds the rest
        mid_url = h.serve(mid)
        dep = h.deploy(mid, url=mid_url)
        part = state / "downloads"
        wait_until(lambda: any(p.name.endswith(".part") and p.stat().st_size >= 256 * 1024 for p in part.iterdir()),
                   what="the download under way")
        filler = disk.path / "filler"
        with open(filler, "wb") as fh:                                  # something else takes the space
            fh.write(b"\0" * (disk.free() - 384 * 1024))
            fh.flush()
            os.fsync(fh.fileno())
        h.files.faults.release.set()
        final = h.observer.final_status(dep)
        assert (final["outcome"], final["reason"]) == ("failed", Reason.NO_SPACE), final
        assert "no space for the" in final["detail"] and "bytes free" in final["detail"], final["detail"]
        # the cut-off body was retried, and the resume judged the room left before asking for the rest
        assert h.observer.states_of(dep) == ["downloading", "downloading"], h.observer.states_of(dep)
        assert [r["range"] for r in h.files.faults.requests if mid_url.endswith(r["path"])] == [None]
        assert serving()["version"] == "1.0.0" and agent.proc.poll() is None
        assert _leftovers(state) == []
        assert agent.get("/v1/health")[0] == 200

        # space again: the next update installs
        filler.unlink()
        h.files.faults.hold_after = None
        assert h.install(h.bundle(version="3.0.0", build=4))["outcome"] == "committed"
        assert serving()["version"] == "3.0.0"
    finally:
        h.close()
        disk.unmount()
