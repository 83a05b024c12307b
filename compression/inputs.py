"""Model inputs for calibration and evaluation, described once and fed the way the model takes them.

An :class:`InputSpec` says what one input is: name, dtype, shape (dynamic dimensions as a name or
None), whether it is **per sample** (sliced along the first axis, like a batch of images) or
**shared** by every sample (a recurrent state, a sample rate: fed as is), and optionally the range
of values the model expects. :func:`infer_input_specs` reads the specs from an ONNX or TFLite
model; ``[compression.inputs.<name>]`` overrides them (:func:`resolve_specs`).

Data comes as one array (the model's only input) or a mapping by input name, e.g. an ``.npz``
with every input (:func:`load_npz_inputs`). :func:`normalise_inputs` checks it against the specs
and returns an :class:`InputSet` (a mapping that knows which inputs are shared), keeping each
input's dtype; :func:`take` slices per-sample inputs only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from ai_edge_litert import schema_py_generated as tfl

from edgefleet.compression.config import InputsConfig
from edgefleet.compression.onnx_graph import parse_onnx
from edgefleet.compression.tflite_graph import is_tflite, load_tflite
from edgefleet.protocol.errors import ConfigError

Inputs = np.ndarray | Mapping[str, np.ndarray]
#: One dimension: a fixed size, or a dynamic one (its symbolic name, or None when unnamed).
Dim = int | str | None

#: The keys of the legacy ``.npz`` layout (one array per role, for single-input models).
_LEGACY_KEYS = ("calibration", "eval_x")
_LABELS = "eval_y"
_TFLITE_DTYPES = {value: name.lower() for name, value in vars(tfl.TensorType).items() if not name.startswith("_")}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[Dim, ...]
    per_sample: bool = True
    range: tuple[float, float] | None = None

    def fits(self, array: np.ndarray) -> bool:
        """Whether ``array`` matches the rank and every fixed dimension. A per-sample array's
        first axis counts samples and is not compared."""
        if array.ndim != len(self.shape):
            return False
        skip = 1 if self.per_sample else 0
        return all(not isinstance(d, int) or d == a
                   for d, a in zip(self.shape[skip:], array.shape[skip:], strict=True))

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} {self.dtype} [{dims}] ({'per sample' if self.per_sample else 'shared'})"


def _is_per_sample(shape: tuple[Dim, ...]) -> bool:
    """The default: inputs whose first dimension is dynamic or 1 carry samples; scalars and
    inputs with a fixed first dimension above 1 (e.g. a state ``[2, 1, 64]``) are shared."""
    return len(shape) > 0 and (not isinstance(shape[0], int) or shape[0] == 1)


def _spec(name: str, dtype: str, shape: tuple[Dim, ...]) -> InputSpec:
    return InputSpec(name, dtype, shape, per_sample=_is_per_sample(shape))


def onnx_input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs that are not initializers. A dimension without a value (or 0) is dynamic."""
    initialised = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initialised:
            continue
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "float32"
        shape: tuple[Dim, ...] = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0
            else (d.dim_param or None) for d in tensor.shape.dim)
        specs.append(_spec(value.name, dtype, shape))
    return specs


def _tflite_input_specs(data: bytes) -> list[InputSpec]:
    subgraph = load_tflite(data).subgraphs[0]
    specs = []
    for index in subgraph.inputs if subgraph.inputs is not None else []:
        tensor = subgraph.tensors[index]
        dims = tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape
        shape = tuple(None if int(d) < 0 else int(d) for d in (dims if dims is not None else []))
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        specs.append(_spec(name, _TFLITE_DTYPES.get(tensor.type, "float32"), shape))
    return specs


def infer_input_specs(model: bytes) -> list[InputSpec]:
    """The inputs of an ONNX or TFLite model; :class:`CompressionError` when it does not parse."""
    if is_tflite(model):
        return _tflite_input_specs(model)
    return onnx_input_specs(parse_onnx(model))


