"""What tests of every kind share: one free port picker, one polling wait, device message keys, and one
rule for a part the machine lacks."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.cloud.ports import free_port
from edgefleet.protocol.keys import generate_private_key, public_key_pem

__all__ = ["DeviceKey", "free_port", "missing_part", "wait_until"]

T = TypeVar("T")


def missing_part(message: str) -> NoReturn:
    """A part of the machine a test needs is not there: skip locally, FAIL under CI=true (where every part
    the README names is meant to be there), never a silent skip in CI."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


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


class DeviceKey:
    """A device's own message key, as the agent makes it at enrollment: ``pem`` goes into the
    enrollment request, :meth:`seal` signs what the device publishes."""

    def __init__(self) -> None:
        self.key: Ed25519PrivateKey = generate_private_key()
        self.pem = public_key_pem(self.key.public_key()).decode("ascii")

    def seal(self, topic: str, body: bytes) -> bytes:
        from edgefleet.protocol.device_signatures import seal
        return seal(self.key, topic, body)
