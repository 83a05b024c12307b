"""The one background-loop helper of the controller: run a step on a daemon thread every
``interval_s``, or at once when woken, until stopped. A failing step is logged and the loop goes
on (the next pass retries), so no bug in a pass can silently stop the reconciler or a worker."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class BackgroundLoop:
    def __init__(self, step: Callable[[], object], *, interval_s: float, name: str, min_gap_s: float = 0.0) -> None:
        self.step = step
        self.interval_s = interval_s
        self.min_gap_s = min(min_gap_s, interval_s)
        """Passes start at least this far apart, however often the loop is woken (no wake is lost)."""
        self.name = name
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"edgefleet-{self.name}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next pass now instead of at the end of the interval."""
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s - self.min_gap_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.step()
            except Exception:
                log.exception("%s pass failed; retrying in %.0f s", self.name, self.interval_s)
            if self.min_gap_s:
                self._stop.wait(self.min_gap_s)
