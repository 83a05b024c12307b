"""The choices of a compression run, as plain enums (no pydantic, no ML library), so the CLI can
offer them as option values without loading anything heavy. :mod:`config` holds the typed settings."""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    """What happens to the weights (and activations)."""

    NONE = "none"  # no quantization (pruning only, or a plain evaluation)
    DYNAMIC_INT8 = "dynamic_int8"  # int8 weights, activations quantized at run time
    STATIC_INT8 = "static_int8"  # int8 weights and activations, calibrated (TFLite: full int8)
    WEIGHT_ONLY_INT8 = "weight_only_int8"  # int8 weights dequantized to float (TFLite only)
    FP16 = "fp16"  # float16 weights, float32 inputs/outputs


class CalibrationMethod(StrEnum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class PruningKind(StrEnum):
    UNSTRUCTURED = "unstructured"  # zero the smallest weights; the bundle's deflate shrinks them
    STRUCTURED = "structured"  # remove whole neurons/channels; the model gets faster


class PruningScope(StrEnum):
    GLOBAL = "global"  # one magnitude threshold across all prunable layers
    PER_LAYER = "per_layer"  # the target sparsity in every layer
