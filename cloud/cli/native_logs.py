"""Keeping native libraries' chatter off the terminal: LiteRT's C++ runtime prints "INFO: Created
TensorFlow Lite XNNPACK delegate for CPU." straight to file descriptor 2, below Python's logging,
and offers no switch for it. :func:`quiet_native_logs` points descriptor 2 at a pipe for the
duration of a command and forwards every line except the known noise, as it comes (nothing is
held back or lost; a crash still shows its message)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

NOISE = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
         b"INFO: Initialized TensorFlow Lite runtime.")
"""Lines (their start) that say nothing to the person at the terminal."""


@contextmanager
def quiet_native_logs(noise: tuple[bytes, ...] = NOISE) -> Iterator[None]:
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    forwarder = threading.Thread(target=_forward, args=(read_end, original, noise), name="edgefleet-stderr",
                                 daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the forwarder sees EOF
        forwarder.join(5)
        os.close(original)


def _forward(read_end: int, target: int, noise: tuple[bytes, ...]) -> None:
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.startswith(noise):
                    os.write(target, line + b"\n")
        if pending and not pending.startswith(noise):
            os.write(target, pending)
