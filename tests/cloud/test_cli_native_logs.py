"""LiteRT's C++ chatter on file descriptor 2 is dropped; everything else written there still
reaches the terminal, in order, also from native code and also a partial last line."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = r"""
import os, sys
from edgefleet.cloud.cli.native_logs import quiet_native_logs
with quiet_native_logs():
    os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    os.write(2, b"native warning 1\n")
    print("python error line", file=sys.stderr)
    os.write(2, b"INFO: Initialized TensorFlow Lite runtime.\nnative warning 2\nno newline")
print("after", file=sys.stderr)
"""


def test_noise_is_dropped_and_the_rest_forwarded_in_order():
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert done.stderr == "native warning 1\npython error line\nnative warning 2\nno newlineafter\n"
