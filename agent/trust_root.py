"""The trust root this device holds (docs/security.md §9), kept in ``state_dir/root.json``.

Pinned at enrollment (or adopted later from the controller, when a device enrolled before roots
finds one signed by the release keys it trusts), it decides which release and controller keys the
device trusts: the ``release`` and ``controller`` :class:`TrustedKeys` objects the updater, the
delegations store and the uploader hold are replaced in place when a newer root is accepted, so a
rotated or revoked key is refused everywhere at once. Newer roots come in ``roots`` messages and
inside orders; one that does not continue the chain is refused, logged and counted, and changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edgefleet.protocol.errors import VerificationError
from edgefleet.protocol.files import atomic_write
from edgefleet.protocol.keys import TrustedKeys
from edgefleet.protocol.messages import SignedRoot
from edgefleet.protocol.root import parse_root, root_json, trusted, verify_self, walk

log = logging.getLogger(__name__)

ROOT_FILE = "root.json"


class RootStore:
    def __init__(self, path: Path, *, release: TrustedKeys, controller: TrustedKeys,
                 clock: Callable[[], float] = time.time) -> None:
        self.path, self.release, self.controller, self.clock = path, release, controller, clock
        self.refused = 0
        self._lock = threading.Lock()
        self.current = self._load()
        if self.current is not None:
            self._apply(self.current)

    @property
    def version(self) -> int | None:
        return self.current.signed.version if self.current is not None else None

    def _load(self) -> SignedRoot | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            root = parse_root(raw, where=str(self.path))
            verify_self(root, where=str(self.path))
        except VerificationError as exc:   # a damaged file: the configured keys stay in force
            log.error("ignoring the stored trust root: %s", exc)
            return None
        return root

    def _apply(self, root: SignedRoot) -> None:
        self.release.replace(trusted(root.signed, "release"))
        self.controller.replace(trusted(root.signed, "controller"))

    def offer(self, roots: Sequence[SignedRoot], *, source: str) -> VerificationError | None:
        """Walk ``roots`` from the one held and keep the newest; never raises. Returns the refusal
        (logged and counted) or ``None`` (accepted, or nothing newer)."""
        with self._lock:
            known = self.current
            if known is not None and all(r.signed.version <= known.signed.version for r in roots):
                return None   # the controller re-sends what the device may have missed
            try:
                newest = walk(roots, known=known.signed if known else None, now=self.clock(),
                              release=self.release if known is None else None, where=source)
            except VerificationError as exc:
                self.refused += 1
                log.warning("trust roots refused: %s [%s] (%d refused)", exc, exc.code, self.refused)
                return exc
            root = next(r for r in roots if r.signed == newest)
            atomic_write(self.path, root_json(root))
            self.current = root
            self._apply(root)
        log.warning("trust root version %d accepted from %s: %d release key(s), %d controller key(s)",
                    newest.version, source, len(newest.release.keys), len(newest.controller.keys))
        return None
