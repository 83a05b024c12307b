"""What the overview says about *now*: drift counted from recent windows only, and the "Recent events"
feed (device warnings and errors, devices that started to warn or alarm on drift, devices that went
offline and came back).

A pure core over rows the services return; the span of each is a setting (``ui_drift_span_s``,
``ui_feed_span_s``) and the page states it. Offline transitions come from the controller's history of
them (``device_transitions``, services/fleet_history.py): each time a device went offline (and why), and
each time it came back (and how long it was gone). A device offline now whose going offline the history
does not hold (it went before the history began) appears once, at the time it was last heard from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

from edgefleet.cloud.ui.filters import duration
from edgefleet.cloud.vocabulary import TransitionCause
from edgefleet.protocol.vocabulary import DeviceStatus, DriftLevel, EventLevel


class FeedKind(StrEnum):
    EVENT = "event"
    DRIFT = "drift"
    OFFLINE = "offline"
    ONLINE = "online"


@dataclass(frozen=True)
class FeedItem:
    at: float
    device_id: str
    kind: FeedKind
    level: str
    """``warning``/``error`` (events), ``warn``/``alarm`` (drift), ``offline``/``online`` (transitions)."""
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


class _Transition(Protocol):
    @property
    def device_id(self) -> str: ...
    @property
    def at(self) -> float: ...
    @property
    def online(self) -> bool: ...
    @property
    def cause(self) -> str: ...


W = TypeVar("W", bound=_Window)

OFFLINE_TEXT: dict[str, str] = {TransitionCause.HEARTBEAT_TIMEOUT: "no heartbeat within the timeout",
                TransitionCause.LAST_WILL: "its connection dropped (last will)",
                TransitionCause.DECOMMISSIONED: "decommissioned"}


def recent_verdicts(latest: Mapping[str, W], *, since: float) -> dict[str, W]:
    """The newest judged window of each device, kept only when it ended at ``since`` or later."""
    return {device: w for device, w in latest.items() if w.window_end >= since}


FEED_EVENT_LEVELS = (EventLevel.WARNING, EventLevel.ERROR)
FEED_DRIFT_LEVELS = (DriftLevel.WARN, DriftLevel.ALARM)


def transition_items(transitions: Iterable[_Transition], *, offline_since: Mapping[tuple[str, float], float],
                     since: float) -> list[FeedItem]:
    """A "went offline" item per offline transition since ``since`` (with why), a "came back" item per online
    transition whose going offline the history holds (``offline_since``: ``(device, at) -> when it went``,
    ``fleet_history.last_offline_before``), with how long it was gone. An online transition without a
    known offline one before it (a new device's first hello, or a return from before the history) is left out."""
    items = []
    for t in transitions:
        if t.at < since:
            continue
        if not t.online:
            items.append(FeedItem(t.at, t.device_id, FeedKind.OFFLINE, DeviceStatus.OFFLINE, "went offline",
                                  OFFLINE_TEXT.get(t.cause, t.cause)))
        elif (t.device_id, t.at) in offline_since:
            gone = t.at - offline_since[(t.device_id, t.at)]
            items.append(FeedItem(t.at, t.device_id, FeedKind.ONLINE, DeviceStatus.ONLINE, "came back",
                                  f"after {duration(gone)} offline"))
    return items


def build_feed(*, events: Iterable[_Event], episodes: Iterable[tuple[str, str, float, float]],
               devices: Iterable[_Device], since: float, limit: int, transitions: Iterable[_Transition] = (),
               offline_since: Mapping[tuple[str, float], float] | None = None) -> list[FeedItem]:
    """Newest first, at most ``limit`` items, none before ``since``. ``episodes`` are
    ``(device_id, drift level, first window_end, peak PSI)`` (``telemetry.drift_episodes``); ``transitions``
    the history's online/offline changes (:func:`transition_items`); a device offline now without an offline
    transition among them is shown gone at the time it was last heard from."""
    transitions = list(transitions)
    items = [FeedItem(e.received_at, e.device_id, FeedKind.EVENT, e.level, e.kind, e.text)
             for e in events if e.level in FEED_EVENT_LEVELS and e.received_at >= since]
    items += [FeedItem(first, device, FeedKind.DRIFT, level, f"drift {level}", f"peak PSI {peak:.3f}")
              for device, level, first, peak in episodes if level in FEED_DRIFT_LEVELS and first >= since]
    items += transition_items(transitions, offline_since=offline_since or {}, since=since)
    recorded = {t.device_id for t in transitions if not t.online}
    items += [FeedItem(d.last_seen, d.id, FeedKind.OFFLINE, DeviceStatus.OFFLINE, "went offline",
                       "last heard from then")
              for d in devices if not d.online and d.last_seen is not None and d.last_seen >= since
              and d.id not in recorded]
    items.sort(key=lambda i: (-i.at, i.device_id, i.kind))
    return items[:limit]