def resolve_specs(specs: list[InputSpec], overrides: Mapping[str, InputsConfig]) -> list[InputSpec]:
    """``specs`` with the recipe's ``[compression.inputs.<name>]`` applied; an override for an
    input the model does not have is a :class:`ConfigError`."""
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(overrides) - set(by_name))
    if unknown:
        raise ConfigError(f"the model has no input {unknown[0]!r}", where=f"[compression.inputs.{unknown[0]}]",
                          hint="model inputs: " + ", ".join(by_name))
    resolved = []
    for spec in specs:
        override = overrides.get(spec.name)
        if override is not None:
            shape = spec.shape if override.shape is None else tuple(
                d if isinstance(d, str) else (None if d in (-1, 0) else d) for d in override.shape)
            spec = replace(spec, dtype=override.dtype or spec.dtype, shape=shape,
                           per_sample=(_is_per_sample(shape) if override.per_sample is None
                                       else override.per_sample),
                           range=override.range or spec.range)
        resolved.append(spec)
    return resolved


class InputSet(Mapping[str, np.ndarray]):
    """Arrays by input name; ``shared`` names the inputs fed as is to every batch."""

    def __init__(self, arrays: Mapping[str, np.ndarray], shared: Iterable[str] = ()) -> None:
        self._arrays = dict(arrays)
        self.shared = frozenset(shared) & set(self._arrays)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __repr__(self) -> str:
        return f"InputSet({ {k: list(v.shape) for k, v in self._arrays.items()} }, shared={sorted(self.shared)})"


def _is_shared(inputs: Mapping[str, np.ndarray], name: str) -> bool:
    if isinstance(inputs, InputSet):
        return name in inputs.shared
    return np.ndim(inputs[name]) == 0


def count(inputs: Inputs) -> int:
    """The number of samples (1 when every input is shared)."""
    if isinstance(inputs, Mapping):
        return next((len(a) for name, a in inputs.items() if not _is_shared(inputs, name)), 1)
    return len(inputs)


def take(inputs: Inputs, start: int, stop: int) -> Inputs:
    """Samples ``start:stop`` (contiguous copies of just that slice, dtypes kept); shared
    inputs as they are."""
    if isinstance(inputs, Mapping):
        arrays = {name: a if _is_shared(inputs, name) else np.ascontiguousarray(a[start:stop])
                  for name, a in inputs.items()}
        return InputSet(arrays, inputs.shared if isinstance(inputs, InputSet)
                        else [n for n in inputs if _is_shared(inputs, n)])
    return np.ascontiguousarray(inputs[start:stop])


def feed(inputs: Inputs, first_input: str) -> dict[str, np.ndarray]:
    """The runtime feed: a mapping as is, a single array for ``first_input``."""
    return dict(inputs) if isinstance(inputs, Mapping) else {first_input: inputs}


def _as_dtype(array: np.ndarray, dtype: str | None) -> np.ndarray:
    if dtype is not None:
        return array.astype(dtype, copy=False)
    return array.astype(np.float32, copy=False) if np.issubdtype(array.dtype, np.floating) else array


def _check(spec: InputSpec, array: np.ndarray, what: str) -> None:
    where = f"{what}.{spec.name}"
    if not spec.fits(array):
        expected = [d if isinstance(d, int) else "?" for d in spec.shape]
        if spec.per_sample:
            got = f"samples of shape {list(array.shape[1:])} (array {list(array.shape)})"
            expected_text = f"[N, {', '.join(map(str, expected[1:]))}]" if expected else "[N]"
        else:
            got = f"an array of shape {list(array.shape)}"
            expected_text = str(expected)
        raise ConfigError(f"{got} does not fit input {spec.describe()}: expected {expected_text}", where=where,
                          hint=f"reshape the data, or declare the input in [compression.inputs.{spec.name}]")
    if spec.range is not None and array.size and np.issubdtype(array.dtype, np.number):
        low, high = float(array.min()), float(array.max())
        lo, hi = spec.range
        slack = 1e-6 * max(abs(lo), abs(hi), 1.0)
        if low < lo - slack or high > hi + slack:
            raise ConfigError(f"values in [{low:g}, {high:g}] outside the declared range [{lo:g}, {hi:g}]",
                              where=where, hint=f"scale the data as the model expects, or fix "
                                                f"[compression.inputs.{spec.name}] range")


