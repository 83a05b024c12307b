"""Magnitude pruning of ONNX models.

* Unstructured: zero the smallest weights of Gemm/MatMul/Conv (one global threshold, or the
  target sparsity in every layer). The file keeps its size, but the bundle deflates every file
  (see :func:`edgefleet.compression.report.stored_size`), so the zeros really shrink the bundle,
  most of all after int8 quantization maps them to exact zero bytes.
* Structured: remove whole hidden neurons / channels between two weighted layers
  (Gemm/MatMul/Conv -> elementwise ops -> [Flatten ->] Gemm/MatMul/Conv) and rewrite both
  weight tensors, so the model gets smaller *and* faster.

No fine-tuning happens after pruning (out of scope); the accuracy gate decides what ships.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compression.config import PruningConfig, PruningKind, PruningScope
from edgefleet.compression.inputs import Inputs, feed, take
from edgefleet.compression.onnx_graph import attribute, initializers

logger = logging.getLogger(__name__)

_WEIGHTED = ("Gemm", "MatMul", "Conv")
#: Ops that act per channel and keep the channel axis where it is.
_PASS_THROUGH = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Identity", "Dropout",
                 "MaxPool", "AveragePool", "Add", "Mul")


@dataclass(frozen=True)
class PruneResult:
    model: onnx.ModelProto
    sparsity: float  # fraction of prunable weights that are zero (unstructured) / removed units
    pruned: list[str]  # names of the weight tensors or layers touched


def _weight_name(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> str | None:
    if node.op_type in _WEIGHTED and len(node.input) > 1 and node.input[1] in inits:
        weight: str = node.input[1]
        return weight
    return None


def prune(model: onnx.ModelProto, config: PruningConfig,
          calibration: Inputs | None = None) -> PruneResult:
    if config.kind is PruningKind.UNSTRUCTURED:
        return prune_unstructured(model, config.sparsity, config.scope)
    return prune_structured(model, config.sparsity, calibration)


def prune_unstructured(model: onnx.ModelProto, sparsity: float,
                       scope: PruningScope = PruningScope.GLOBAL) -> PruneResult:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = initializers(out)
    names = sorted({n for node in out.graph.node if (n := _weight_name(node, inits))})
    arrays = {name: numpy_helper.to_array(inits[name]) for name in names}
    arrays = {k: v for k, v in arrays.items() if v.dtype == np.float32 and v.size > 1}
    if not arrays:
        return PruneResult(out, 0.0, [])
    if scope is PruningScope.GLOBAL:
        magnitudes = np.concatenate([np.abs(a).ravel() for a in arrays.values()])
        k = int(round(sparsity * magnitudes.size))
        threshold = np.partition(magnitudes, k - 1)[k - 1] if k > 0 else -1.0
        thresholds = dict.fromkeys(arrays, threshold)
    else:
        thresholds = {}
        for name, array in arrays.items():
            k = int(round(sparsity * array.size))
            thresholds[name] = np.partition(np.abs(array).ravel(), k - 1)[k - 1] if k > 0 else -1.0
    zeros = total = 0
    for name, array in arrays.items():
        pruned = np.where(np.abs(array) <= thresholds[name], np.float32(0), array).astype(np.float32)
        inits[name].CopyFrom(numpy_helper.from_array(pruned, name))
        zeros += int((pruned == 0).sum())
        total += pruned.size
    achieved = zeros / total
    logger.info("unstructured %s pruning: %d/%d weights zero (%.1f%%)", scope.value, zeros, total,
                100 * achieved)
    return PruneResult(out, achieved, sorted(arrays))


# --- structured ------------------------------------------------------------------------------

@dataclass
class _Chain:
    producer: onnx.NodeProto
    between: list[onnx.NodeProto]
    consumer: onnx.NodeProto
    flatten_spatial: int  # -1 when a Flatten turns C channels into C*spatial features, else 1


def _out_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm" and attribute(node, "transB", 0):
        return 0
    return 1


def _in_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm" and attribute(node, "transB", 0):
        return 1
    return 0


def _chains(model: onnx.ModelProto) -> list[_Chain]:
    graph = model.graph
    inits = initializers(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    weight_uses = {n: len(consumers.get(n, [])) for n in inits}
    chains = []
    for node in graph.node:
        weight = _prunable_weight(node, inits, weight_uses)
        if weight is None:
            continue
        units = inits[weight].dims[_out_axis(node)]
        consumer, between, flattened = _follow(node, units, inits=inits, consumers=consumers, outputs=outputs)
        if consumer is None or _prunable_weight(consumer, inits, weight_uses) is None:
            continue
        if _layouts_match(node, consumer, flattened=flattened):
            chains.append(_Chain(node, between, consumer, -1 if flattened else 1))
    return chains


def _prunable_weight(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
                     weight_uses: dict[str, int]) -> str | None:
    """The weight of ``node`` if no other node uses it and the layer is ungrouped (and, for
    Gemm, does not transpose its input)."""
    weight = _weight_name(node, inits)
    if weight is None or weight_uses[weight] != 1 or attribute(node, "group", 1) != 1:
        return None
    if node.op_type == "Gemm" and attribute(node, "transA", 0):
        return None
    return weight


def _follow(node: onnx.NodeProto, units: int, *, inits: dict[str, onnx.TensorProto],
            consumers: dict[str, list[onnx.NodeProto]],
            outputs: set[str]) -> tuple[onnx.NodeProto | None, list[onnx.NodeProto], bool]:
    """Walk from ``node``'s output through per-channel operators (and one Flatten after a Conv)
    to the weighted layer that consumes it: ``(consumer or None, operators between, flattened)``."""
    between: list[onnx.NodeProto] = []
    value, flattened = node.output[0], False
    while value not in outputs and len(consumers.get(value, [])) == 1:
        user = consumers[value][0]
        if user.op_type in _WEIGHTED and user.input[0] == value:
            return user, between, flattened
        if user.op_type == "Flatten" and node.op_type == "Conv" and not flattened:
            flattened = True
        elif user.op_type not in _PASS_THROUGH or flattened:
            break
        elif not _per_channel_constants(user, inits, units, node.op_type == "Conv"):
            break  # a residual join or a bias that is not per channel
        between.append(user)
        value = user.output[0]
    return None, between, flattened


def _layouts_match(producer: onnx.NodeProto, consumer: onnx.NodeProto, *, flattened: bool) -> bool:
    """A Conv feeds a Conv directly, or a Gemm/MatMul through a Flatten; a Gemm/MatMul feeds a Gemm/MatMul."""
    if consumer.op_type == "Conv":
        return producer.op_type == "Conv" and not flattened
    return (producer.op_type == "Conv") == flattened


def _per_channel_constants(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
                           units: int, nchw: bool) -> bool:
    """Every other input of ``node`` is a constant with one value, or one per channel.

    On NCHW values a per-channel constant must broadcast over the channel axis ([C, 1, 1]).
    """
    for name in node.input[1:]:
        if not name:
            continue
        if name not in inits:
            return False
        dims = list(inits[name].dims)
        size = int(np.prod(dims, dtype=np.int64))
        if size == 1:
            continue
        if size != units or (nchw and (len(dims) < 3 or dims[-3] != units)):
            return False
    return True


_CALIBRATION_LIMIT = 2048  # samples used to rank units and refit the next layer


def _capture(model: onnx.ModelProto, name: str, calibration: Inputs) -> np.ndarray:
    """The value ``name`` of ``model`` on the calibration samples."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    if name not in {o.name for o in probe.graph.output}:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    value: np.ndarray = session.run([name], feed(take(calibration, 0, _CALIBRATION_LIMIT),
                                                 session.get_inputs()[0].name))[0]
    return value


