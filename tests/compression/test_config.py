"""Typed configuration and the [compression] table of recipe TOMLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.compression import (
    CalibrationMethod,
    CompressionConfig,
    Mode,
    PruningKind,
    compress,
    load_compression_recipe,
)
from edgefleet.protocol.errors import ConfigError

RECIPES = Path(__file__).resolve().parents[2] / "firmware-bundles"


def test_shipped_recipes_load():
    mlp = load_compression_recipe(RECIPES / "digits-mlp.toml")
    assert mlp.mode is Mode.STATIC_INT8
    assert mlp.pruning.kind is PruningKind.UNSTRUCTURED and mlp.pruning.sparsity == 0.75
    cnn = load_compression_recipe(RECIPES / "digits-cnn.toml")
    assert cnn.calibration.method is CalibrationMethod.PERCENTILE


@pytest.mark.parametrize(("name", "runtime"), [("mlp", "onnx"), ("cnn", "onnx"), ("mlp", "tflite")])
def test_shipped_recipes_compress_the_samples(samples, name, runtime):
    model, calibration, eval_x, eval_y = samples[name]
    config = load_compression_recipe(RECIPES / f"digits-{name}.toml").model_copy(
        update={"latency_runs": 0})
    if runtime == "tflite":
        config = config.model_copy(update={"calibration": config.calibration.model_copy(
            update={"method": CalibrationMethod.MINMAX})})
    result = compress(model, runtime, config, calibration=calibration, eval_x=eval_x,
                      eval_y=eval_y)
    assert result.report.gate.passed


def test_recipe_from_dict_and_defaults():
    config = load_compression_recipe({"compression": {"mode": "fp16"}})
    assert config.mode is Mode.FP16
    assert config.gate.max_accuracy_drop == 1.0
    assert config.gate.min_top1_agreement == 0.99
    assert load_compression_recipe({"bundle": {}, "compression": {}}) == CompressionConfig()


@pytest.mark.parametrize(("table", "key"), [
    ({"mode": "int3"}, "mode"),
    ({"gate": {"max_accuracy_drop": "one"}}, "gate.max_accuracy_drop"),
    ({"pruning": {"sparsity": 1.5}}, "pruning.sparsity"),
    ({"calibration": {"methd": "minmax"}}, "calibration.methd"),
])
def test_bad_values_name_the_key(table, key):
    with pytest.raises(ConfigError) as info:
        load_compression_recipe({"compression": table})
    assert key in info.value.where


def test_missing_table_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="no \\[compression\\] table"):
        load_compression_recipe({"bundle": {"name": "x"}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[compression\nmode = 1")
    with pytest.raises(ConfigError, match="TOML"):
        load_compression_recipe(bad)
    with pytest.raises(ConfigError):
        load_compression_recipe(tmp_path / "missing.toml")

