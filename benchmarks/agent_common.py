"""Shared helpers of the agent benchmarks: models built with onnx.helper, signed bundles."""

from __future__ import annotations

import statistics
import time

import numpy as np


def mlp_onnx(n_in: int, n_hidden: int, n_out: int, layers: int, seed: int = 0) -> bytes:
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    nodes, inits, prev, width = [], [], "x", n_in
    for i in range(layers):
        weights = rng.normal(0, 1 / np.sqrt(width), (width, n_hidden)).astype(np.float32)
        inits += [numpy_helper.from_array(weights, f"w{i}"),
                  numpy_helper.from_array(np.zeros(n_hidden, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"h{i}"])]
        prev, width = f"h{i}", n_hidden
    inits += [numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(width), (width, n_out)).astype(np.float32), "wo")]
    nodes += [helper.make_node("MatMul", [prev, "wo"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def signed_bundle(model: bytes, n_in: int, release_key, name: str = "bench") -> bytes:
    from edgefleet.protocol.bundle import build_bundle, parse_recipe
    recipe = parse_recipe({"bundle": {"name": name, "version": "1.0.0", "build": 1, "runtime": "onnx"}})
    x = np.random.default_rng(1).normal(size=(256, n_in)).astype(np.float32)
    return build_bundle(recipe, model, samples=x, release_key=release_key).data


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out
