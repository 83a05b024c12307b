"""Build signed bundles and orders for tests, including deliberately bad ones."""

from __future__ import annotations

import json
import time
import zlib

import numpy as np

from edgefleet.protocol.bundle import (
    FILES_DIR,
    MANIFEST,
    SIGNATURES,
    BundleLimits,
    _members,
    build_bundle,
    bundle_digest,
    pack,
    parse_recipe,
)
from edgefleet.protocol.canonical import canonical_json
from edgefleet.protocol.keys import sign
from edgefleet.protocol.messages import DeploymentOrder, OrderMessage, Signature, encode
from edgefleet.protocol.orders import sign_order


def samples(n: int = 256, n_in: int = 4, seed: int = 1, shift: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(0, 1, (n, n_in)) + shift).astype(np.float32)


def make_bundle(model: bytes, release_key, *, name: str = "tiny", version: str = "1.0.0", build: int = 1,
                runtime: str = "onnx", target: dict | None = None, labels=None, n_in: int = 4,
                min_samples: int = 50, delegations=None) -> bytes:
    """Signed by ``release_key``; with ``delegations`` that key is a delegated one and the document goes in."""
    recipe = parse_recipe({"bundle": {"name": name, "version": version, "build": build, "runtime": runtime,
                                      **({"labels": labels} if labels else {})},
                           "target": target or {}, "drift": {"min_samples": min_samples}})
    return build_bundle(recipe, model, samples=samples(n_in=n_in), release_key=release_key,
                        delegations=delegations).data


def split(data: bytes) -> tuple[dict, list[Signature], dict[str, bytes]]:
    members = _members(memoryview(data), BundleLimits())
    manifest = json.loads(bytes(members.pop(MANIFEST)))
    sigs = [Signature.model_validate(s) for s in json.loads(bytes(members.pop(SIGNATURES)))]
    stored = {k[len(FILES_DIR):]: bytes(v) for k, v in members.items()}
    return manifest, sigs, stored


def resign(manifest: dict, stored: dict[str, bytes], key) -> bytes:
    raw = canonical_json(manifest)
    return pack(raw, [sign(key, raw)], stored)


def replace_smoke_expected(manifest: dict, stored: dict[str, bytes], output: str, change) -> None:
    """Replace (in place) a format-2 bundle's expected smoke output ``output`` by ``change(array)``,
    updating its file entry; re-sign with :func:`resign` afterwards."""
    from edgefleet.protocol.bundle import _encode
    from edgefleet.protocol.bundle_arrays import npy_bytes, read_npy
    from edgefleet.protocol.manifest import ArrayFile

    ref = ArrayFile.model_validate(manifest["smoke_test"]["expected"][output])
    entry = next(f for f in manifest["files"] if f["path"] == ref.file)
    raw = zlib.decompress(stored[ref.file]) if entry["encoding"] == "deflate" else stored[ref.file]
    content = npy_bytes(change(read_npy(raw, ref).copy()).astype(ref.dtype))
    encoding, packed = _encode(content)
    stored[ref.file] = packed
    entry.update(size=len(content), sha256=bundle_digest(content), encoding=encoding, stored_size=len(packed))


def order_message(device_id: str, bundle: bytes, url: str, controller_key, *, sequence: int,
                  deployment_id: str | None = None, ttl: int = 3600, issued_at: int | None = None,
                  size: int | None = None, digest: str | None = None, action: str = "install") -> bytes:
    now = int(time.time()) if issued_at is None else issued_at
    order = DeploymentOrder(device_id=device_id, deployment_id=deployment_id or f"dep-{sequence}", action=action,
                            bundle_digest=digest or bundle_digest(bundle),
                            bundle_size=len(bundle) if size is None else size, bundle_url=url,
                            sequence=sequence, issued_at=now, expires_at=now + ttl)
    signed = sign_order(order, controller_key)
    return encode(OrderMessage(device_id=device_id, order=signed))
