"""Every recipe shipped in firmware-bundles/ is a valid bundle recipe and compression recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.compression import load_compression_recipe
from edgefleet.protocol.bundle import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "firmware-bundles").glob("*.toml"))


def test_there_are_recipes():
    assert RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_parses(path):
    recipe = load_recipe(path)
    assert recipe.bundle.name == path.stem
    assert recipe.model_path().name.startswith(path.stem)
    assert load_compression_recipe(path).gate.max_accuracy_drop <= 1.0
