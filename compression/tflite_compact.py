"""A quantized TFLite file written with each distinct vector stored once.

TFLite's schema keeps a per-channel tensor's zero points as int64, one per scale, and LiteRT
refuses a tensor with fewer zero points than scales ("QuantizationParam has 1 zero_point values
and 24 scale values. Must have same number."); TF's converter and litert-quantizer write every
such vector anew, so a small convolutional model carries kilobytes of zeros (8 bytes per channel
of every weight and bias). A flatbuffer may point several tables at one vector (what shared
strings do); :func:`compact_tflite` re-packs the file that way — the same zero points, scales
and shapes are read, only stored once — with buffers inline and 16-byte aligned, as TF's
converter writes them.
"""

from __future__ import annotations

import hashlib

import flatbuffers
import numpy as np

from edgefleet.compression.tflite_graph import TFLITE_IDENTIFIER, load_tflite

#: Vectors up to this size are shared when equal (quantization parameters, shapes, small buffers).
_SHARE_LIMIT = 1 << 20
#: Buffers (uint8 vectors) start on this boundary, as TF's converter writes them.
_BUFFER_ALIGNMENT = 16


class SharingBuilder(flatbuffers.Builder):  # type: ignore[misc]
    """A flatbuffers builder that writes each distinct numpy vector once and aligns byte vectors
    (the model's buffers) to 16 bytes."""

    def __init__(self, initial_size: int) -> None:
        super().__init__(initial_size)
        self._written: dict[tuple[str, int, bytes], int] = {}

    def CreateNumpyVector(self, x: np.ndarray) -> int:  # noqa: N802 (flatbuffers' name)
        key = None
        if x.nbytes <= _SHARE_LIMIT:
            key = (x.dtype.str, x.size, hashlib.sha256(x.tobytes()).digest())
            if key in self._written:
                return self._written[key]
        if x.dtype == np.uint8 and x.size:
            self.Prep(_BUFFER_ALIGNMENT, x.nbytes)  # the data, after its length, lands aligned
        offset: int = super().CreateNumpyVector(x)
        if key is not None:
            self._written[key] = offset
        return offset


def compact_tflite(data: bytes) -> bytes:
    """``data`` re-packed with shared vectors (:class:`SharingBuilder`), buffers stored outside
    the flatbuffer (``offset > 1``, as litert-quantizer writes them) moved inline; ``data``
    itself when that is not smaller (or when operators keep custom options outside)."""
    model = load_tflite(data)
    if any(op.largeCustomOptionsOffset > 1 for graph in model.subgraphs or [] for op in graph.operators or []):
        return bytes(data)  # custom options stored outside the flatbuffer: left as written
    for buffer in model.buffers or []:
        if buffer.offset > 1 and buffer.size:
            buffer.data = np.frombuffer(data, np.uint8, count=buffer.size, offset=buffer.offset).copy()
            buffer.offset = buffer.size = 0
    builder = SharingBuilder(max(1024, len(data) // 2))
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    packed = bytes(builder.Output())
    return packed if len(packed) < len(data) else bytes(data)
