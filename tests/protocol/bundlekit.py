"""For the bundle-format tests and benchmarks/bundle_size.py: a writer of the OLD bundle layout
(format 1: smoke vectors and the reference profile inline as JSON; the product writes format 2 and
only reads format 1) and a small model with a wide input."""

from __future__ import annotations

import json

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgefleet.protocol import keys
from edgefleet.protocol.bundle import BundleLimits, _members, pack, verify_bundle
from edgefleet.protocol.canonical import canonical_json

OLD_PREFIXES = ("smoke/", "profile/")


def to_format_1(data: bytes, key, trusted: keys.TrustedKeys) -> bytes:
    """The format-1 bundle with the same model, files, smoke vectors and profile as the (format 2)
    bundle ``data``, signed by ``key``: what ``build_bundle`` wrote before format 2."""
    verified = verify_bundle(data, trusted=trusted)
    manifest = json.loads(verified.manifest.model_dump_json())
    smoke, profile = verified.smoke_test(), verified.reference_profile()
    manifest["format_version"] = 1
    manifest.pop("profile_files", None)
    manifest["reference_profile"] = profile.model_dump(mode="json") if profile else None
    manifest["smoke_test"] = ({"inputs": {k: v.tolist() for k, v in smoke.inputs.items()},
                               "expected": {k: v.tolist() for k, v in smoke.expected.items()},
                               "atol": smoke.atol, "rtol": smoke.rtol} if smoke else None)
    manifest["files"] = [f for f in manifest["files"] if not f["path"].startswith(OLD_PREFIXES)]
    members = _members(memoryview(data), BundleLimits())
    stored = {f["path"]: bytes(members["files/" + f["path"]]) for f in manifest["files"]}
    raw = canonical_json(manifest)
    return pack(raw, [keys.sign(key, raw)], stored)


def wide_model(hidden: int = 200, classes: int = 10) -> bytes:
    """x[N, 3, 224, 224] -> GlobalAveragePool -> 3 dense layers (~160 KB of weights) -> Softmax."""
    rng = np.random.default_rng(0)
    dims = [3, hidden, hidden, classes]
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Flatten", ["g"], ["h0"])]
    inits = []
    for i, (a, b) in enumerate(zip(dims, dims[1:], strict=False)):
        inits += [numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"h{i + 1}"])]
    nodes.append(helper.make_node("Softmax", [f"h{len(dims) - 1}"], ["probs"], axis=1))
    graph = helper.make_graph(nodes, "wide",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()
