"""Which TFLite resize flags reproduce an ONNX Resize exactly (pure; no graph, no I/O).

ONNX Resize names a coordinate transformation (``half_pixel``, ``asymmetric`` ...) and, for
nearest, a rounding rule; TFLite's RESIZE_NEAREST_NEIGHBOR and RESIZE_BILINEAR only take
``align_corners`` and ``half_pixel_centers``. For nearest, both index maps are computed the way
ONNX Runtime and the TFLite kernels compute them (float32) and compared on the actual sizes; for
linear, the coordinate modes TFLite implements are mapped one to one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Flags = tuple[bool, bool]  # (align_corners, half_pixel_centers)

SIMPLE = "simple"  # the nearest rule of Upsample and Resize-10 (no nearest_mode attribute)

_CANDIDATES: tuple[Flags, ...] = ((False, False), (False, True), (True, False))
_LINEAR: dict[str, Flags] = {"align_corners": (True, False), "asymmetric": (False, False),
                             "half_pixel": (False, True), "pytorch_half_pixel": (False, True)}


@dataclass(frozen=True)
class Axis:
    """One resized axis: input length, output length and the scale ONNX uses (out/in if sizes)."""

    size_in: int
    size_out: int
    scale: float


def _onnx_source(coord: str, axis: Axis) -> np.ndarray | None:
    x = np.arange(axis.size_out, dtype=np.float32)
    scale = np.float32(axis.scale)
    half = np.float32(0.5)
    if coord == "pytorch_half_pixel" and axis.size_out == 1 or coord == "align_corners" and axis.size_out == 1:
        return np.zeros_like(x)
    sources: dict[str, Callable[[], np.ndarray]] = {
        "half_pixel": lambda: (x + half) / scale - half,
        "pytorch_half_pixel": lambda: (x + half) / scale - half,
        "align_corners": lambda: x * np.float32(axis.size_in - 1) / np.float32(axis.size_out - 1),
        "asymmetric": lambda: x / scale,
    }
    return np.asarray(sources[coord](), np.float32) if coord in sources else None


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """std::round."""
    return np.asarray(np.sign(v) * np.floor(np.abs(v) + np.float32(0.5)), np.float32)


def _round(v: np.ndarray, nearest_mode: str) -> np.ndarray | None:
    if nearest_mode == "round_prefer_floor":
        tie = v == np.floor(v) + np.float32(0.5)
        return np.asarray(np.where(tie, np.floor(v), _round_half_away(v)), np.float32)
    rules: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "round_prefer_ceil": _round_half_away, "floor": np.floor, "ceil": np.ceil}
    return np.asarray(rules[nearest_mode](v), np.float32) if nearest_mode in rules else None


def _simple(v: np.ndarray, scale: float) -> np.ndarray:
    """ONNX Runtime's rule for Upsample and Resize-10: floor upsampling, ceil downsampling."""
    return np.asarray(np.ceil(v) if scale < 1 else np.floor(v), np.float32)


def onnx_nearest_indices(coord: str, nearest_mode: str, axis: Axis) -> np.ndarray | None:
    """The source index of every output position as ONNX Runtime picks it (None: mode unknown)."""
    source = _onnx_source(coord, axis)
    if source is None:
        return None
    rounded = _simple(source, axis.scale) if nearest_mode == SIMPLE else _round(source, nearest_mode)
    if rounded is None:
        return None
    return np.asarray(np.clip(rounded, 0, axis.size_in - 1), np.int64)


def tflite_nearest_indices(flags: Flags, axis: Axis) -> np.ndarray:
    """The source index of every output position as TFLite's RESIZE_NEAREST_NEIGHBOR picks it."""
    align_corners, half_pixel = flags
    if align_corners and axis.size_out > 1:
        scale = np.float32(axis.size_in - 1) / np.float32(axis.size_out - 1)
    else:
        scale = np.float32(axis.size_in) / np.float32(axis.size_out)
    v = (np.arange(axis.size_out, dtype=np.float32) + np.float32(0.5 if half_pixel else 0.0)) * scale
    index = _round_half_away(v) if align_corners else np.floor(v)
    index = np.minimum(index, axis.size_in - 1)
    if half_pixel:
        index = np.maximum(index, 0)
    return np.asarray(index, np.int64)


def nearest_flags(coord: str, nearest_mode: str, axes: list[Axis]) -> Flags | None:
    """TFLite flags picking the same source pixels as ONNX on every axis, or None."""
    expected = []
    for axis in axes:
        indices = onnx_nearest_indices(coord, nearest_mode, axis)
        if indices is None:
            return None
        expected.append(indices)
    for flags in _CANDIDATES:
        if all(np.array_equal(tflite_nearest_indices(flags, axis), e)
               for axis, e in zip(axes, expected, strict=True)):
            return flags
    return None


def linear_flags(coord: str, axes: list[Axis]) -> Flags | None:
    """TFLite RESIZE_BILINEAR flags for an ONNX linear coordinate mode, or None."""
    if coord == "pytorch_half_pixel" and any(axis.size_out == 1 for axis in axes):
        return None
    return _LINEAR.get(coord)
