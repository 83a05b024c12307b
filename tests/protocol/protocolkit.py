"""Helpers shared by the protocol tests (a uniquely named module: every test folder has a conftest)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

N_IN, N_OUT = 4, 3


def make_onnx_model(n_in: int = N_IN, n_out: int = N_OUT, seed: int = 0) -> bytes:
    """y = softmax(x @ W + b) with a dynamic batch dimension; opset 13, IR 8 (any ORT loads it)."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(n_in, n_out)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=(n_out,)).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]),
         helper.make_node("Add", ["xw", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_out])],
        initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


RECIPE = {
    "bundle": {"name": "tiny-clf", "version": "1.2.3", "build": 7, "runtime": "onnx",
               "labels": ["a", "b", "c"], "description": "test bundle"},
    "target": {"archs": ["x86_64", "aarch64"], "hardware_classes": ["cam-v2"], "min_agent_version": "0.1.0"},
    "preprocessing": {"scale": 1.0},
    "smoke_test": {"vectors": 3, "atol": 1e-5, "rtol": 1e-4},
    "profile": {"bins": 8},
}
