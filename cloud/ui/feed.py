"""What the overview says about *now*: drift counted from recent windows only, and the "Recent events"
feed (device warnings and errors, devices that started to warn or alarm on drift, devices gone offline).

A pure core over rows the services return; the span of each is a setting (``ui_drift_span_s``,
``ui_feed_span_s``) and the page states it. Offline transitions are read from the devices as they are
now: a device offline now appears once, at the time it was last heard from (the controller keeps no
history of online/offline changes, so a device that went offline and came back within the span does not).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

from edgefleet.protocol.vocabulary import DriftLevel, EventLevel


class FeedKind(StrEnum):
    EVENT = "event"
    DRIFT = "drift"
    OFFLINE = "offline"


@dataclass(frozen=True)
class FeedItem:
    at: float
    device_id: str
    kind: FeedKind
    level: str
    """``warning``/``error`` (events), ``warn``/``alarm`` (drift), ``offline``."""
    title: str
    text: str


class _Window(Protocol):
    @property
    def window_end(self) -> float: ...


class _Event(Protocol):
    @property
    def device_id(self) -> str: ...
    @property
    def level(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def received_at(self) -> float: ...


class _Device(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def online(self) -> bool: ...
    @property
    def last_seen(self) -> float | None: ...


W = TypeVar("W", bound=_Window)


def recent_verdicts(latest: Mapping[str, W], *, since: float) -> dict[str, W]:
    """The newest judged window of each device, kept only when it ended at ``since`` or later."""
    return {device: w for device, w in latest.items() if w.window_end >= since}


FEED_EVENT_LEVELS = (EventLevel.WARNING, EventLevel.ERROR)
FEED_DRIFT_LEVELS = (DriftLevel.WARN, DriftLevel.ALARM)


def build_feed(*, events: Iterable[_Event], episodes: Iterable[tuple[str, str, float, float]],
               devices: Iterable[_Device], since: float, limit: int) -> list[FeedItem]:
    """Newest first, at most ``limit`` items, none before ``since``. ``episodes`` are
    ``(device_id, drift level, first window_end, peak PSI)`` (``telemetry.drift_episodes``)."""
    items = [FeedItem(e.received_at, e.device_id, FeedKind.EVENT, e.level, e.kind, e.text)
             for e in events if e.level in FEED_EVENT_LEVELS and e.received_at >= since]
    items += [FeedItem(first, device, FeedKind.DRIFT, level, f"drift {level}", f"peak PSI {peak:.3f}")
              for device, level, first, peak in episodes if level in FEED_DRIFT_LEVELS and first >= since]
    items += [FeedItem(d.last_seen, d.id, FeedKind.OFFLINE, "offline", "went offline", "last heard from then")
              for d in devices if not d.online and d.last_seen is not None and d.last_seen >= since]
    items.sort(key=lambda i: (-i.at, i.device_id, i.kind))
    return items[:limit]
