"""Every refusal of DESIGN.md section 4, against the real agent process: the device reports a
final status naming the reason and keeps serving its current model."""

from __future__ import annotations

import io
import json
import tarfile
import time
import zlib

import pytest

from edgefleet.protocol.bundle import bundle_digest
from edgefleet.protocol.canonical import canonical_json

from agentkit.bundles import make_bundle, order_message, resign, samples, split

pytestmark = pytest.mark.integration


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def crafted(good: bytes, extra) -> bytes:
    """A hand-made tarball: the good bundle's members plus/instead of ``extra``."""
    manifest, sigs, stored = split(good)
    members = [reg("manifest.json", canonical_json(manifest)),
               reg("signatures.json", canonical_json([s.model_dump(mode="json") for s in sigs]))]
    members += [reg(f"files/{p}", d) for p, d in stored.items()]
    return tar_of(members + extra)


def bomb(good: bytes, key) -> bytes:
    """A re-signed manifest whose deflated file inflates far past its signed size."""
    manifest, _, stored = split(good)
    packed = zlib.compress(b"\0" * (20 * 1024 * 1024), 9)
    entry = manifest["files"][0]
    entry.update(encoding="deflate", stored_size=len(packed), size=100)
    stored[entry["path"]] = packed
    return resign(manifest, stored, key)


def test_every_refusal_is_reported_and_the_device_keeps_serving(agent_harness, make_key_pair):
    h = agent_harness
    agent = h.start(max_bundle_bytes=4 * 1024 * 1024)
    good = h.bundle(version="1.0.0", build=1)
    assert h.install(good)["outcome"] == "committed"
    other = h.bundle(version="1.1.0", build=2)
    stranger = make_key_pair("stranger")

    def tampered_order() -> tuple[str, bytes]:
        dep, payload = h.order(other)
        obj = json.loads(payload)
        obj["order"]["signed"]["bundle_url"] = "http://127.0.0.1:1/evil"
        return dep, json.dumps(obj).encode()

    replay_dep, replay_payload = h.order(other)
    observed = {}

    def run(name: str, dep: str, payload: bytes) -> dict:
        h.observer.publish("cmd", payload)
        final = h.observer.final_status(dep)
        observed[name] = (final["outcome"], final["reason"])
        return final

    # --- order-level refusals (the order is never acted on)
    run("bad signature", *tampered_order())
    run("unknown controller key", *h.order(other, key=stranger.private))
    run("order for another device", *_other_device(h, other))
    now = int(time.time())
    run("expired order", *h.order(other, issued_at=now - 7200, ttl=3600))
    # the same signed order again while it is the current one: a redelivery, answered with its
    # final state and not re-done; once a newer order was accepted, a replay of it is refused
    run("first use of an order", replay_dep, replay_payload)
    h.observer.messages.clear()
    run("redelivery of the current order", replay_dep, replay_payload)
    assert h.observer.states_of(replay_dep) == []  # only the final state re-reported: nothing re-done
    run("a newer order", *h.order(h.bundle(version="1.1.1", build=3)))
    h.observer.messages.clear()
    run("replayed order", replay_dep, replay_payload)
    run("stale sequence", *h.order(good, sequence=1))

    # --- bundle-level refusals (downloaded, then refused)
    run("digest mismatch", *h.order(other, digest=bundle_digest(good)))
    run("size smaller than served (endless data cut off)", *h.order(other, size=len(other) - 100,
                                                                    digest=bundle_digest(other[:-100])))
    run("bundle past the device's size limit", *h.order(other, size=5 * 1024 * 1024))
    run("unknown release key", *h.order(make_bundle(h.model, stranger.private, version="1.2.0")))
    run("wrong hardware class", *h.order(h.bundle(version="1.3.0", target={"hardware_classes": ["gpu-box"]})))
    run("wrong architecture", *h.order(h.bundle(version="1.3.1", target={"archs": ["riscv64"]})))
    run("agent too old", *h.order(h.bundle(version="1.3.2", target={"min_agent_version": "99.0.0"})))
    run("absolute member path", *h.order(crafted(good, [reg("/etc/evil", b"x")])))
    run("dot-dot member path", *h.order(crafted(good, [reg("files/../evil", b"x")])))
    run("symlink member", *h.order(crafted(good, [link("files/link", "/etc/passwd")])))
    run("hard link member", *h.order(crafted(good, [link("files/hard", "manifest.json", tarfile.LNKTYPE)])))
    run("unlisted member", *h.order(crafted(good, [reg("files/extra.bin", b"x" * 10)])))
    run("inflates past signed size", *h.order(bomb(good, h.release_key.private)))
    manifest, sigs, stored = split(good)
    stored[manifest["model_file"]] = stored[manifest["model_file"]][:-1] + b"\0"
    run("file content altered", *h.order(tar_of(
        [reg("manifest.json", canonical_json(manifest)),
         reg("signatures.json", canonical_json([s.model_dump(mode="json") for s in sigs]))]
        + [reg(f"files/{p}", d) for p, d in stored.items()])))
    h.files.faults.endless = True
    run("endless download", *h.order(h.bundle(version="1.4.0")))
    h.files.faults.endless = False

    expected = {
        "bad signature": ("refused", "bad_signature"),
        "unknown controller key": ("refused", "unknown_key"),
        "order for another device": ("refused", "target_mismatch"),
        "expired order": ("refused", "expired"),
        "first use of an order": ("committed", None),
        "redelivery of the current order": ("committed", None),
        "a newer order": ("committed", None),
        "replayed order": ("refused", "replayed_order"),
        "stale sequence": ("refused", "replayed_order"),
        "digest mismatch": ("refused", "digest_mismatch"),
        "size smaller than served (endless data cut off)": ("refused", "size_limit"),
        "bundle past the device's size limit": ("refused", "size_limit"),
        "unknown release key": ("refused", "unknown_key"),
        "wrong hardware class": ("refused", "target_mismatch"),
        "wrong architecture": ("refused", "target_mismatch"),
        "agent too old": ("refused", "target_mismatch"),
        "absolute member path": ("refused", "unsafe_archive"),
        "dot-dot member path": ("refused", "unsafe_archive"),
        "symlink member": ("refused", "unsafe_archive"),
        "hard link member": ("refused", "unsafe_archive"),
        "unlisted member": ("refused", "unsafe_archive"),
        "inflates past signed size": ("refused", "size_limit"),
        "file content altered": ("refused", "digest_mismatch"),
        "endless download": ("refused", "size_limit"),
    }
    assert observed == expected
    status, body = agent.get("/v1/health")
    assert status == 200 and body["bundle"]["version"] == "1.1.1"
    assert agent.predict({"x": samples(n=1).tolist()})[0] == 200


