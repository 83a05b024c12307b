"""Downsampling time series for charts: a pure core (no database), so a 7-day chart stays a few hundred
points whatever the fleet sends.

Time is cut into equal buckets between ``since`` and ``until``. What a bucket keeps depends on what is
honest for the measure: telemetry windows merge their latency histograms (the p95 of a bucket is the
p95 of every request in it, not an average of p95s), keep the *highest* drift score (an alarm window is
never smoothed away) and sum their counts; a step function (devices online) keeps its *lowest* value in
the bucket (a short outage stays visible) and its value at the bucket's end; a sampled count (fleet
snapshots) keeps the newest sample of the bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edgefleet.cloud.services.telemetry import merge_histograms
from edgefleet.protocol.messages import histogram_quantile

MAX_POINTS = 240
"""A series has at most this many points on a chart (about two per pixel of a 640 px wide chart's plot)."""


@dataclass(frozen=True)
class Buckets:
    """``count`` equal buckets covering ``[since, until]``; bucket ``i`` is ``[start(i), start(i + 1))``,
    the last one also holds ``until``."""

    since: float
    until: float
    count: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.since) and math.isfinite(self.until)) or self.until <= self.since:
            raise ValueError(f"buckets need since < until, got {self.since!r}..{self.until!r}")
        if self.count < 1:
            raise ValueError(f"buckets need a count of at least 1, got {self.count!r}")

    @property
    def width(self) -> float:
        return (self.until - self.since) / self.count

    def start(self, i: int) -> float:
        return self.since + i * self.width

    def end(self, i: int) -> float:
        return self.until if i == self.count - 1 else self.since + (i + 1) * self.width

    def index(self, t: float) -> int | None:
        """The bucket holding ``t``, ``None`` outside ``[since, until]``."""
        if t < self.since or t > self.until:
            return None
        return min(self.count - 1, int((t - self.since) / self.width))


class _Window(Protocol):
    @property
    def window_end(self) -> float: ...
    @property
    def latency_bounds(self) -> list[float]: ...
    @property
    def latency_counts(self) -> list[int]: ...
    @property
    def drift_psi(self) -> float | None: ...
    @property
    def drift_js(self) -> float | None: ...
    @property
    def requests(self) -> int: ...
    @property
    def errors(self) -> int: ...


def _max(values: Iterable[float | None]) -> float | None:
    found = [v for v in values if v is not None and math.isfinite(v)]
    return max(found) if found else None


def window_points(rows: Iterable[_Window], *, since: float, until: float, max_points: int = MAX_POINTS
                  ) -> list[dict[str, Any]]:
    """Chart points of telemetry windows ending in ``[since, until]``, oldest first: ``at``, ``p50_ms``,
    ``p95_ms``, ``psi``, ``js``, ``requests``, ``errors``, ``windows`` (how many windows the point holds) and
    ``after_gap`` (more than three times the usual spacing since the previous point: the line breaks there).
    Up to ``max_points`` windows each give their own point (at their end); more are merged per bucket
    (at the bucket's middle): histograms summed, the highest drift scores, counts summed."""
    kept = sorted((r for r in rows if since <= r.window_end <= until), key=lambda r: r.window_end)
    if len(kept) <= max_points:
        groups = [(r.window_end, [r]) for r in kept]
    else:
        buckets = Buckets(since, until, max_points)
        by_bucket: dict[int, list[_Window]] = {}
        for r in kept:
            i = buckets.index(r.window_end)
            if i is not None:
                by_bucket.setdefault(i, []).append(r)
        groups = [((buckets.start(i) + buckets.end(i)) / 2, by_bucket[i]) for i in sorted(by_bucket)]
    spacing = sorted(b[0] - a[0] for a, b in zip(groups, groups[1:], strict=False))
    gap = 3 * spacing[len(spacing) // 2] if spacing else math.inf
    points = []
    for k, (at, group) in enumerate(groups):
        bounds, counts = merge_histograms(group)
        points.append({"at": at, "windows": len(group), "after_gap": k > 0 and at - groups[k - 1][0] > gap,
                       "p50_ms": histogram_quantile(bounds, counts, 0.5),
                       "p95_ms": histogram_quantile(bounds, counts, 0.95),
                       "psi": _max(r.drift_psi for r in group), "js": _max(r.drift_js for r in group),
                       "requests": sum(r.requests for r in group), "errors": sum(r.errors for r in group)})
    return points


@dataclass(frozen=True)
class Step:
    """A change of a step function: at ``at`` the value moved by ``delta`` (e.g. +1: a device came online)."""

    at: float
    delta: int


def step_buckets(*, now_value: int, steps: Sequence[Step], buckets: Buckets, known_since: float | None = None
                 ) -> list[tuple[float, int, int]]:
    """A step function known by its value now (``now_value``, at ``buckets.until`` or later) and its changes
    (any order; those after ``buckets.until`` are undone too), as ``(bucket end, lowest value in the bucket,
    value at the bucket's end)`` per bucket, oldest first. Buckets that end before ``known_since`` or at it (when the
    history begins) are left out: before it the changes are not known. Values never go below 0."""
    ordered = sorted(steps, key=lambda s: s.at, reverse=True)
    value = now_value
    k = 0
    while k < len(ordered) and ordered[k].at > buckets.until:    # undo the changes after the chart's end
        value -= ordered[k].delta
        k += 1
    out: list[tuple[float, int, int]] = []
    for i in range(buckets.count - 1, -1, -1):
        start, end = buckets.start(i), buckets.end(i)
        at_end = max(0, value)
        lowest = at_end
        while k < len(ordered) and ordered[k].at >= start:
            value -= ordered[k].delta
            lowest = min(lowest, max(0, value))
            k += 1
        if known_since is not None and end <= known_since:
            break
        out.append((end, lowest, at_end))
    out.reverse()
    return out


def newest_per_bucket(samples: Iterable[tuple[float, float]], buckets: Buckets) -> list[tuple[float, float]]:
    """The newest ``(at, value)`` sample of each bucket that has one, at that sample's time, oldest first."""
    newest: dict[int, tuple[float, float]] = {}
    for at, value in samples:
        i = buckets.index(at)
        if i is not None and (i not in newest or at >= newest[i][0]):
            newest[i] = (at, value)
    return [newest[i] for i in sorted(newest)]
