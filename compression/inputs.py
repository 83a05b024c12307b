"""Model inputs for calibration and evaluation: one array, or one array per model input.

A single array feeds the model's first input; a mapping feeds inputs by name (models with
several inputs). All arrays share the leading sample dimension.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgefleet.protocol.errors import ConfigError

Inputs = np.ndarray | Mapping[str, np.ndarray]


def normalise_inputs(inputs: Inputs | None, what: str) -> Inputs | None:
    """Float32 arrays with one sample count; :class:`ConfigError` when empty or ragged."""
    if inputs is None:
        return None
    if isinstance(inputs, Mapping):
        if not inputs:
            raise ConfigError(f"{what} has no arrays", where=what)
        arrays = {name: np.asarray(a).astype(np.float32, copy=False) for name, a in inputs.items()}
        counts = {len(a) for a in arrays.values()}
        if len(counts) != 1:
            raise ConfigError(f"{what} arrays have different sample counts {sorted(counts)}",
                              where=what)
        if counts == {0}:
            raise ConfigError(f"{what} is empty", where=what)
        return arrays
    array = np.asarray(inputs)
    if array.size == 0:
        raise ConfigError(f"{what} is empty", where=what)
    return array.astype(np.float32, copy=False)


def count(inputs: Inputs) -> int:
    if isinstance(inputs, Mapping):
        return len(next(iter(inputs.values())))
    return len(inputs)


def take(inputs: Inputs, start: int, stop: int) -> Inputs:
    """Samples ``start:stop`` (contiguous float32 copies of just that slice)."""
    if isinstance(inputs, Mapping):
        return {name: np.ascontiguousarray(a[start:stop], dtype=np.float32)
                for name, a in inputs.items()}
    return np.ascontiguousarray(inputs[start:stop], dtype=np.float32)


def feed(inputs: Inputs, first_input: str) -> dict[str, np.ndarray]:
    """The runtime feed: a mapping as is, a single array for ``first_input``."""
    return dict(inputs) if isinstance(inputs, Mapping) else {first_input: inputs}
