"""The time ranges a chart can show (``?range=1h|6h|24h|7d`` on the device page and the trends page): reading
the parameter, the picker's links, and the refusal of a range that is not one of them (a 422 page that says
which ones are)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse

from edgefleet.cloud.services.auth import Principal
from edgefleet.cloud.ui.render import render
from edgefleet.protocol.errors import InvalidRequestError


class ChartRange(StrEnum):
    H1 = "1h"
    H6 = "6h"
    H24 = "24h"
    D7 = "7d"


SECONDS = {ChartRange.H1: 3600.0, ChartRange.H6: 6 * 3600.0, ChartRange.H24: 86400.0, ChartRange.D7: 7 * 86400.0}
LABELS = {ChartRange.H1: "1 h", ChartRange.H6: "6 h", ChartRange.H24: "24 h", ChartRange.D7: "7 d"}
PARAM = "range"


def parse(value: str | None, *, default: ChartRange) -> ChartRange:
    """The range a query parameter names; none given is ``default``."""
    if value is None or value == "":
        return default
    try:
        return ChartRange(value)
    except ValueError:
        raise InvalidRequestError(f"{value[:20]!r} is not a chart range", where=PARAM,
                                  hint=f"use one of {', '.join(ChartRange)}") from None


@dataclass(frozen=True)
class Choice:
    value: ChartRange
    label: str
    href: str
    current: bool


def choices(path: str, current: ChartRange, *, anchor: str = "") -> list[Choice]:
    """The picker's links: the same page with each range (``anchor`` keeps the reader at the charts)."""
    return [Choice(r, LABELS[r], f"{path}?{urlencode({PARAM: r.value})}{anchor}", r == current) for r in ChartRange]


def refused(request: Request, user: Principal, exc: InvalidRequestError) -> HTMLResponse:
    return render(request, "error.html", status_code=422, user=user, title="Cannot read the request", status=422,
                  message=exc.message, where=exc.where, hint=exc.hint)
