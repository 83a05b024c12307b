"""``edgefleet compress`` and ``edgefleet sample-models``: compress a model file locally (gated),
and write the project's sample models. The compression stack (onnx, ONNX Runtime, LiteRT) is
imported when a command runs, not when the CLI starts."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgefleet.cloud.cli.native_logs import quiet_native_logs
from edgefleet.compression.modes import Mode, PruningKind, PruningScope
from edgefleet.protocol.errors import AccuracyGateError, ConfigError
from edgefleet.protocol.files import atomic_write
from edgefleet.protocol.vocabulary import Runtime

if TYPE_CHECKING:
    import numpy as np

    from edgefleet.compression.config import CompressionConfig
    from edgefleet.compression.inputs import Inputs


class Samples(StrEnum):
    DIGITS = "digits"


def _load_data(samples: Samples | None, data: Path | None, model: bytes,
               config: CompressionConfig) -> tuple[Inputs | None, Inputs | None, np.ndarray | None]:
    """Calibration, evaluation inputs and labels from ``--samples`` or ``--data``, checked
    against the model's inputs (inferred, with the recipe's ``[compression.inputs]``)."""
    from edgefleet.compression.inputs import (
        fit_rows,
        infer_input_specs,
        load_npz_inputs,
        normalise_inputs,
        resolve_specs,
    )

    if samples is not None and data is not None:
        raise ConfigError("use either --samples or --data", where="--data")
    if samples is None and data is None:
        return None, None, None
    specs = resolve_specs(infer_input_specs(model), config.inputs)
    if data is not None:
        loaded = load_npz_inputs(data, specs)
        return loaded.calibration, loaded.eval_x, loaded.eval_y
    from edgefleet.compression.samples import load_digits_split

    split = load_digits_split()
    first = specs[0]
    return (normalise_inputs(fit_rows(split.x_train, first), "--samples", specs),
            normalise_inputs(fit_rows(split.x_test, first), "--samples", specs), split.y_test)


def _config(recipe: Path | None, mode: Mode | None, sparsity: float | None,
            pruning: PruningKind, scope: PruningScope, max_drop: float | None,
            min_agreement: float | None, no_gate: bool, allow_no_gain: bool = False) -> CompressionConfig:
    from edgefleet.compression.config import CompressionConfig, GateConfig, PruningConfig, load_compression_recipe

    config = load_compression_recipe(recipe) if recipe is not None else CompressionConfig()
    updates: dict[str, Any] = {}
    if mode is not None:
        updates["mode"] = mode
    if allow_no_gain:
        updates["allow_no_gain"] = True
    if sparsity is not None:
        updates["pruning"] = PruningConfig(kind=pruning, sparsity=sparsity, scope=scope)
    gate = config.gate.model_dump()
    if max_drop is not None:
        gate["max_accuracy_drop"] = max_drop
    if min_agreement is not None:
        gate["min_top1_agreement"] = min_agreement
    if no_gate:
        gate["enabled"] = False
    updates["gate"] = GateConfig.model_validate(gate)
    return CompressionConfig.model_validate({**config.model_dump(), **updates})


def register(app: typer.Typer) -> None:
    """Add ``compress`` and ``sample-models`` to the main ``edgefleet`` CLI."""

    @app.command("compress")
    def compress_command(
        model: Annotated[Path, typer.Argument(help="ONNX or TFLite model file")],
        output: Annotated[Path, typer.Option("--output", "-o", help="where to write the result")],
        runtime: Annotated[Runtime, typer.Option(help="target runtime")] = Runtime.ONNX,
        recipe: Annotated[Path | None, typer.Option(
            help="recipe TOML with a [compression] table")] = None,
        mode: Annotated[Mode | None, typer.Option(help="overrides the recipe's mode")] = None,
        sparsity: Annotated[float | None, typer.Option(
            min=0.0, max=0.99, help="prune to this sparsity first")] = None,
        pruning: Annotated[PruningKind, typer.Option(help="pruning kind")] = PruningKind.UNSTRUCTURED,
        scope: Annotated[PruningScope, typer.Option(help="pruning scope")] = PruningScope.GLOBAL,
        max_drop: Annotated[float | None, typer.Option(
            help="gate: max accuracy drop in points")] = None,
        min_agreement: Annotated[float | None, typer.Option(
            help="gate: min top-1 agreement (0-1) without labels")] = None,
        no_gate: Annotated[bool, typer.Option("--no-gate", help="report only, never refuse")] = False,
        samples: Annotated[Samples | None, typer.Option(
            help="built-in calibration/evaluation data")] = None,
        data: Annotated[Path | None, typer.Option(
            help=".npz with every model input by name (calibration/<input>, eval_x/<input> for one "
                 "role only) and eval_y labels")] = None,
        allow_no_gain: Annotated[bool, typer.Option(
            "--allow-no-gain", help="accept a result that is unchanged or larger")] = False,
        report_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    ) -> None:
        """Quantize/prune a model, evaluate it and refuse it if it fails the accuracy gate."""
        from edgefleet.compression.api import compress

        try:
            source = model.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read model: {exc.strerror}", where=str(model)) from None
        config = _config(recipe, mode, sparsity, pruning, scope, max_drop, min_agreement, no_gate,
                         allow_no_gain)
        calibration, eval_x, eval_y = _load_data(samples, data, source, config)
        try:
            with quiet_native_logs():
                result = compress(source, runtime, config, calibration=calibration, eval_x=eval_x,
                                  eval_y=eval_y)
        except AccuracyGateError as exc:  # the report says why; the error line follows on stderr
            if report_json and exc.report is not None:
                typer.echo(json.dumps(exc.report, indent=2))
            raise
        atomic_write(output, result.model)
        if report_json:
            typer.echo(json.dumps(result.report.model_dump(mode="json"), indent=2))
        else:
            typer.echo(result.report.to_table())
            typer.echo(f"wrote {output} ({len(result.model):,} bytes)")

    @app.command("sample-models")
    def sample_models_command(
        directory: Annotated[Path, typer.Argument(help="where to write the sample models")],
        tflite: Annotated[bool, typer.Option(help="also write TFLite exports")] = False,
        seed: Annotated[int, typer.Option(help="training seed")] = 0,
    ) -> None:
        """Train the digits MLP and CNN and write them as ONNX (and TFLite)."""
        from edgefleet.compression.onnx_to_tflite import export_tflite
        from edgefleet.compression.samples import load_digits_split, train_cnn, train_mlp

        split = load_digits_split(seed)
        for name, model in (("digits-mlp", train_mlp(split, seed)), ("digits-cnn", train_cnn(split, seed))):
            atomic_write(directory / f"{name}.onnx", model)
            typer.echo(f"wrote {directory / f'{name}.onnx'}")
            if tflite:
                with quiet_native_logs():
                    exported = export_tflite(model)
                atomic_write(directory / f"{name}.tflite", exported)
                typer.echo(f"wrote {directory / f'{name}.tflite'}")
