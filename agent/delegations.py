"""The newest delegations document this device accepted (docs/security.md §6), kept in
``state_dir/delegations.json``.

A newer valid document comes in a ``delegations`` message on the cmd topic or inside a bundle signed by
a delegated key; an older, tampered or expired one is refused, logged and counted, and changes nothing.
The stored document is the version floor: a device never goes back to an older one, so a revocation
it has seen stays in force.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.protocol.delegation import DelegationCheck, delegations_json, parse_delegations, verify_document
from edgefleet.protocol.errors import VerificationError
from edgefleet.protocol.files import atomic_write
from edgefleet.protocol.keys import TrustedKeys
from edgefleet.protocol.messages import SignedDelegations

log = logging.getLogger(__name__)


class DelegationStore:
    def __init__(self, path: Path, *, trusted: TrustedKeys, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.trusted = trusted
        self.clock = clock
        self.refused = 0
        """Documents refused since the start (older, invalid or expired)."""
        self._lock = threading.Lock()
        self.current = self._load()

    def _load(self) -> SignedDelegations | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            doc = parse_delegations(raw, where=str(self.path))
            # accepted before, so no expiry here: an expired document still holds the version floor
            verify_document(doc, trusted=self.trusted, known=None, now=None, where=str(self.path))
        except VerificationError as exc:
            log.error("ignoring the stored delegations document: %s", exc)
            return None
        return doc

    def check(self, *, hardware_class: str, installing: bool = True) -> DelegationCheck:
        """What :func:`~edgefleet.protocol.bundle.verify_bundle` needs to judge a delegated bundle now."""
        return DelegationCheck(now=self.clock(), known=self.current, hardware_class=hardware_class,
                               installing=installing)

    def offer(self, doc: SignedDelegations, *, source: str) -> VerificationError | None:
        """Keep ``doc`` if it is valid and newer than the current one; never raises. Returns the
        refusal (logged and counted) or ``None`` (accepted, or the current document again)."""
        with self._lock:
            known = self.current
            if known is not None and delegations_json(doc) == delegations_json(known):
                return None  # the controller re-sends its current document after every hello
            try:
                verify_document(doc, trusted=self.trusted, known=known.signed if known else None, now=self.clock(),
                                where=source)
            except VerificationError as exc:
                self.refused += 1
                log.warning("delegations document version %d refused: %s [%s] (%d refused)", doc.signed.version,
                            exc, exc.code, self.refused)
                return exc
            atomic_write(self.path, delegations_json(doc))
            self.current = doc
        log.info("delegations version %d accepted from %s: %s", doc.signed.version, source,
                 ", ".join(d.name for d in doc.signed.delegations) or "no delegations")
        return None
