"""The one builder of the tiny ONNX models tests deploy (onnx.helper; test code may use onnx, the
agent may not). On the test path through ``pythonpath`` in pyproject.toml, so every test folder
imports the same one. Purpose-built graphs for compression edge cases stay with their tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp_onnx(n_in: int = 4, n_hidden: int = 8, n_out: int = 3, seed: int = 0, layers: int = 1) -> bytes:
    """x[N, n_in] -> (MatMul+Add+Relu) * layers -> MatMul+Add -> Softmax -> probs[N, n_out];
    ``layers=0`` is a linear classifier. Opset 13, IR 8 (any ONNX Runtime loads it)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, width = "x", n_in
    for i in range(layers):
        w = rng.normal(0, 1 / np.sqrt(width), (width, n_hidden)).astype(np.float32)
        b = rng.normal(0, 0.1, n_hidden).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"h{i}"])]
        prev, width = f"h{i}", n_hidden
    w = rng.normal(0, 1 / np.sqrt(width), (width, n_out)).astype(np.float32)
    b = rng.normal(0, 0.1, n_out).astype(np.float32)
    inits += [numpy_helper.from_array(w, "wo"), numpy_helper.from_array(b, "bo")]
    nodes += [helper.make_node("MatMul", [prev, "wo"], ["mo"]), helper.make_node("Add", ["mo", "bo"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgefleet-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def reference_forward(model: bytes, x: np.ndarray) -> np.ndarray:
    """Outputs computed with a bare ONNX Runtime session (the reference)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.astype(np.float32)})[0]
