"""The contract between the controller's retraining job and a training entry point (docs/retraining.md).

The job writes a work directory (``reference.npz``, ``captured.npz``, the parent model and
``request.json``) and runs the entry point in a subprocess: a callable ``package.module:function`` is
called as ``fn(request)`` with the :class:`TrainingRequest` read from ``request.json``; a command
gets the path of ``request.json`` as its last argument. Either writes the new model to
``request.output``. This module is all both sides share: the dataclass and its JSON form.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgefleet.protocol.errors import ConfigError
from edgefleet.protocol.files import atomic_write
from edgefleet.protocol.vocabulary import Runtime

SCHEMA_VERSION = 1
REQUEST_FILE = "request.json"


@dataclass(frozen=True)
class TrainingRequest:
    """What a training entry point is asked to do. Paths are absolute.

    ``reference`` is an ``.npz`` with ``x`` (inputs, samples first) and ``y`` (integer labels, -1:
    unlabelled); ``captured`` an ``.npz`` with one ``input:<name>`` array per model input and
    ``label`` (-1: unlabelled), empty when no samples were captured; ``parent`` the model file of the
    version being retrained (``format``: ``onnx`` or ``tflite``). The entry point writes a model of
    the same format, with the same inputs, to ``output``."""

    model: str
    parent_version: str
    format: str
    job_id: int
    incident_id: str | None
    reference_dataset: str
    """sha256 of the model's reference dataset (``PUT /api/v1/models/{name}/dataset``)."""
    captured_datasets: list[int]
    """Ids of the captured datasets in ``captured`` (``GET /api/v1/captures/{id}``)."""
    work_dir: str
    reference: str
    captured: str
    parent: str
    output: str
    schema_version: int = field(default=SCHEMA_VERSION)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    def save(self, path: str | Path) -> Path:
        return atomic_write(path, self.to_json())

    @classmethod
    def from_json(cls, raw: bytes | str, *, where: str = REQUEST_FILE) -> TrainingRequest:
        """Parse and check a request; :class:`ConfigError` naming the key otherwise."""
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"not valid JSON: {exc}", where=where) from None
        if not isinstance(data, dict):
            raise ConfigError("a training request is a JSON object", where=where)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown keys {unknown}", where=where)
        if data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise ConfigError(f"schema_version {data['schema_version']!r} is not {SCHEMA_VERSION}",
                              where=f"{where}: schema_version", hint="run the entry point with this EdgeFleet's runner")
        for name, check in _CHECKS.items():
            if name not in data:
                raise ConfigError("missing", where=f"{where}: {name}")
            if not check(data[name]):
                raise ConfigError(f"invalid value {data[name]!r}", where=f"{where}: {name}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> TrainingRequest:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the training request: {exc.strerror}", where=str(path)) from None
        return cls.from_json(raw, where=str(path))


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


_CHECKS: dict[str, Any] = {
    "model": _text, "parent_version": _text, "format": lambda v: v in set(Runtime),
    "job_id": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "incident_id": lambda v: v is None or _text(v), "reference_dataset": _text,
    "captured_datasets": lambda v: isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                                               for i in v),
    "work_dir": _text, "reference": _text, "captured": _text, "parent": _text, "output": _text,
}
