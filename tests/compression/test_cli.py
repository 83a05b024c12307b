"""The compress and sample-models commands, through the real ``edgefleet`` entry point."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from edgefleet.cloud.cli import main


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def runner(capsys):
    def invoke(args: list[str]) -> Result:
        capsys.readouterr()
        rc = main(args)
        out = capsys.readouterr()
        return Result(rc, out.out, out.err)
    return invoke


@pytest.fixture()
def model_file(tmp_path, cnn):
    path = tmp_path / "digits-cnn.onnx"
    path.write_bytes(cnn)
    return path


def test_compress_with_builtin_samples_prints_json(runner, model_file, tmp_path, run_model):
    out = tmp_path / "out" / "cnn.tflite"
    result = runner(["compress", str(model_file), "-o", str(out), "--runtime",
                                 "tflite", "--mode", "dynamic_int8", "--samples", "digits",
                                 "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["gate"]["passed"] and report["runtime"] == "tflite"
    assert run_model("tflite", out.read_bytes(),
                     np.zeros((1, 1, 8, 8), np.float32)).shape == (1, 10)


def test_compress_with_recipe_and_npz_prints_table(runner, model_file, tmp_path, samples):
    _, calibration, eval_x, eval_y = samples["cnn"]
    data = tmp_path / "data.npz"
    np.savez(data, calibration=calibration.reshape(len(calibration), -1), eval_x=eval_x,
             eval_y=eval_y)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[compression]\nmode = "fp16"\nlatency_runs = 5\n')
    out = tmp_path / "cnn.fp16.onnx"
    result = runner(["compress", str(model_file), "-o", str(out), "--recipe",
                                 str(recipe), "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert "fp16" in result.stdout and "PASS" in result.stdout
    assert out.exists()


@pytest.mark.parametrize(("args", "code", "text"), [
    (["--samples", "digits", "--sparsity", "0.95", "--pruning", "structured"], 3,
     "accuracy gate"),
    (["--mode", "weight_only_int8", "--samples", "digits"], 2, "not available for ONNX"),
    (["--mode", "static_int8"], 2, "calibration"),
])
def test_errors_are_one_line_without_traceback(runner, model_file, tmp_path, args, code,
                                               text):
    result = runner(["compress", str(model_file), "-o", str(tmp_path / "o.onnx"),
                                 *args])
    assert result.exit_code == code
    assert text in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "o.onnx").exists()


def test_truncated_model_file(runner, model_file, tmp_path):
    model_file.write_bytes(model_file.read_bytes()[:500])
    result = runner(["compress", str(model_file), "-o", str(tmp_path / "o.onnx"),
                                 "--samples", "digits"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: model: not a valid ONNX model")


def test_missing_model_file(runner, tmp_path):
    result = runner(["compress", str(tmp_path / "nope.onnx"), "-o",
                                 str(tmp_path / "o.onnx")])
    assert result.exit_code == 2
    assert "cannot read model" in result.stderr


def test_sample_models_command(runner, tmp_path, run_model):
    result = runner(["sample-models", str(tmp_path), "--tflite"])
    assert result.exit_code == 0, result.output
    for name in ("digits-mlp.onnx", "digits-cnn.onnx", "digits-mlp.tflite", "digits-cnn.tflite"):
        assert (tmp_path / name).stat().st_size > 10_000
