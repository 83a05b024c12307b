"""Jinja filters of the UI: relative and absolute times, sizes, numbers, digests, state colours."""

from __future__ import annotations

import math
import time

from edgefleet.cloud.services.rollouts.gates import Verdict
from edgefleet.cloud.ui import charts
from edgefleet.cloud.vocabulary import (
    DeploymentStatus,
    DeviceState,
    IncidentState,
    RolloutState,
    StageState,
    TargetState,
)
from edgefleet.protocol.vocabulary import DeviceStatus, DriftLevel, Outcome, UpdateState

_RUNNING = (UpdateState.DOWNLOADING, UpdateState.VERIFYING, UpdateState.STAGED, UpdateState.ACTIVATING,
            UpdateState.HEALTH_CHECK)
STATE_CSS: dict[str, str] = {
    TargetState.PENDING: "st-wait", TargetState.SENT: "st-wait", UpdateState.IDLE: "st-idle",
    **{s: "st-run" for s in _RUNNING},
    UpdateState.COMMITTED: "st-ok", UpdateState.FAILED: "st-bad", UpdateState.ROLLED_BACK: "st-warn",
    Outcome.REFUSED: "st-bad", Outcome.CANCELLED: "st-idle",   # also UpdateState.CANCELLED (the same word)
    DeploymentStatus.ACTIVE: "st-run", DeploymentStatus.SUCCEEDED: "st-ok", DeploymentStatus.PARTIAL: "st-warn",
    DriftLevel.OK: "st-ok", DriftLevel.WARN: "st-warn", DriftLevel.ALARM: "st-bad", DriftLevel.INSUFFICIENT: "st-idle",
    DeviceStatus.ONLINE: "st-ok", DeviceStatus.OFFLINE: "st-idle",
    # rollouts, their stages and devices (succeeded, cancelled, pending, failed, rolled back: as above)
    RolloutState.WAITING_APPROVAL: "st-wait", RolloutState.RUNNING: "st-run", RolloutState.PAUSED: "st-warn",
    RolloutState.ABORTED: "st-bad", StageState.SOAKING: "st-run", StageState.PASSED: "st-ok",
    DeviceState.QUEUED: "st-wait", DeviceState.IN_PROGRESS: "st-run", DeviceState.TIMED_OUT: "st-bad",
    DeviceState.REJECTED: "st-bad", DeviceState.SKIPPED: "st-idle", DeviceState.REVERTING: "st-warn",
    DeviceState.REVERTED: "st-warn", DeviceState.REVERT_FAILED: "st-bad",
    Verdict.PASS: "st-ok", Verdict.FAIL: "st-bad", Verdict.INCONCLUSIVE: "st-warn",
    IncidentState.OPEN: "st-bad", IncidentState.CLOSED: "st-idle",
}
"""Colour class of every state, outcome, status and level (defined in static/ui.css)."""
STATE_ORDER: list[str] = [UpdateState.COMMITTED, DeploymentStatus.SUCCEEDED, *reversed(_RUNNING),
                          TargetState.SENT, TargetState.PENDING, UpdateState.IDLE, UpdateState.ROLLED_BACK,
                          Outcome.CANCELLED, Outcome.REFUSED, UpdateState.FAILED]
"""Order of states in charts: done first, then in progress, then waiting, then the bad exits."""


def ago(ts: float | None, now: float | None = None) -> str:
    if not isinstance(ts, int | float):
        return "never"
    delta = (now if now is not None else time.time()) - ts
    if delta < 0:
        return "just now" if delta > -5 else "in the future"
    for limit, unit, size in ((60, "s", 1), (3600, "min", 60), (86400, "h", 3600), (math.inf, "d", 86400)):
        if delta < limit:
            return "just now" if unit == "s" and delta < 5 else f"{int(delta // size)} {unit} ago"
    return ""


def datetime_utc(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if isinstance(ts, int | float) else "—"


def byte_size(n: int | None) -> str:
    if not isinstance(n, int | float):
        return "—"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def duration(seconds: float | None) -> str:
    """``45 s``, ``5 min``, ``1.5 h``, ``2 d``: a span of time for people."""
    if not isinstance(seconds, int | float):
        return "—"
    for limit, unit, size in ((120, "s", 1), (7200, "min", 60), (2 * 86400, "h", 3600), (math.inf, "d", 86400)):
        if seconds < limit:
            return f"{seconds / size:.3g} {unit}"
    return ""


def number(v: float | None, digits: int = 3) -> str:
    return "—" if not isinstance(v, int | float) else charts.format_number(v) if abs(v) >= 1 else f"{v:.{digits}f}"


def short(digest: str | None) -> str:
    return (digest or "")[:12]


def state_css(state: str | None) -> str:
    return STATE_CSS.get(state or "", "st-idle")


def feed_css(level: str) -> str:
    """Colour of a "Recent events" item: errors and alarms bad, offline grey, back online good, the rest a
    warning."""
    return {"error": "st-bad", DriftLevel.ALARM: "st-bad", DeviceStatus.OFFLINE: "st-idle",
            DeviceStatus.ONLINE: "st-ok"}.get(level, "st-warn")


FILTERS = {"ago": ago, "datetime": datetime_utc, "bytes": byte_size, "duration": duration, "num": number,
           "short": short, "state_css": state_css, "feed_css": feed_css}
