"""Lockout after failed authentications: the pure core (no clock, no I/O; the caller passes ``now``).

A client address that failed ``limit`` times within ``window_s`` seconds (a bad API token, enrollment
token, device password or UI sign-in: any 401 answer) is locked out until the oldest of those failures
is ``window_s`` old; then it has one more try. So an address makes at most ``limit`` guesses per window,
however long it keeps trying. A success neither counts nor wipes the failures (else a holder of one
valid token could interleave it to guess others). The state is data: for each address, the times of its
failures in the window, oldest first (at most ``limit`` of them), for at most ``max_clients`` addresses
(the address that failed least recently is forgotten first).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class FailureRule:
    limit: int
    """Failures allowed within the window before a lockout; 0: no limit."""
    window_s: float


class FailureLimiter:
    def __init__(self, rule: FailureRule, *, max_clients: int = 10_000) -> None:
        self.rule = rule
        self.max_clients = max_clients
        self.failures: OrderedDict[str, tuple[float, ...]] = OrderedDict()
        """Address -> times of its failures within the window, oldest first; least recent address first."""
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> tuple[float, ...]:
        times = tuple(t for t in self.failures.get(client, ()) if t > now - self.rule.window_s)
        if times:
            self.failures[client] = times
        else:
            self.failures.pop(client, None)
        return times

    def retry_after(self, client: str, *, now: float) -> float | None:
        """Seconds until ``client`` may try again; ``None`` when it is not locked out."""
        if self.rule.limit <= 0:
            return None
        with self._lock:
            times = self._recent(client, now)
            if len(times) < self.rule.limit:
                return None
            return times[-self.rule.limit] + self.rule.window_s - now

    def fail(self, client: str, *, now: float) -> float | None:
        """Record a failure of ``client``; when this one locks it out, the seconds until it may try
        again (``None`` otherwise: it may still try, or it already was locked out)."""
        if self.rule.limit <= 0:
            return None
        with self._lock:
            before = self._recent(client, now)
            times = (*before, now)[-self.rule.limit:]
            self.failures[client] = times
            self.failures.move_to_end(client)
            while len(self.failures) > self.max_clients:
                self.failures.popitem(last=False)
            if len(times) < self.rule.limit or len(before) >= self.rule.limit:
                return None
            return times[0] + self.rule.window_s - now