def _normalise_mapping(inputs: Mapping[str, np.ndarray], what: str,
                       specs: list[InputSpec] | None) -> InputSet:
    if not inputs:
        raise ConfigError(f"{what} has no arrays", where=what)
    by_name = {s.name: s for s in specs or []}
    if specs is not None:
        unknown = sorted(set(inputs) - set(by_name))
        missing = [s.name for s in specs if s.name not in inputs]
        if unknown or missing:
            problem = f"no input {unknown[0]!r}" if unknown else f"input {missing[0]!r} is missing"
            raise ConfigError(f"{what}: {problem}", where=what,
                              hint="give every model input by name: " + "; ".join(s.describe() for s in specs))
    arrays = {}
    for name, value in inputs.items():
        spec = by_name.get(name)
        arrays[name] = _as_dtype(np.asarray(value), spec.dtype if spec else None)
        if spec is not None:
            _check(spec, arrays[name], what)
    shared = [n for n in arrays if (not by_name[n].per_sample if n in by_name else arrays[n].ndim == 0)]
    counts = {len(a) for n, a in arrays.items() if n not in shared}
    if len(counts) > 1:
        raise ConfigError(f"{what} arrays have different sample counts {sorted(counts)}", where=what,
                          hint="inputs shared by every sample (a state, a sample rate) need "
                               "per_sample = false in [compression.inputs.<name>]")
    if counts == {0} or any(a.size == 0 for a in arrays.values()):
        raise ConfigError(f"{what} is empty", where=what)
    return InputSet(arrays, shared)


def normalise_inputs(inputs: Inputs | None, what: str,
                     specs: list[InputSpec] | None = None) -> Inputs | None:
    """Arrays checked against ``specs`` (when given) and cast to their dtypes (without specs:
    floats to float32, other dtypes kept); :class:`ConfigError` when empty, ragged, misshapen
    or incomplete. A mapping becomes an :class:`InputSet`; a single array stays an array (it
    feeds the model's only input)."""
    if inputs is None:
        return None
    if isinstance(inputs, Mapping):
        return _normalise_mapping(inputs, what, specs)
    if specs is not None and len(specs) > 1:
        raise ConfigError(f"the model has {len(specs)} inputs; {what} is one array", where=what,
                          hint="give every input by name (a mapping, or an .npz with --data): "
                               + "; ".join(s.describe() for s in specs))
    array = np.asarray(inputs)
    if array.size == 0:
        raise ConfigError(f"{what} is empty", where=what)
    if specs and not specs[0].per_sample:
        return _normalise_mapping({specs[0].name: array}, what, specs)
    array = _as_dtype(array, specs[0].dtype if specs else None)
    if specs:
        _check(specs[0], array, what)
    return array


