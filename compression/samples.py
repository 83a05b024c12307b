"""Sample models trained by the project on scikit-learn's bundled digits data set.

Nothing is downloaded: ``sklearn.datasets.load_digits`` ships with scikit-learn. The models are
small but real (about 97-98 % test accuracy) and are used by the tests, the demo and the
benchmarks. Both are exported to ONNX by building the graph with ``onnx.helper``.

* MLP: ``input`` float32 ``[N, 64]`` in [0, 1] -> Gemm/Relu ... -> Softmax ``probabilities``.
* CNN: ``input`` float32 ``[N, 1, 8, 8]`` -> Conv/Relu/MaxPool/Conv/Relu/Flatten/Gemm/Relu/Gemm
  -> Softmax ``probabilities``; trained with plain numpy (im2col convolutions, Adam).

Training is deterministic for a given seed.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefleet.protocol.training import TrainingRequest

logger = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "input"
_MLP_EPOCHS = 60
OUTPUT_NAME = "probabilities"


@dataclass(frozen=True)
class DigitsData:
    """The digits data set split into train and test parts, pixels scaled to [0, 1]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def images(self, x: np.ndarray) -> np.ndarray:
        """Reshape flat ``[N, 64]`` rows to the CNN's ``[N, 1, 8, 8]`` layout."""
        return x.reshape(-1, 1, 8, 8)


def load_digits_split(seed: int = 0, test_size: float = 0.2) -> DigitsData:
    """Load scikit-learn's digits (1797 8x8 images) and split them (80/20 by default), stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y)
    return DigitsData(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def _model(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], name: str,
           input_shape: list[int | str]) -> bytes:
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 10])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgefleet.compression.samples")
    onnx.checker.check_model(model, full_check=True)
    serialized: bytes = model.SerializeToString()
    return serialized


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)


def train_mlp(data: DigitsData, seed: int = 0, hidden: tuple[int, ...] = (512, 256)) -> bytes:
    """Train an MLP (64 -> hidden... -> 10) with scikit-learn; return ONNX model bytes."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    clf = MLPClassifier(hidden_layer_sizes=hidden, random_state=seed, max_iter=_MLP_EPOCHS,
                        tol=1e-5)
    # One BLAS thread: multi-threaded BLAS spin-waits badly on a busy 2-core machine.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the epoch budget is deliberate
        clf.fit(data.x_train, data.y_train)
    logger.info("trained MLP %s: test accuracy %.4f", hidden, clf.score(data.x_test, data.y_test))
    return _mlp_onnx(clf)


def _mlp_onnx(clf: Any) -> bytes:
    """A fitted ``MLPClassifier`` as ONNX: Gemm (weights ``[in, out]``) and Relu per layer, Softmax."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    current = INPUT_NAME
    n_layers = len(clf.coefs_)
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True)):
        inits += [_init(f"fc{i}.weight", w), _init(f"fc{i}.bias", b)]
        out = f"fc{i}"
        nodes.append(helper.make_node("Gemm", [current, f"fc{i}.weight", f"fc{i}.bias"], [out],
                                      name=f"fc{i}"))
        current = out
        if i < n_layers - 1:
            nodes.append(helper.make_node("Relu", [current], [f"relu{i}"], name=f"relu{i}"))
            current = f"relu{i}"
    nodes.append(helper.make_node("Softmax", [current], [OUTPUT_NAME], name="softmax", axis=-1))
    return _model(nodes, inits, "digits_mlp", ["N", 64])


def retrain_digits(request: TrainingRequest) -> None:
    """The digits MLP's training entry point for the controller's retraining job (docs/retraining.md).

    Fine-tunes the parent MLP (an export of :func:`train_mlp`: same layers, its weights as the start)
    for :data:`RETRAIN_EPOCHS` epochs on the reference data (``x``, ``y``) plus the captured samples
    that came back labelled, and writes the ONNX model to ``request.output``. Starting from the parent
    keeps what it learnt and, unlike training from scratch, its tolerance to the recipe's pruning and
    quantization. Deterministic."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    from edgefleet.protocol.files import atomic_write

    with np.load(request.reference, allow_pickle=False) as ref:
        x, y = ref["x"].reshape(len(ref["x"]), -1).astype(np.float32), ref["y"].astype(np.int64)
    with np.load(request.captured, allow_pickle=False) as cap:
        label = cap["label"].astype(np.int64)
        captured = [cap[n] for n in cap.files if n.startswith("input:")]
    parts_x, parts_y = [x[y >= 0]], [y[y >= 0]]
    if captured and len(label):
        parts_x.append(captured[0].reshape(len(label), -1).astype(np.float32)[label >= 0])
        parts_y.append(label[label >= 0])
    train_x, train_y = np.concatenate(parts_x), np.concatenate(parts_y)
    weights, biases = _mlp_parameters(request.parent)
    classes = np.arange(weights[-1].shape[1])
    missing = sorted(set(classes.tolist()) - set(train_y.tolist()))
    if missing or train_y.max(initial=0) >= len(classes):
        raise ValueError(f"the labelled samples must cover the classes 0..{len(classes) - 1} and no other "
                         f"(missing: {missing})")
    hidden = tuple(w.shape[1] for w in weights[:-1])
    print(f"retraining {request.model}@{request.parent_version}: {len(parts_y[0])} reference + "
          f"{len(train_y) - len(parts_y[0])} captured labelled samples, hidden layers {hidden}", flush=True)
    clf = MLPClassifier(hidden_layer_sizes=hidden, random_state=0, max_iter=RETRAIN_EPOCHS, tol=1e-5, warm_start=True)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the epoch budget is deliberate
        first = np.array([np.flatnonzero(train_y == c)[0] for c in classes])
        clf.partial_fit(train_x[first], train_y[first], classes=classes)   # builds the layers and the optimizer
        clf.coefs_, clf.intercepts_ = weights, biases                       # ... then starts from the parent
        clf.fit(train_x, train_y)
    print(f"training accuracy {clf.score(train_x, train_y):.4f}", flush=True)
    atomic_write(request.output, _mlp_onnx(clf))


