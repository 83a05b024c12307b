"""Model compression for EdgeFleet: quantize, prune, evaluate and export ONNX/TFLite models.

The entry point is :func:`compress`; see docs/compression.md.
"""

from edgefleet.compression.api import CompressionResult, compress
from edgefleet.compression.config import (CalibrationConfig, CalibrationMethod, CompressionConfig,
                                          FallbackConfig, GateConfig, Mode, PruningConfig,
                                          PruningKind, PruningScope, load_compression_recipe)
from edgefleet.compression.export_tflite import export_tflite
from edgefleet.compression.report import CompressionReport, stored_size

__all__ = [
    "CalibrationConfig", "CalibrationMethod", "CompressionConfig", "CompressionReport",
    "CompressionResult", "FallbackConfig", "GateConfig", "Mode", "PruningConfig", "PruningKind",
    "PruningScope", "compress", "export_tflite", "load_compression_recipe", "stored_size",
]
