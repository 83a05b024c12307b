"""What tests of every kind share: one free port picker, one polling wait, device message keys, and one
rule for a part the machine lacks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.cloud.ports import free_port
from edgefleet.protocol.keys import generate_private_key, public_key_pem

__all__ = ["MOSQUITTO_BIN", "DeviceKey", "free_port", "missing_part", "port_open", "postgres_database", "run_coroutine",
           "wait_until"]

PG_HOST, PG_PORT = "127.0.0.1", 5432
MOSQUITTO_BIN = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on ``host:port`` (within ``timeout`` seconds)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False

T = TypeVar("T")


def missing_part(message: str) -> NoReturn:
    """A part of the machine a test needs is not there: skip locally, FAIL under CI=true (where every part
    the README names is meant to be there), never a silent skip in CI."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def postgres_database(missing: Callable[[str], NoReturn] = missing_part) -> Iterator[str]:
    """A PostgreSQL database of its own (127.0.0.1:5432, trust auth), dropped afterwards; its SQLAlchemy URL.
    Not reachable: ``missing(why)`` (for a test: skip locally, FAIL under CI=true)."""
    import psycopg

    errors, conn, user = [], None, ""
    for user in ("postgres", "root"):
        try:
            conn = psycopg.connect(host=PG_HOST, port=PG_PORT, dbname="test", user=user, autocommit=True,
                                   connect_timeout=3)
            break
        except psycopg.OperationalError as exc:
            errors.append(f"{user}: {exc}".strip())
    if conn is None:
        missing(f"PostgreSQL not reachable on {PG_HOST}:{PG_PORT} ({'; '.join(errors)})")
    name = f"edgefleet_test_{uuid.uuid4().hex[:12]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)`` on a thread of its own: the test process may already run an event loop on its
    main thread (Playwright's sync API keeps one there once a browser test ran in it)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="test-asyncio") as pool:
        return pool.submit(asyncio.run, coro).result()


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