def _other_device(h, data: bytes) -> tuple[str, bytes]:
    """An order signed for another device, published on this device's cmd topic: the agent
    refuses it with target_mismatch (the inner signed device id is what counts)."""
    h.sequence += 1
    payload = order_message("someone-else", data, h.serve(data), h.controller_key.private, sequence=h.sequence,
                            deployment_id="dep-other")
    obj = json.loads(payload)
    obj["device_id"] = h.device_id  # envelope says us, the signed order says someone else
    return "dep-other", json.dumps(obj).encode()


def test_bundle_urls_off_the_store_are_refused_before_anything_is_read(agent_harness, tmp_path):
    """A signed order is as trusted as the controller key, not more: its bundle URL may not make the
    device read its own files, reach another service or follow a redirect out of the store."""
    h = agent_harness
    agent = h.start()
    good = h.bundle(version="1.0.0", build=1)
    assert h.install(good)["outcome"] == "committed"
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"s" * 1234)
    other = h.bundle(version="1.1.0", build=2)
    h.files.faults.redirects = {"/out": "http://127.0.0.1:1/x", "/file": f"file://{secret}"}
    urls = {
        "a file on the device": f"file://{secret}",
        "another service": "http://127.0.0.1:1/bundle.efb",
        "ftp": "ftp://127.0.0.1/bundle.efb",
        "credentials in the URL": h.files.url("/b").replace("http://", "http://user:pw@"),
        "a redirect to another origin": h.files.url("/out"),
        "a redirect to a file": h.files.url("/file"),
    }
    seen = {}
    for name, url in urls.items():
        before = len(h.files.faults.requests)
        final = h.observer.final_status(h.deploy(other, url=url))
        seen[name] = (final["outcome"], final["reason"])
        assert "1234" not in (final.get("detail") or ""), name     # nothing of the file came back
        if not name.startswith("a redirect"):
            assert len(h.files.faults.requests) == before, name     # refused before any request
    assert seen == {name: ("refused", "url_refused") for name in urls}
    assert h.install(other)["outcome"] == "committed"                 # the store itself still works
    status, body = agent.get("/v1/health")
    assert status == 200 and body["bundle"]["version"] == "1.1.0"
