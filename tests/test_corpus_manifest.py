"""The corpus manifest parser and input synthesiser (benchmarks/corpus/manifest.py).

No network and no model files: the manifest is parsed as text, inputs are made from it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "corpus" / "manifest.py"
_SPEC = importlib.util.spec_from_file_location("corpus_manifest", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
manifest = importlib.util.module_from_spec(_SPEC)
sys.modules["corpus_manifest"] = manifest
_SPEC.loader.exec_module(manifest)

_MODEL = """
[[model]]
name = "m"
package = "pkg"
version = "1.0"
path = "pkg/m.onnx"
sha256 = "{digest}"
format = "onnx"
task = "t"
license = "MIT"
traits = ["opset 11"]
[[model.inputs]]
name = "tokens"
dtype = "int32"
shape = [1, 16]
range = [0, 3]
[[model.inputs]]
name = "state"
shape = [2, 1, 8]
per_sample = false
range = [-1.0, 1.0]
[[model.inputs]]
name = "where"
shape = [1, 2]
column_ranges = [[-90.0, 90.0], [1.0, 48.0]]
"""
_DIGEST = "ab" * 32


def _parse(**replace: str) -> list:
    text = _MODEL.format(digest=_DIGEST)
    for old, new in replace.items():
        text = text.replace(old.replace("_", " "), new)
    return manifest.parse_manifest(text)


def test_the_shipped_manifest_has_the_corpus_the_issue_asks_for() -> None:
    entries = manifest.load_manifest()
    assert len(entries) >= 10
    assert {e.format for e in entries} == {"onnx", "tflite"}
    assert len({e.name for e in entries}) == len(entries)
    traits = " ".join(t for e in entries for t in e.traits)
    for trait in ("opset 11", "opset 12", "If", "Constant nodes", "DEQUANTIZE", "no signature_defs",
                  "deprecated_builtin_code", "state"):
        assert trait in traits, trait


def test_parse_reads_every_field() -> None:
    (entry,) = _parse()
    assert (entry.name, entry.package, entry.version, entry.archive, entry.format) == ("m", "pkg", "1.0", "wheel",
                                                                                       "onnx")
    assert entry.file_name == "m.onnx"
    tokens, state, where = entry.inputs
    assert (tokens.dtype, tokens.shape, tokens.per_sample, tokens.range) == ("int32", (1, 16), True, (0.0, 3.0))
    assert (state.per_sample, state.shape) == (False, (2, 1, 8))
    assert where.column_ranges == ((-90.0, 90.0), (1.0, 48.0))


@pytest.mark.parametrize(("old", "new", "message"), [
    ('format = "onnx"', 'format = "pt"', "format 'pt'"),
    (f'sha256 = "{_DIGEST}"', 'sha256 = "xyz"', "sha256"),
    ('shape = [1, 16]', 'shape = [4, 16]', "leading batch dimension of 1"),
    ('range = [0, 3]', 'range = [3, 0]', "low 3 > high 0"),
    ('column_ranges = [[-90.0, 90.0], [1.0, 48.0]]', 'column_ranges = [[-90.0, 90.0]]', "one [low, high] per"),
    ('dtype = "int32"', 'dtype = "complex64"', "dtype 'complex64'"),
    ('license = "MIT"', '', "license is required"),
])
def test_parse_refuses_a_bad_entry_naming_model_and_key(old: str, new: str, message: str) -> None:
    text = _MODEL.format(digest=_DIGEST).replace(old, new)
    with pytest.raises(manifest.ManifestError, match=r"model #1 'm'.*" + message.replace("[", r"\[")):
        manifest.parse_manifest(text)


def test_output_kinds_declare_what_inference_cannot_tell() -> None:
    text = _MODEL.format(digest=_DIGEST).replace('traits = ["opset 11"]',
                                                  'traits = ["opset 11"]\noutput_kinds = { logits = "class_scores" }')
    (entry,) = manifest.parse_manifest(text)
    assert entry.output_kinds == (("logits", "class_scores"),)
    with pytest.raises(manifest.ManifestError, match="output_kinds"):
        manifest.parse_manifest(text.replace('"class_scores"', '"probabilities"'))


def test_parse_refuses_repeated_names_and_empty_manifests() -> None:
    one = _MODEL.format(digest=_DIGEST)
    with pytest.raises(manifest.ManifestError, match="repeats"):
        manifest.parse_manifest(one + one)
    with pytest.raises(manifest.ManifestError, match=r"no \[\[model\]\]"):
        manifest.parse_manifest("title = 'x'")


def test_synthesised_inputs_follow_the_description() -> None:
    (entry,) = _parse()
    arrays = manifest.synthesise_inputs(entry, 5, seed=0)
    tokens, state, where = arrays["tokens"], arrays["state"], arrays["where"]
    assert tokens.shape == (5, 16) and tokens.dtype == np.int32
    assert set(np.unique(tokens)) == {0, 1, 2, 3}  # every value of the inclusive range
    assert state.shape == (2, 1, 8) and state.dtype == np.float32  # shared: exactly its shape
    assert state.min() >= -1.0 and state.max() <= 1.0
    assert where.shape == (5, 2)
    assert np.all(np.abs(where[:, 0]) <= 90.0) and np.all((where[:, 1] >= 1.0) & (where[:, 1] <= 48.0))
    assert where[:, 0].std() > where[:, 1].std()  # each column drawn in its own range
    again = manifest.synthesise_inputs(entry, 5, seed=0)
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)
    assert not np.array_equal(manifest.synthesise_inputs(entry, 5, seed=1)["state"], state)


def test_cache_dir_is_outside_the_repository_unless_told(tmp_path) -> None:
    assert manifest.cache_dir({"EDGEFLEET_CORPUS_DIR": str(tmp_path / "corpus")}) == tmp_path / "corpus"
    default = manifest.cache_dir({})
    assert default == Path("~/.cache/edgefleet-corpus").expanduser()
    assert _PATH.parents[2] not in default.parents
