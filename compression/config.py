"""Typed compression configuration and the ``[compression]`` table of a recipe TOML."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.compression.modes import CalibrationMethod, Mode, PruningKind, PruningScope
from edgefleet.protocol.errors import ConfigError, first_problem

__all__ = ["CalibrationConfig", "CalibrationMethod", "CompressionConfig", "FallbackConfig", "GateConfig", "Mode",
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


class GateConfig(_Strict):
    """The accuracy gate. With labels: accuracy drop in points; without: top-1 agreement."""

    enabled: bool = True
    max_accuracy_drop: float = Field(default=1.0, ge=0.0)  # percentage points
    min_top1_agreement: float = Field(default=0.99, ge=0.0, le=1.0)
    max_mean_abs_error: float | None = Field(default=None, ge=0.0)


class FallbackConfig(_Strict):
    """Keep the most harmful operators in float, one at a time, until the gate holds."""

    enabled: bool = True
    max_float_operators: int = Field(default=8, ge=0)


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

    @property
    def channelwise(self) -> bool:
        """The effective per-channel setting."""
        return self.mode is Mode.STATIC_INT8 if self.per_channel is None else self.per_channel


def load_compression_recipe(source: str | Path | dict[str, Any]) -> CompressionConfig:
    """Read the ``[compression]`` table of a recipe TOML (a path, or an already parsed dict).

    Keys: ``mode``, ``per_channel``, ``latency_runs`` and the sub-tables ``calibration``,
    ``pruning``, ``gate``, ``fallback`` (see docs/compression.md).
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
