"""A/B slots under ``state_dir/slots``.

Each slot holds one verified bundle file (``bundle``), written to a temp file and
``os.replace``d, so a slot is either complete or absent, never mixed. The active slot is named
by the pointer file ``slots/active`` which is switched atomically. The previously active slot
is left untouched until the next update overwrites it (the inactive slot is the one written).
"""

from __future__ import annotations

from pathlib import Path

from edgefleet.protocol.files import atomic_write

SLOTS = ("a", "b")


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

    def install(self, slot: str, source: Path, digest: str) -> None:
        """Place the bundle file ``source`` into ``slot`` atomically (copy, fsync, replace),
        with its sha256 beside it (checked again whenever the slot is loaded)."""
        (self.root / slot / "digest").unlink(missing_ok=True)
        target = self.bundle_path(slot)
        with open(source, "rb") as src:
            atomic_write(target, iter(lambda: src.read(1024 * 1024), b""))
        atomic_write(self.root / slot / "digest", digest.encode())

    def digest(self, slot: str) -> str | None:
        try:
            return (self.root / slot / "digest").read_text().strip()
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
