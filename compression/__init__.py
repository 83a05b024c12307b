"""Model compression for EdgeFleet: quantize, prune, evaluate and export ONNX/TFLite models.

The entry point is :func:`compress`; see docs/compression.md. The names below are imported on
first use, so ``import edgefleet.compression.config`` (typed settings only) does not load onnx,
ONNX Runtime or LiteRT.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

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

_HOME = {
    "CompressionResult": "api", "compress": "api",
    "CalibrationConfig": "config", "CalibrationMethod": "config", "CompressionConfig": "config",
    "FallbackConfig": "config", "GateConfig": "config", "Mode": "config", "PruningConfig": "config",
    "PruningKind": "config", "PruningScope": "config", "load_compression_recipe": "config",
    "export_tflite": "onnx_to_tflite",
    "CompressionReport": "report", "stored_size": "report",
}

__all__ = ["CalibrationConfig", "CalibrationMethod", "CompressionConfig", "CompressionReport", "CompressionResult",
           "FallbackConfig", "GateConfig", "Mode", "PruningConfig", "PruningKind", "PruningScope", "compress",
           "export_tflite", "load_compression_recipe", "stored_size"]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
