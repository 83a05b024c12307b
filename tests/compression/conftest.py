"""Session-wide sample models: trained once, shared by every compression test."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.compression.onnx_to_tflite import export_tflite
from edgefleet.compression.samples import DigitsData, load_digits_split, train_cnn, train_mlp


@pytest.fixture(scope="session")
def digits() -> DigitsData:
    return load_digits_split(seed=0)


@pytest.fixture(scope="session")
def mlp(digits: DigitsData) -> bytes:
    return train_mlp(digits, seed=0)


@pytest.fixture(scope="session")
def cnn(digits: DigitsData) -> bytes:
    return train_cnn(digits, seed=0)


@pytest.fixture(scope="session")
def mlp_tflite(mlp: bytes) -> bytes:
    return export_tflite(mlp)


@pytest.fixture(scope="session")
def samples(digits: DigitsData, mlp: bytes, cnn: bytes):
    """model name -> (onnx bytes, calibration, eval_x, eval_y)."""

    def images(x: np.ndarray) -> np.ndarray:
        return x.reshape(-1, 1, 8, 8)

    return {
        "mlp": (mlp, digits.x_train, digits.x_test, digits.y_test),
        "cnn": (cnn, images(digits.x_train), images(digits.x_test), digits.y_test),
    }


def _run_onnx(model: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _run_tflite(model: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], np.ascontiguousarray(x, dtype=np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


@pytest.fixture(scope="session")
def run_model():
    """run_model(runtime, model_bytes, x) straight in ONNX Runtime / LiteRT (not via our code)."""

    def run(runtime: str, model: bytes, x: np.ndarray) -> np.ndarray:
        return _run_onnx(model, x) if runtime == "onnx" else _run_tflite(model, x)

    return run
