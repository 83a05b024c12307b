"""The corpus benchmark measures ONNX Runtime's quantize_dynamic baseline exactly as compress()
measures its own rows (benchmarks/compression_corpus.py ``same_measures``): on a sequence-first
output ``[T, N, C]`` (ddddocr-ocr's CTC output) a per-call cosine and the report's per-row cosine
differ, which once made identical models look 7 % apart. A small model built here, no corpus file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compression import CompressionConfig, GateConfig, Mode, compress

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "compression_corpus.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("compression_corpus_under_test", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _sequence_model(steps: int = 6, classes: int = 12) -> bytes:
    """x [1, 16] -> MatMul -> Reshape [T, 1, C]: the time axis first, the batch second."""
    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((16, steps * classes)) * np.geomspace(0.01, 1.0, steps * classes)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Reshape", ["m", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [steps, 1, classes])],
                              [numpy_helper.from_array(weight, "w"),
                               numpy_helper.from_array(np.array([steps, 1, classes], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def test_the_baseline_is_measured_with_the_reports_own_measure():
    bench = _benchmark()
    from manifest import InputDesc, ModelEntry  # on the path the benchmark module puts it on

    entry = ModelEntry(name="seq", package="p", version="1", archive="wheel", path="m.onnx", sha256="0" * 64,
                       format="onnx", task="t", license="MIT", traits=(),
                       inputs=(InputDesc("x", "float32", (1, 16), True, (-1.0, 1.0)),))
    model = _sequence_model()
    x = np.random.default_rng(4).uniform(-1, 1, (8, 16)).astype(np.float32)
    result = compress(model, "onnx", CompressionConfig(mode=Mode.DYNAMIC_INT8, latency_runs=0,
                                                       gate=GateConfig(enabled=False)), eval_x=x)
    measured = bench.same_measures(entry, model, result.model, {"x": x})
    assert measured["outputs"][0]["name"] == "y"
    assert abs(measured["cosine_similarity"] - result.report.fidelity.cosine_similarity) < 1e-6
    assert bench.fidelity_text(measured).startswith("map cos ")
    # the per-call cosine (the whole [T, 1, C] output of a call flattened) is another number here
    per_call = _per_call_cosine(model, result.model, x)
    assert abs((1 - per_call) - (1 - measured["cosine_similarity"])) > 0.05 * (1 - per_call)


def _per_call_cosine(original: bytes, quantized: bytes, x: np.ndarray) -> float:
    import onnxruntime as ort

    sessions = [ort.InferenceSession(m, providers=["CPUExecutionProvider"]) for m in (original, quantized)]
    values = []
    for row in x:
        a, b = (s.run(None, {"x": row[None]})[0].ravel().astype(np.float64) for s in sessions)
        values.append(float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.mean(values))
