"""When and to whom orders go out: maintenance windows, the pace, the devices a stage takes, and
retry back-off. Pure functions of the policy, the clock and counts; no storage, no I/O."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from edgefleet.cloud.services.rollouts.policy import Pace, Retry, Stage, StageKind, Window


def in_window(windows: Sequence[Window], now: float) -> bool:
    """True when ``now`` is inside one of the windows (no windows: always)."""
    return not windows or any(_window_open(w, now) for w in windows)


def _window_open(window: Window, now: float) -> bool:
    local = datetime.fromtimestamp(now, UTC).astimezone(ZoneInfo(window.timezone))
    # the last start at or before now (croniter's get_prev is strict, so step from one second later)
    start: datetime = croniter(window.cron, local + timedelta(seconds=1)).get_prev(datetime)
    return start.timestamp() <= now < start.timestamp() + window.duration_s


def next_window(windows: Sequence[Window], now: float) -> float | None:
    """When the next window opens (``now`` if one is open; ``None`` without windows)."""
    if not windows:
        return None
    if in_window(windows, now):
        return now
    local = datetime.fromtimestamp(now, UTC)
    starts: list[float] = [croniter(w.cron, local.astimezone(ZoneInfo(w.timezone))).get_next(datetime).timestamp()
                           for w in windows]
    return min(starts)


def allowance(pace: Pace, *, started_at: float, now: float, ordered: int, succeeded: int) -> int:
    """How many more devices may get orders now. ``ordered`` orders went out since ``started_at``
    (the rollout's start), ``succeeded`` of them ended well. Without a pace: no limit."""
    minutes = max(0.0, now - started_at) / 60.0
    if pace.max_per_minute is not None:
        budget = math.floor(pace.max_per_minute * minutes) + 1
    elif pace.exponential is not None:
        e = pace.exponential
        rate = e.base_per_minute * e.factor ** (succeeded // e.raise_after)
        budget = math.floor(rate * minutes) + 1
    else:
        return 1 << 30
    return max(0, budget - ordered)


def stage_size(stage: Stage, remaining: Sequence[tuple[str, list[str]]]) -> list[str]:
    """The device ids a stage takes from ``remaining`` (``(device_id, tags)`` not yet in an earlier
    stage, in the rollout's order)."""
    if stage.select == StageKind.TAG:
        return [d for d, tags in remaining if stage.tag in tags]
    if stage.select == StageKind.DEVICES:
        wanted = set(stage.devices or ())
        return [d for d, _ in remaining if d in wanted]
    if stage.select == StageKind.COUNT:
        assert stage.count is not None  # the policy checks a count stage has its count
        return [d for d, _ in remaining[:stage.count]]
    if stage.select == StageKind.PERCENT:
        assert stage.percent is not None
        n = max(1, math.ceil(len(remaining) * stage.percent / 100.0)) if remaining else 0
        return [d for d, _ in remaining[:n]]
    return [d for d, _ in remaining]


def rollout_order(rollout_id: str, device_ids: Sequence[str]) -> list[str]:
    """A stable shuffle of the devices: the same rollout always picks the same canaries, and
    canaries do not cluster on ids that sort first (a site, a batch)."""
    return sorted(device_ids, key=lambda d: hashlib.sha256(f"{rollout_id}/{d}".encode()).digest())


def retry_at(retry: Retry, *, attempts: int, now: float) -> float | None:
    """When a device that failed its ``attempts``-th order gets the next one (``None``: no more)."""
    if attempts > retry.attempts:
        return None
    return now + retry.backoff_s * 2.0 ** (attempts - 1)
