"""A model's recipe, stored on the controller (docs/retraining.md, "The recipe"): the ``[training]``
table (the entry point that retrains it, its limits, whether an incident retrains it automatically),
the ``[compression]`` table (as :mod:`edgefleet.compression.config` reads it) and the bundle tables
(``[bundle]``, ``[target]``, ``[smoke_test]``... as :func:`edgefleet.protocol.bundle.parse_recipe`
reads them) — the same TOML as a file in ``firmware-bundles/``.

Every table is validated when the recipe is stored; an error names the key (``training.timeout_s``).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlmodel import Session

from edgefleet.cloud.services import audit
from edgefleet.cloud.services.registry import get_model
from edgefleet.cloud.services.retraining_runner import EntryPoint
from edgefleet.cloud.store.tables import ModelRecipe, row_id
from edgefleet.compression.config import CompressionConfig
from edgefleet.protocol.bundle import BundleRecipe
from edgefleet.protocol.errors import ConflictError, InvalidRequestError, NotFoundError, first_problem
from edgefleet.protocol.vocabulary import Reason

ENTRY_POINT = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


class TrainingConfig(BaseModel):
    """The ``[training]`` table: one of ``entry_point`` or ``command``, and the limits of a run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entry_point: str | None = Field(default=None, pattern=ENTRY_POINT)
    """``package.module:function``, called as ``function(request: TrainingRequest) -> None``."""
    command: list[str] | None = Field(default=None, min_length=1, max_length=64)
    """A program and its arguments; the path of ``request.json`` is appended."""
    timeout_s: float = Field(default=3600.0, gt=0, le=7 * 86400)
    """Wall-clock limit of one run; past it the run's process group is killed."""
    memory_mb: int = Field(default=2048, ge=128, le=1024 * 1024)
    """Address-space limit of the run (``RLIMIT_AS``)."""
    auto: bool = False
    """Retrain automatically when an incident opens for a bundle of this model."""

    @model_validator(mode="after")
    def _one_entry_point(self) -> TrainingConfig:
        if (self.entry_point is None) == (self.command is None):
            raise ValueError("give entry_point or command (exactly one)")
        if self.command is not None and not all(self.command):
            raise ValueError("command arguments must be non-empty strings")
        return self

    def entry(self) -> EntryPoint:
        return EntryPoint(callable=self.entry_point, command=tuple(self.command) if self.command else None)


@dataclass(frozen=True)
class Recipe:
    """A stored recipe, parsed: each part ``None`` when the recipe has no such table."""

    training: TrainingConfig | None
    compression: CompressionConfig | None
    bundle: dict[str, Any] | None
    """The bundle tables and ``[compression]`` as JSON (what a server-side build takes; the recipe digest
    in the bundle's lineage covers the compression settings too)."""
    document: dict[str, Any]


def _validated(model: type[BaseModel], data: Any, prefix: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        key, problem = first_problem(exc)
        where = ".".join(p for p in (prefix, key) if p)
        raise InvalidRequestError(problem, code=Reason.INVALID_RECIPE, where=where or "recipe",
                                  hint=f"{len(exc.errors())} problem(s); the tables: docs/retraining.md") from None


def parse(document: dict[str, Any]) -> Recipe:
    """Validate every table of a recipe; :class:`InvalidRequestError` (``invalid_recipe``) naming the key."""
    if not isinstance(document, dict):
        raise InvalidRequestError("a recipe is a table of tables", code=Reason.INVALID_RECIPE, where="recipe")
    training = document.get("training")
    compression = document.get("compression")
    rest = {k: v for k, v in document.items() if k not in ("training", "compression")}
    if training is None and compression is None and not rest:
        raise InvalidRequestError("the recipe is empty", code=Reason.INVALID_RECIPE, where="recipe",
                                  hint="give [training], [compression] and [bundle] (docs/retraining.md)")
    parsed_training = _validated(TrainingConfig, training, "training") if training is not None else None
    parsed_compression = _validated(CompressionConfig, compression, "compression") if compression is not None else None
    bundle = None
    if rest:
        bundle = rest | ({"compression": compression} if compression is not None else {})
        _validated(BundleRecipe, bundle, "")
    return Recipe(parsed_training, parsed_compression, bundle, document)


def decode(body: bytes, *, content_type: str | None) -> dict[str, Any]:
    """A recipe as sent: JSON when the content type says so, TOML otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError("the recipe is not UTF-8", code=Reason.INVALID_RECIPE, where="body") from None
    if content_type and "json" in content_type:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidRequestError(f"not valid JSON: {exc}", code=Reason.INVALID_RECIPE, where="body") from None
        if not isinstance(data, dict):
            raise InvalidRequestError("a recipe is a JSON object of tables", code=Reason.INVALID_RECIPE, where="body")
        return data
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequestError(f"not valid TOML: {exc}", code=Reason.INVALID_RECIPE, where="body",
                                  hint="send TOML (Content-Type: application/toml) or JSON "
                                       "(Content-Type: application/json)") from None


def set_recipe(session: Session, *, model_name: str, document: dict[str, Any], actor: str, now: float) -> ModelRecipe:
    """Validate and store a model's recipe (replacing the one before); nothing is stored if invalid."""
    model = get_model(session, name=model_name)
    parsed = parse(document)
    row = session.get(ModelRecipe, model.id) or ModelRecipe(model_id=row_id(model), updated_at=now)
    row.recipe, row.updated_at, row.updated_by = document, now, actor
    session.add(row)
    audit.record(session, actor=actor, action="model.recipe", target=f"model:{model_name}",
                 details={"tables": sorted(document), "training": parsed.training.model_dump(mode="json")
                          if parsed.training else None}, now=now)
    return row


def find_recipe(session: Session, *, model_name: str) -> Recipe | None:
    row = session.get(ModelRecipe, get_model(session, name=model_name).id)
    return parse(row.recipe) if row is not None else None


def get_recipe_row(session: Session, *, model_name: str) -> ModelRecipe:
    row = session.get(ModelRecipe, get_model(session, name=model_name).id)
    if row is None:
        raise NotFoundError(f"model {model_name!r} has no recipe", where="recipe",
                            hint=f"set one: edgefleet models recipe {model_name} --set RECIPE.toml")
    return row


def retraining_recipe(session: Session, *, model_name: str) -> tuple[TrainingConfig, CompressionConfig,
                                                                     dict[str, Any]]:
    """The three tables a retraining job needs; :class:`ConflictError` naming the missing one."""
    recipe = find_recipe(session, model_name=model_name)
    if recipe is None:
        raise _missing(model_name, None)
    if recipe.training is None:
        raise _missing(model_name, "training")
    if recipe.compression is None:
        raise _missing(model_name, "compression")
    if recipe.bundle is None:
        raise _missing(model_name, "bundle")
    return recipe.training, recipe.compression, recipe.bundle


def _missing(model_name: str, table: str | None) -> ConflictError:
    hint = f"set it: edgefleet models recipe {model_name} --set RECIPE.toml (docs/retraining.md)"
    if table is None:
        return ConflictError(f"model {model_name!r} has no recipe", where="recipe", hint=hint)
    return ConflictError(f"the recipe of model {model_name!r} has no [{table}] table", where=f"recipe.{table}",
                         hint=hint)
