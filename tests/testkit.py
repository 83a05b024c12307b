"""What tests of every kind share: one free port picker and one polling wait."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from edgefleet.cloud.ports import free_port

__all__ = ["free_port", "wait_until"]

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], what: str = "condition", timeout: float = 30.0,
               poll_s: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; fail the test with
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll_s)
