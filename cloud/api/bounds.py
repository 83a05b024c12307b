"""Bounds every JSON request body keeps, whatever its schema (the pure check; :mod:`guards` applies it
to each request before a route sees the body).

Request schemas bound their own fields, but many bodies carry models of the wire contract (trust roots,
delegations, bundle recipes, rollout policies) whose integers have no upper bound: such a number reached
the database (a signed 64-bit column) or a loop. Here, for every body: UTF-8 only; every integer fits a
signed 64-bit column; every number is finite (no ``NaN``/``Infinity``, nothing that overflows to it: a
``NaN`` threshold would silently disable a rollout gate); nesting at most :data:`MAX_DEPTH` deep.
"""

from __future__ import annotations

import json
import math
from typing import Any

from edgefleet.cloud.api.params import MAX_INT

MAX_DEPTH = 32
"""Deeper than any request schema nests (a rollout policy's gates are 5 levels down)."""


class _Refused:
    """Stands in the parsed document for a value that is out of bounds."""

    def __init__(self, why: str) -> None:
        self.why = why


def _integer(text: str) -> int | _Refused:
    digits = text.lstrip("-")
    if len(digits) > 19 or not -MAX_INT - 1 <= int(text) <= MAX_INT:
        shown = text if len(text) <= 24 else f"{text[:12]}...({len(digits)} digits)"
        return _Refused(f"integer {shown} is outside the signed 64-bit range")
    return int(text)


def _number(text: str) -> float | _Refused:
    value = float(text)
    return value if math.isfinite(value) else _Refused(f"number {text[:24]} is not finite")


def _constant(text: str) -> _Refused:
    return _Refused(f"{text} is not a JSON number")


def violation(body: bytes) -> tuple[str, str] | None:
    """``(where, why)`` of the first value of the JSON ``body`` out of bounds (``where`` as in a 422:
    ``body.policy.stages.0.gates``); ``None`` when every value is within them. A body that is not JSON
    at all is left to the route's own parser (its 422 says where the syntax breaks)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "body", f"not UTF-8 (byte {exc.start})"
    try:
        document = json.loads(text, parse_int=_integer, parse_float=_number, parse_constant=_constant)
    except RecursionError:
        return "body", f"nested more than {MAX_DEPTH} levels deep"
    except ValueError:
        return None
    return _walk(document)


def _walk(document: Any) -> tuple[str, str] | None:
    stack: list[tuple[Any, tuple[str, ...]]] = [(document, ("body",))]
    while stack:
        value, where = stack.pop()
        if len(where) > MAX_DEPTH + 1:
            return ".".join(where[:MAX_DEPTH + 1]), f"nested more than {MAX_DEPTH} levels deep"
        if isinstance(value, _Refused):
            return ".".join(where), value.why
        if isinstance(value, dict):
            stack.extend((v, (*where, str(k))) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((v, (*where, str(i))) for i, v in reversed(list(enumerate(value))))
    return None