def _per_feature(values: np.ndarray) -> np.ndarray:
    """Mean over samples (and spatial positions for NCHW values): one number per feature."""
    means: np.ndarray = values.mean(axis=(0, 2, 3)) if values.ndim == 4 else values.reshape(
        len(values), -1).mean(axis=0)
    return means


def prune_structured(model: onnx.ModelProto, sparsity: float,
                     calibration: Inputs | None = None) -> PruneResult:
    """Remove ``sparsity`` of the hidden units/channels of every prunable layer pair.

    Without data, units are ranked by incoming x outgoing weight norms. With calibration data
    they are ranked by mean |activation| x outgoing weight norm, and the next layer is refitted
    (no fine-tuning): a Gemm/MatMul by least squares so that it reproduces the *original*
    model's output of that layer from the kept units, a Conv by folding the removed channels'
    mean contribution into its bias.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = initializers(out)
    removed = total = 0
    touched = []
    for chain in _chains(out):
        wp_name, wc_name = chain.producer.input[1], chain.consumer.input[1]
        wp, wc = numpy_helper.to_array(inits[wp_name]), numpy_helper.to_array(inits[wc_name])
        axis_p, axis_c = _out_axis(chain.producer), _in_axis(chain.consumer)
        units = wp.shape[axis_p]
        spatial = chain.flatten_spatial
        if spatial == -1:
            if wc.shape[axis_c] % units:
                continue
            spatial = wc.shape[axis_c] // units
        keep_n = max(1, int(round(units * (1.0 - sparsity))))
        if keep_n >= units:
            continue
        c_features = np.moveaxis(wc, axis_c, 0)  # [features, ...rest]
        out_norm = np.linalg.norm(c_features.reshape(c_features.shape[0], -1), axis=1)
        current = None
        if calibration is not None:
            current = _capture(out, chain.consumer.input[0], calibration)
            strength = np.abs(current).mean(axis=(0, 2, 3)) if current.ndim == 4 else \
                np.abs(current.reshape(len(current), -1)).mean(axis=0)
            score = (strength * out_norm).reshape(units, spatial).sum(axis=1)
        else:
            p_norm = np.linalg.norm(np.moveaxis(wp, axis_p, 0).reshape(units, -1), axis=1)
            score = p_norm * out_norm.reshape(units, spatial).sum(axis=1)
        keep = np.sort(np.argsort(-score, kind="stable")[:keep_n])
        c_keep = (keep[:, None] * spatial + np.arange(spatial)[None, :]).ravel()
        if current is not None and chain.consumer.op_type == "Conv":
            _fold_mean(out, chain.consumer, c_features, _per_feature(current), c_keep)
            _replace(inits[wc_name], np.take(wc, c_keep, axis=axis_c))
        elif current is not None and calibration is not None:  # current is only captured with calibration
            target = _capture(model, chain.consumer.output[0], calibration)
            _refit(out, chain.consumer, current.reshape(len(current), -1)[:, c_keep], target)
        else:
            _replace(inits[wc_name], np.take(wc, c_keep, axis=axis_c))
        _replace(inits[wp_name], np.take(wp, keep, axis=axis_p))
        for node in [chain.producer, *chain.between]:
            for name in node.input[1:] if node is not chain.producer else node.input[2:]:
                if name in inits and int(np.prod(inits[name].dims)) == units:
                    array = numpy_helper.to_array(inits[name])
                    _replace(inits[name], array.reshape(-1)[keep].reshape(
                        [keep_n if d == units else d for d in array.shape]))
        removed += units - keep_n
        total += units
        touched.append(chain.producer.name)
        logger.info("structured pruning: %s keeps %d/%d units", chain.producer.name, keep_n, units)
    del out.graph.value_info[:]  # intermediate shapes changed; runtimes re-infer them
    return PruneResult(out, removed / total if total else 0.0, touched)


def _refit(model: onnx.ModelProto, consumer: onnx.NodeProto, kept: np.ndarray,
           target: np.ndarray) -> None:
    """Least-squares weights (and bias) for a Gemm/MatMul fed only the kept features."""
    inits = initializers(model)
    with_bias = consumer.op_type == "Gemm"
    x = kept.astype(np.float64)
    if with_bias:
        x = np.hstack([x, np.ones((len(x), 1))])
    y = target.reshape(len(target), -1).astype(np.float64)
    gram = x.T @ x
    ridge = 1e-4 * np.trace(gram) / len(gram)
    theta = np.linalg.solve(gram + ridge * np.eye(len(gram)), x.T @ y).astype(np.float32)
    weight = theta[:-1] if with_bias else theta  # [kept features, outputs]
    if consumer.op_type == "Gemm":
        alpha, beta = attribute(consumer, "alpha", 1.0), attribute(consumer, "beta", 1.0)
        weight = weight / np.float32(alpha)
        _replace(inits[consumer.input[1]], weight.T if attribute(consumer, "transB", 0) else weight)
        bias = theta[-1] / np.float32(beta)
        if len(consumer.input) > 2 and consumer.input[2] in inits:
            _replace(inits[consumer.input[2]], bias.reshape(inits[consumer.input[2]].dims)
                     if int(np.prod(inits[consumer.input[2]].dims)) == bias.size else bias)
        else:
            name = f"{consumer.name}.refit_bias"
            model.graph.initializer.append(numpy_helper.from_array(bias, name))
            if len(consumer.input) > 2:
                consumer.input[2] = name
            else:
                consumer.input.append(name)
    else:
        _replace(inits[consumer.input[1]], weight)


def _fold_mean(model: onnx.ModelProto, consumer: onnx.NodeProto, c_features: np.ndarray,
               mean: np.ndarray, c_keep: np.ndarray) -> None:
    """Fold the removed channels' mean contribution into a Conv consumer's bias."""
    dropped = np.setdiff1d(np.arange(c_features.shape[0]), c_keep)
    contribution = c_features[dropped].reshape(len(dropped), c_features.shape[1], -1).sum(axis=2)
    delta = (mean.reshape(-1)[dropped, None] * contribution).sum(axis=0).astype(np.float32)
    inits = initializers(model)
    if len(consumer.input) > 2 and consumer.input[2] in inits:
        bias = inits[consumer.input[2]]
        _replace(bias, numpy_helper.to_array(bias).astype(np.float32) + delta)
    else:
        name = f"{consumer.name}.compensation_bias"
        model.graph.initializer.append(numpy_helper.from_array(delta, name))
        consumer.input.append(name)


def _replace(tensor: onnx.TensorProto, array: np.ndarray) -> None:
    tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), tensor.name))