RETRAIN_EPOCHS = 20


def _mlp_parameters(parent: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Weights (``[in, out]``) and biases of the Gemm layers of an MLP exported by :func:`train_mlp`."""
    with open(parent, "rb") as fh:
        graph = onnx.load_from_string(fh.read()).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    gemms = [n for n in graph.node if n.op_type == "Gemm" and n.input[1] in arrays and n.input[2] in arrays]
    if len(gemms) < 2:
        raise ValueError(f"{parent} is not a digits MLP exported by train_mlp ({len(gemms)} Gemm layers)")
    return [arrays[n.input[1]].copy() for n in gemms], [arrays[n.input[2]].copy() for n in gemms]  # writable


# --- numpy CNN ------------------------------------------------------------------------------

def _im2col(x: np.ndarray) -> np.ndarray:
    """3x3, stride 1, padding 1: ``[N, C, H, W]`` -> ``[N*H*W, C*9]`` (channel-major)."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=2)
    return cols.transpose(0, 3, 4, 1, 2).reshape(n * h * w, c * 9)


def _col2im(dcols: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    n, c, h, w = shape
    d = dcols.reshape(n, h, w, c, 9).transpose(0, 3, 4, 1, 2)
    dxp = np.zeros((n, c, h + 2, w + 2), dtype=dcols.dtype)
    for k in range(9):
        i, j = divmod(k, 3)
        dxp[:, :, i:i + h, j:j + w] += d[:, :, k]
    return dxp[:, :, 1:-1, 1:-1]


class _CNN:
    """conv(1->16) relu maxpool2 conv(16->32) relu flatten fc(512->64) relu fc(64->10)."""

    def __init__(self, rng: np.random.Generator) -> None:
        def he(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
            scaled: np.ndarray = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
            return scaled.astype(np.float32)

        self.params = {
            "conv1.weight": he((16, 1, 3, 3), 9), "conv1.bias": np.zeros(16, np.float32),
            "conv2.weight": he((32, 16, 3, 3), 144), "conv2.bias": np.zeros(32, np.float32),
            "fc1.weight": he((512, 64), 512), "fc1.bias": np.zeros(64, np.float32),
            "fc2.weight": he((64, 10), 64), "fc2.bias": np.zeros(10, np.float32),
        }

    @staticmethod
    def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, _, h, wd = x.shape
        cols = _im2col(x)
        out = cols @ w.reshape(w.shape[0], -1).T + b
        return out.reshape(n, h, wd, -1).transpose(0, 3, 1, 2), cols

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        p = self.params
        z1, cols1 = self._conv(x, p["conv1.weight"], p["conv1.bias"])
        a1 = np.maximum(z1, 0)
        n = x.shape[0]
        a1r = a1.reshape(n, 16, 4, 2, 4, 2)
        m1 = a1r.max(axis=(3, 5))
        z2, cols2 = self._conv(m1, p["conv2.weight"], p["conv2.bias"])
        a2 = np.maximum(z2, 0)
        f = a2.reshape(n, -1)
        z3 = f @ p["fc1.weight"] + p["fc1.bias"]
        a3 = np.maximum(z3, 0)
        logits = a3 @ p["fc2.weight"] + p["fc2.bias"]
        cache = dict(x=x, cols1=cols1, z1=z1, a1r=a1r, m1=m1, cols2=cols2, z2=z2, f=f, z3=z3, a3=a3)
        return logits, cache

    def backward(self, dlogits: np.ndarray, c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        p = self.params
        n = dlogits.shape[0]
        g = {"fc2.weight": c["a3"].T @ dlogits, "fc2.bias": dlogits.sum(0)}
        dz3 = (dlogits @ p["fc2.weight"].T) * (c["z3"] > 0)
        g["fc1.weight"] = c["f"].T @ dz3
        g["fc1.bias"] = dz3.sum(0)
        dz2 = (dz3 @ p["fc1.weight"].T).reshape(c["z2"].shape) * (c["z2"] > 0)
        dz2m = dz2.transpose(0, 2, 3, 1).reshape(-1, 32)
        g["conv2.weight"] = (dz2m.T @ c["cols2"]).reshape(p["conv2.weight"].shape)
        g["conv2.bias"] = dz2m.sum(0)
        dm1 = _col2im(dz2m @ p["conv2.weight"].reshape(32, -1), c["m1"].shape)
        mask = c["a1r"] == c["m1"][:, :, :, None, :, None]
        da1 = (mask * dm1[:, :, :, None, :, None]).reshape(n, 16, 8, 8)
        dz1 = da1 * (c["z1"] > 0)
        dz1m = dz1.transpose(0, 2, 3, 1).reshape(-1, 16)
        g["conv1.weight"] = (dz1m.T @ c["cols1"]).reshape(p["conv1.weight"].shape)
        g["conv1.bias"] = dz1m.sum(0)
        return g


def train_cnn(data: DigitsData, seed: int = 0, epochs: int = 20) -> bytes:
    """Train a small CNN with numpy (Adam, cross-entropy); return ONNX model bytes."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        net = _train_cnn(data, seed, epochs)
    return _cnn_to_onnx(net.params)


def _train_cnn(data: DigitsData, seed: int, epochs: int) -> _CNN:
    rng = np.random.default_rng(seed)
    net = _CNN(rng)
    x = data.images(data.x_train)
    y = data.y_train
    m = {k: np.zeros_like(v) for k, v in net.params.items()}
    v = {k: np.zeros_like(v) for k, v in net.params.items()}
    lr, b1, b2, eps, step, batch = 2e-3, 0.9, 0.999, 1e-8, 0, 32
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            logits, cache = net.forward(x[idx])
            logits = logits - logits.max(axis=1, keepdims=True)
            prob = np.exp(logits)
            prob /= prob.sum(axis=1, keepdims=True)
            prob[np.arange(len(idx)), y[idx]] -= 1.0
            grads = net.backward((prob / len(idx)).astype(np.float32), cache)
            step += 1
            for k, gk in grads.items():
                m[k] = b1 * m[k] + (1 - b1) * gk
                v[k] = b2 * v[k] + (1 - b2) * gk * gk
                mhat = m[k] / (1 - b1 ** step)
                vhat = v[k] / (1 - b2 ** step)
                net.params[k] = (net.params[k] - lr * mhat / (np.sqrt(vhat) + eps)).astype(np.float32)
    test_logits, _ = net.forward(data.images(data.x_test))
    logger.info("trained CNN: test accuracy %.4f",
                float((test_logits.argmax(1) == data.y_test).mean()))
    return net


def _cnn_to_onnx(p: dict[str, np.ndarray]) -> bytes:
    inits = [_init(k, val) for k, val in p.items()]
    conv: dict[str, Any] = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "conv1.weight", "conv1.bias"], ["conv1"],
                         name="conv1", **conv),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], name="pool1",
                         kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "conv2.weight", "conv2.bias"], ["conv2"],
                         name="conv2", **conv),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("Flatten", ["relu2"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["fc1"], name="fc1"),
        helper.make_node("Relu", ["fc1"], ["relu3"], name="relu3"),
        helper.make_node("Gemm", ["relu3", "fc2.weight", "fc2.bias"], ["fc2"], name="fc2"),
        helper.make_node("Softmax", ["fc2"], [OUTPUT_NAME], name="softmax", axis=-1),
    ]
    return _model(nodes, inits, "digits_cnn", ["N", 1, 8, 8])
