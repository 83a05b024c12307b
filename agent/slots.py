"""A/B slots under ``state_dir/slots``.

Each slot holds one verified bundle file (``bundle``), placed under a temp name and
``os.replace``d, so a slot is either complete or absent, never mixed; beside it its sha256
(``digest``, written last: a slot without it is incomplete) and the fingerprint its verification
recorded (``fingerprint``, protocol/bundle_reader.py), which every load checks instead of hashing the
file twice. The active slot is named by the pointer file ``slots/active`` which is switched
atomically. The previously active slot is left untouched until the next update overwrites it (the
inactive slot is the one written).
"""

from __future__ import annotations

import os
from pathlib import Path

from edgefleet.protocol.files import atomic_write

SLOTS = ("a", "b")
CHUNK = 1024 * 1024


class Slots:
    def __init__(self, root: Path) -> None:
        self.root = root
        for name in SLOTS:
            (root / name).mkdir(parents=True, exist_ok=True)
        self.pointer = root / "active"

    def active(self) -> str | None:
        try:
            name = self.pointer.read_text().strip()
        except FileNotFoundError:
            return None
        return name if name in SLOTS else None

    def inactive(self) -> str:
        return "b" if self.active() == "a" else "a"

    def bundle_path(self, slot: str) -> Path:
        return self.root / slot / "bundle"

    def has_bundle(self, slot: str | None) -> bool:
        return slot in SLOTS and self.bundle_path(slot).is_file() and self.digest(slot) is not None

    def install(self, slot: str, source: Path, digest: str, fingerprint: str | None = None) -> None:
        """Place the bundle file ``source`` into ``slot`` atomically, with its sha256 and (when its
        verification recorded one) its fingerprint beside it, both checked whenever the slot is loaded.

        ``source`` is hard-linked into the slot: the downloader fsynced it, and no bundle file is ever
        written in place (each is a new file renamed over its name), so the link is as good as a copy
        without writing the bundle again. Where the file system cannot link (another mount, FAT), it is
        copied (temp file, fsync, replace)."""
        for record in ("digest", "fingerprint"):
            (self.root / slot / record).unlink(missing_ok=True)
        _place(source, self.bundle_path(slot))
        if fingerprint is not None:
            atomic_write(self.root / slot / "fingerprint", fingerprint.encode())
        atomic_write(self.root / slot / "digest", digest.encode())

    def digest(self, slot: str) -> str | None:
        return self._record(slot, "digest")

    def fingerprint(self, slot: str) -> str | None:
        """The fingerprint recorded when the slot's bundle was verified (None: a slot an older agent
        staged; its loads check the whole-file digest instead)."""
        return self._record(slot, "fingerprint")

    def record_fingerprint(self, slot: str, fingerprint: str) -> None:
        """Record the fingerprint of the slot's bundle, verified with its whole-file digest."""
        atomic_write(self.root / slot / "fingerprint", fingerprint.encode())

    def _record(self, slot: str, name: str) -> str | None:
        try:
            return (self.root / slot / name).read_text().strip()
        except FileNotFoundError:
            return None

    def switch(self, slot: str | None) -> None:
        """Make ``slot`` active (``None``: no active model)."""
        if slot is None:
            self.pointer.unlink(missing_ok=True)
            return
        if slot not in SLOTS:
            raise ValueError(f"unknown slot {slot!r}")
        atomic_write(self.pointer, slot.encode())


def _place(source: Path, target: Path) -> None:
    """``source`` at ``target`` atomically: a hard link renamed into place, else a copy."""
    link = target.with_name(f".{target.name}.{os.getpid()}.link")
    link.unlink(missing_ok=True)
    try:
        os.link(source, link)
    except FileNotFoundError:
        raise
    except OSError:   # EXDEV, EPERM, ENOTSUP...: no hard link here
        with open(source, "rb") as src:
            atomic_write(target, iter(lambda: src.read(CHUNK), b""))
        return
    os.replace(link, target)
    dirfd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)   # the rename survives a power cut
    finally:
        os.close(dirfd)
