"""Give freed memory back to the OS after large transient allocations (bundle bytes while a
model loads). glibc keeps freed heap pages otherwise, which shows up as resident memory on
small devices. A no-op where ``malloc_trim`` does not exist (musl, macOS)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

try:
    _name = ctypes.util.find_library("c")
    _trim = getattr(ctypes.CDLL(_name), "malloc_trim", None) if _name else None
except OSError:
    _trim = None


def release_memory() -> None:
    gc.collect()
    if _trim is not None:
        _trim(0)
