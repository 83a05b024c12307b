"""Model compression for EdgeFleet: quantize, prune, evaluate and export ONNX/TFLite models.

The entry point is :func:`compress`; see docs/compression.md. The names below are imported on
first use, so ``import edgefleet.compression.config`` (typed settings only) does not load onnx,
ONNX Runtime or LiteRT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.protocol.exports import homes, lazy

if TYPE_CHECKING:
    from edgefleet.compression.api import CompressionResult, compress
    from edgefleet.compression.config import (
        CalibrationConfig,
        CalibrationMethod,
        CompressionConfig,
        FallbackConfig,
        GateConfig,
        Mode,
        PruningConfig,
        PruningKind,
        PruningScope,
        load_compression_recipe,
    )
    from edgefleet.compression.onnx_to_tflite import export_tflite
    from edgefleet.compression.report import CompressionReport, stored_size

_HOME = homes(api=("CompressionResult", "compress"),
              config=("CalibrationConfig", "CalibrationMethod", "CompressionConfig", "FallbackConfig", "GateConfig",
                      "Mode", "PruningConfig", "PruningKind", "PruningScope", "load_compression_recipe"),
              onnx_to_tflite=("export_tflite",), report=("CompressionReport", "stored_size"))
__all__ = ["CalibrationConfig", "CalibrationMethod", "CompressionConfig", "CompressionReport", "CompressionResult",
           "FallbackConfig", "GateConfig", "Mode", "PruningConfig", "PruningKind", "PruningScope", "compress",
           "export_tflite", "load_compression_recipe", "stored_size"]

__getattr__ = lazy(__name__, globals(), _HOME)