def fit_rows(array: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Flat sample rows ``[N, k]`` reshaped to a per-sample input whose other dimensions are all
    fixed and hold ``k`` values (e.g. ``[N, 64]`` for ``[N, 1, 8, 8]``); anything else as is."""
    dims = spec.shape[1:]
    if (spec.per_sample and dims and not spec.fits(array) and array.ndim >= 1
            and all(isinstance(d, int) for d in dims)
            and int(np.prod([d for d in dims if isinstance(d, int)])) == int(np.prod(array.shape[1:]))):
        return array.reshape(-1, *[d for d in dims if isinstance(d, int)])
    return array


@dataclass(frozen=True)
class NpzInputs:
    """What an ``.npz`` holds: calibration and evaluation inputs, and labels."""

    calibration: Inputs | None
    eval_x: Inputs | None
    eval_y: np.ndarray | None


def _split_npz(arrays: dict[str, np.ndarray], specs: list[InputSpec],
               where: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    names = {s.name for s in specs}
    both: dict[str, np.ndarray] = {}
    calibration: dict[str, np.ndarray] = {}
    eval_x: dict[str, np.ndarray] = {}
    for key, array in arrays.items():
        role, _, name = key.partition("/")
        if name and role in _LEGACY_KEYS and name in names:
            (calibration if role == "calibration" else eval_x)[name] = array
        elif key in names:
            both[key] = array
        else:
            raise ConfigError(f"array {key!r} is no input of the model", where=where,
                              hint="name arrays after the model's inputs (" + ", ".join(sorted(names))
                                   + "), optionally as calibration/<input> and eval_x/<input>; "
                                     "labels as eval_y")
    return {**both, **calibration}, {**both, **eval_x}


def load_npz_inputs(path: str | Path, specs: list[InputSpec]) -> NpzInputs:
    """Read calibration/evaluation data from an ``.npz``.

    Arrays named after the model's inputs (scalars and states included) serve both calibration
    and evaluation; ``calibration/<input>`` and ``eval_x/<input>`` serve one of them; ``eval_y``
    holds labels. The older layout (``calibration``, ``eval_x`` arrays for a single-input model,
    flat rows reshaped to the input) is still read.
    """
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read samples: {exc}", where=where,
                          hint="an .npz with the model's inputs by name (and eval_y labels)") from exc
    labels = arrays.pop(_LABELS, None)
    names = {s.name for s in specs}
    if len(specs) == 1 and set(arrays) <= set(_LEGACY_KEYS) and not set(arrays) & names:
        spec = specs[0]
        legacy = {role: normalise_inputs(fit_rows(arrays[role], spec), f"{where}: {role}", specs)
                  for role in arrays}
        return NpzInputs(legacy.get("calibration"), legacy.get("eval_x"), labels)
    calibration, eval_x = _split_npz(arrays, specs, where)
    return NpzInputs(normalise_inputs(calibration, f"{where}: calibration", specs) if calibration else None,
                     normalise_inputs(eval_x, f"{where}: eval_x", specs) if eval_x else None, labels)


def fixed_batch(specs: list[InputSpec]) -> int | None:
    """The batch size the model's per-sample inputs fix (their first dimension), if any."""
    sizes = [s.shape[0] for s in specs if s.per_sample and s.shape and isinstance(s.shape[0], int)]
    return min(sizes) if sizes else None


def data_shapes(specs: list[InputSpec], data: Iterable[Inputs | None],
                batch: int | None) -> dict[str, tuple[int | None, ...]]:
    """Each input's shape with its dynamic dimensions as the data has them (``data``: the
    calibration and evaluation sets; a dimension they disagree on stays dynamic, None); the
    first dimension of a per-sample input is ``batch`` (None: left dynamic). Only the inputs with
    at least one dimension fixed this way are returned."""
    sets = [d for d in data if d is not None]
    shapes: dict[str, tuple[int | None, ...]] = {}
    for position, spec in enumerate(specs):
        arrays = [np.asarray(d[spec.name]) if isinstance(d, Mapping) else np.asarray(d) for d in sets
                  if (spec.name in d if isinstance(d, Mapping) else position == 0)]
        dims: list[int | None] = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                dims.append(dim)
            elif axis == 0 and spec.per_sample:
                dims.append(batch)
            else:
                seen = {a.shape[axis] for a in arrays if a.ndim == len(spec.shape)}
                dims.append(seen.pop() if len(seen) == 1 else None)
        if any(d is not None and not isinstance(s, int) for d, s in zip(dims, spec.shape, strict=True)):
            shapes[spec.name] = tuple(dims)
    return shapes
