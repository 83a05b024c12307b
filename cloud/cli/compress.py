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


class Samples(StrEnum):
    DIGITS = "digits"


def _input_shape(model: bytes) -> list[int]:
    """The first input's shape without the batch dimension (ONNX or TFLite)."""
    from edgefleet.compression.tflite_graph import is_tflite, load_tflite

    if is_tflite(model):
        parsed = load_tflite(model)
        subgraph = parsed.subgraphs[0]
        return [int(d) for d in subgraph.tensors[subgraph.inputs[0]].shape[1:]]
    from edgefleet.compression.onnx_graph import load_onnx

    graph = load_onnx(model).graph
    inits = {t.name for t in graph.initializer}
    first = next(i for i in graph.input if i.name not in inits)
    return [d.dim_value for d in first.type.tensor_type.shape.dim[1:]]


def _fit(x: np.ndarray | None, shape: list[int], where: str) -> np.ndarray | None:
    import numpy as np

    if x is None:
        return None
    if shape and all(shape) and int(np.prod(shape)) == int(np.prod(x.shape[1:])):
        return x.reshape(-1, *shape)
    if list(x.shape[1:]) != shape:
        raise ConfigError(f"samples of shape {list(x.shape[1:])} do not fit the model input "
                          f"{shape}", where=where)
    return x


def _load_data(samples: Samples | None, data: Path | None,
               model: bytes) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    import numpy as np

    if samples is not None and data is not None:
        raise ConfigError("use either --samples or --data", where="--data")
    shape = _input_shape(model)
    if samples is Samples.DIGITS:
        from edgefleet.compression.samples import load_digits_split

        split = load_digits_split()
        return (_fit(split.x_train, shape, "--samples"), _fit(split.x_test, shape, "--samples"),
                split.y_test)
    if data is not None:
        try:
            with np.load(data, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read samples: {exc}", where=str(data),
                              hint="an .npz with calibration, eval_x and/or eval_y") from exc
        unknown = set(arrays) - {"calibration", "eval_x", "eval_y"}
        if unknown:
            raise ConfigError(f"unknown arrays {sorted(unknown)}", where=str(data),
                              hint="expected calibration, eval_x, eval_y")
        return (_fit(arrays.get("calibration"), shape, str(data)),
                _fit(arrays.get("eval_x"), shape, str(data)), arrays.get("eval_y"))
    return None, None, None


def _config(recipe: Path | None, mode: Mode | None, sparsity: float | None,
            pruning: PruningKind, scope: PruningScope, max_drop: float | None,
            min_agreement: float | None, no_gate: bool) -> CompressionConfig:
    from edgefleet.compression.config import CompressionConfig, GateConfig, PruningConfig, load_compression_recipe

    config = load_compression_recipe(recipe) if recipe is not None else CompressionConfig()
    updates: dict[str, Any] = {}
    if mode is not None:
        updates["mode"] = mode
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
            help=".npz with calibration, eval_x, eval_y arrays")] = None,
        report_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    ) -> None:
        """Quantize/prune a model, evaluate it and refuse it if it fails the accuracy gate."""
        from edgefleet.compression.api import compress

        try:
            source = model.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read model: {exc.strerror}", where=str(model)) from None
        config = _config(recipe, mode, sparsity, pruning, scope, max_drop, min_agreement, no_gate)
        calibration, eval_x, eval_y = _load_data(samples, data, source)
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
