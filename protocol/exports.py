"""Package public surfaces that load on first use: ``import edgefleet.protocol.errors`` must not pay
for numpy or the bundle format just because the package lists them. A package's ``__init__`` maps
each public name to the module that holds it and hands :func:`lazy` its ``__getattr__``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy(package: str, namespace: dict[str, Any], home: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving ``name`` from ``package.home[name]`` (then cached in ``namespace``)."""

    def __getattr__(name: str) -> Any:
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    return __getattr__


def homes(**modules: tuple[str, ...]) -> dict[str, str]:
    """``homes(errors=("EdgeFleetError", ...))`` -> ``{"EdgeFleetError": "errors", ...}``."""
    return {name: module for module, names in modules.items() for name in names}
