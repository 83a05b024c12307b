"""Typed compression configuration and the ``[compression]`` table of a recipe TOML."""

from __future__ import annotations

import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgefleet.compression.modes import CalibrationMethod, Mode, PruningKind, PruningScope
from edgefleet.protocol.errors import ConfigError, first_problem

__all__ = ["CalibrationConfig", "CalibrationMethod", "CompressionConfig", "FallbackConfig", "GateConfig",
           "InputsConfig", "Mode",
           "OutputKind", "OutputSpec",
           "PruningConfig", "PruningKind", "PruningScope", "load_compression_recipe"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CalibrationConfig(_Strict):
    method: CalibrationMethod = CalibrationMethod.MINMAX
    max_samples: int = Field(default=512, gt=0)
    batch_size: int = Field(default=32, gt=0)
    percentile: float = Field(default=99.999, gt=50.0, le=100.0)


class PruningConfig(_Strict):
    kind: PruningKind = PruningKind.UNSTRUCTURED
    sparsity: float = Field(ge=0.0, lt=1.0)
    scope: PruningScope = PruningScope.GLOBAL


class OutputKind(StrEnum):
    """What a model output holds; decides how the gate measures it (docs/compression.md)."""

    CLASS_SCORES = "class_scores"  # top-1 (and top-k) agreement; accuracy with labels
    MAP = "map"  # cosine similarity and SNR
    EMBEDDING = "embedding"  # cosine similarity and SNR
    COORDINATES = "coordinates"  # mean |error| relative to the original's range
    REGRESSION = "regression"  # mean |error| relative to the original's range
    MASK = "mask"  # IoU of the thresholded masks


#: The thresholds that apply to each kind (besides ``max_mean_abs_error``, which applies to all).
KIND_THRESHOLDS: dict[OutputKind, tuple[str, ...]] = {
    OutputKind.CLASS_SCORES: ("min_top1_agreement", "min_top_k_agreement"),
    OutputKind.MAP: ("min_cosine", "min_snr_db"),
    OutputKind.EMBEDDING: ("min_cosine", "min_snr_db"),
    OutputKind.COORDINATES: ("max_relative_mae",),
    OutputKind.REGRESSION: ("max_relative_mae",),
    OutputKind.MASK: ("min_iou", "mask_threshold"),
}


class OutputSpec(_Strict):
    """``[compression.gate.outputs.<name>]``: one output's kind (inferred when absent) and
    thresholds overriding the gate's defaults for that output."""

    kind: OutputKind | None = None
    min_top1_agreement: float | None = Field(default=None, ge=0.0, le=1.0)
    min_top_k_agreement: float | None = Field(default=None, ge=0.0, le=1.0)
    min_cosine: float | None = Field(default=None, ge=-1.0, le=1.0)
    min_snr_db: float | None = None
    max_relative_mae: float | None = Field(default=None, ge=0.0)
    min_iou: float | None = Field(default=None, ge=0.0, le=1.0)
    mask_threshold: float | None = None  # default 0.5, or the original's median for logits
    max_mean_abs_error: float | None = Field(default=None, ge=0.0)

    @model_validator(mode="after")
    def _thresholds_fit_kind(self) -> OutputSpec:
        if self.kind is not None:
            wrong = misplaced_thresholds(self, self.kind)
            if wrong:
                raise ValueError(f"{', '.join(wrong)} do(es) not apply to kind {self.kind.value} "
                                 f"(it takes {', '.join(KIND_THRESHOLDS[self.kind])}, max_mean_abs_error)")
        return self


def misplaced_thresholds(spec: OutputSpec, kind: OutputKind) -> list[str]:
    """The thresholds set in ``spec`` that do not apply to ``kind``."""
    allowed = {*KIND_THRESHOLDS[kind], "kind", "max_mean_abs_error"}
    return [name for name in spec.model_fields_set if name not in allowed
            and getattr(spec, name) is not None]


class GateConfig(_Strict):
    """The accuracy gate: every output judged by a measure suited to its kind; the labels
    (``eval_y``) belong to the first class_scores output, judged by accuracy drop."""

    enabled: bool = True
    max_accuracy_drop: float = Field(default=1.0, ge=0.0)  # percentage points
    min_top1_agreement: float = Field(default=0.99, ge=0.0, le=1.0)
    top_k: int = Field(default=5, ge=2)
    min_top_k_agreement: float | None = Field(default=None, ge=0.0, le=1.0)
    min_cosine: float = Field(default=0.99, ge=-1.0, le=1.0)
    min_snr_db: float = 20.0
    max_relative_mae: float = Field(default=0.02, ge=0.0)
    min_iou: float = Field(default=0.9, ge=0.0, le=1.0)
    max_mean_abs_error: float | None = Field(default=None, ge=0.0)
    outputs: dict[str, OutputSpec] = Field(default_factory=dict)


class FallbackConfig(_Strict):
    """Keep the most harmful operators in float, one at a time, until the gate holds."""

    enabled: bool = True
    max_float_operators: int = Field(default=8, ge=0)


class InputsConfig(_Strict):
    """``[compression.inputs.<name>]``: what one model input is, where the model does not say
    it (or says it wrong). Unset keys keep what is inferred from the model."""

    dtype: str | None = None  # numpy dtype name: "float32", "int64", "bool", ...
    #: Every dimension: a size, or a name / -1 for a dynamic one.
    shape: list[int | str] | None = None
    #: False: one value shared by every sample (a recurrent state, a sample rate), fed as is.
    per_sample: bool | None = None
    range: tuple[float, float] | None = None  # the (low, high) values the model expects

    @model_validator(mode="after")
    def _valid(self) -> InputsConfig:
        if self.dtype is not None:
            try:
                np.dtype(self.dtype)
            except TypeError:
                raise ValueError(f"unknown dtype {self.dtype!r} (e.g. float32, int64)") from None
        if self.shape is not None and any(isinstance(d, int) and d < -1 for d in self.shape):
            raise ValueError("dimensions are sizes >= 0, or -1 / a name for a dynamic one")
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError(f"range {list(self.range)} needs low < high")
        return self


class CompressionConfig(_Strict):
    mode: Mode = Mode.DYNAMIC_INT8
    #: None: per-channel for static int8, per-tensor (one scale per weight) otherwise.
    per_channel: bool | None = None
    calibration: CalibrationConfig = CalibrationConfig()
    pruning: PruningConfig | None = None
    gate: GateConfig = GateConfig()
    fallback: FallbackConfig = FallbackConfig()
    latency_runs: int = Field(default=100, ge=0)
    #: Evaluate this many samples per call. 1 matches on-device inference: dynamic
    #: quantization derives activation ranges from the whole batch it sees.
    eval_batch_size: int = Field(default=1, gt=0)
    #: The model's inputs by name, where inference from the model is not enough.
    inputs: dict[str, InputsConfig] = Field(default_factory=dict)
    #: Accept a result that is unchanged or larger than the original (refused otherwise).
    allow_no_gain: bool = False

    @property
    def channelwise(self) -> bool:
        """The effective per-channel setting."""
        return self.mode is Mode.STATIC_INT8 if self.per_channel is None else self.per_channel


def load_compression_recipe(source: str | Path | dict[str, Any]) -> CompressionConfig:
    """Read the ``[compression]`` table of a recipe TOML (a path, or an already parsed dict).

    Keys: ``mode``, ``per_channel``, ``latency_runs``, ``allow_no_gain`` and the sub-tables
    ``calibration``, ``pruning``, ``gate``, ``fallback``, ``inputs`` (see docs/compression.md).
    """
    where = "[compression]"
    if isinstance(source, dict):
        document = source
    else:
        path = Path(source)
        where = f"{path}: [compression]"
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read recipe: {exc.strerror}", where=str(path)) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", where=str(path)) from exc
    table = document.get("compression", document if "mode" in document else None)
    if not isinstance(table, dict):
        raise ConfigError("no [compression] table", where=where)
    try:
        return CompressionConfig.model_validate(table)
    except ValidationError as exc:
        key, problem = first_problem(exc)
        raise ConfigError(problem, where=f"{where} {key}",
                          hint=f"{len(exc.errors())} problem(s) in the table") from exc
