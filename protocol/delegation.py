"""Delegated signing keys, TUF-style (docs/security.md §6): automation signs bundles without the release key.

The release keys (offline, with their threshold) sign a *delegations document*
(:class:`~edgefleet.protocol.messages.DelegationsDocument`): a version number, an expiry and the
delegations in force, each letting one key sign bundles whose name matches a pattern, for given
hardware classes, until its own expiry. A bundle signed by a delegated key carries the document it was
signed under (member ``delegations.json``, docs/bundle-format.md §1.4). A verifier accepts it when the
whole chain holds:

    release keys (threshold) -> document (signature; version not below the newest one accepted;
    not expired) -> the delegation of the key that signed the manifest (still in the newest
    document; not expired) -> the bundle's name and hardware classes inside its scope

Revoking a delegation is signing the next version without it: a verifier that has accepted the newer
document refuses the key even in a bundle that embeds the older one. Everything here is pure (bytes,
keys and ``now`` in; the accepted document or a :class:`~edgefleet.protocol.errors.DelegationError` out).
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from edgefleet.protocol.canonical import canonical_json
from edgefleet.protocol.errors import (
    DelegationError,
    DelegationExpiredError,
    DelegationRevokedError,
    DelegationRollbackError,
    NotDelegatedError,
    SignatureError,
    SizeLimitError,
    UnknownKeyError,
    VerificationError,
    first_problem,
)
from edgefleet.protocol.keys import TrustedKeys, key_id, sign
from edgefleet.protocol.messages import (
    ANY_HARDWARE_CLASS,
    Delegation,
    DelegationsDocument,
    Signature,
    SignedDelegations,
)

MAX_DOCUMENT_BYTES = 24 * 1024
"""Largest delegations document accepted (a bundle member, a file, an upload): small enough that a
``delegations`` message carrying it stays within the cmd topic's 32 KiB."""


def document_bytes(document: DelegationsDocument) -> bytes:
    """The exact bytes the release keys sign: canonical JSON of the document."""
    return canonical_json(document.model_dump(mode="json"))


def raw_public_key(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def make_delegation(*, name: str, public_key: Ed25519PublicKey, name_patterns: list[str],
                    hardware_classes: list[str], expires_at: int) -> Delegation:
    return Delegation(name=name, keyid=key_id(public_key), public_key=raw_public_key(public_key),
                      name_patterns=name_patterns, hardware_classes=hardware_classes, expires_at=expires_at)


def sign_delegations(document: DelegationsDocument, keys: Iterable[Ed25519PrivateKey]) -> SignedDelegations:
    """Sign ``document`` with every release key in ``keys`` (as many as the devices' threshold asks)."""
    body = document_bytes(document)
    signatures = {s.keyid: s for s in (sign(k, body) for k in keys)}
    return SignedDelegations(signed=document, signatures=list(signatures.values()))


def delegations_json(doc: SignedDelegations) -> bytes:
    """The document as stored in a bundle member, a file or the controller (canonical JSON)."""
    return canonical_json(doc.model_dump(mode="json"))


def parse_delegations(raw: bytes | str, *, where: str = "delegations") -> SignedDelegations:
    """Parse a signed delegations document (NOT verified: :func:`verify_document` does that)."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise SizeLimitError(f"delegations document of {len(raw)} bytes exceeds {MAX_DOCUMENT_BYTES}", where=where)
    try:
        return SignedDelegations.model_validate_json(raw)
    except ValidationError as exc:
        loc, problem = first_problem(exc)
        raise VerificationError(f"delegations document is invalid: {problem}",
                                where=f"{where}: {loc}" if loc else where) from None


def verify_document(doc: SignedDelegations, *, trusted: TrustedKeys, known: DelegationsDocument | None,
                    now: float | None, where: str = "delegations") -> DelegationsDocument:
    """Return the document if it may replace ``known`` (the newest one accepted so far); raise otherwise.

    Signature first (a threshold of ``trusted`` release keys over the canonical bytes), then the
    version (lower than ``known``'s: a rollback; equal with other content: refused too), then the
    expiry (``now=None`` skips it: a verifier re-reading what it accepted before).
    """
    document = doc.signed
    try:
        body = document_bytes(document)
    except ValueError:  # a lone surrogate has no canonical JSON form
        raise SignatureError("the delegations document has no canonical JSON form", where=where) from None
    try:
        trusted.verify(body, doc.signatures)
    except (SignatureError, UnknownKeyError) as exc:
        raise type(exc)(f"delegations document version {document.version}: {exc.message}",
                        where=f"{where}.signatures", hint=exc.hint) from None
    if known is not None:
        if document.version < known.version:
            raise DelegationRollbackError(f"delegations version {document.version} is older than the accepted "
                                          f"version {known.version}", where=f"{where}.version",
                                          hint="a replayed document; the release keys must sign a newer version")
        if document.version == known.version and body != document_bytes(known):
            raise DelegationRollbackError(f"delegations version {document.version} was already accepted with "
                                          "other content", where=f"{where}.version",
                                          hint="every change needs a new, higher version")
    if now is not None and now >= document.expires_at:
        raise DelegationExpiredError(f"delegations document version {document.version} expired at "
                                     f"{document.expires_at} (now {int(now)})", where=f"{where}.expires_at",
                                     hint="sign a fresh version with the release keys")
    return document


@dataclass(frozen=True)
class DelegationCheck:
    """What a verifier knows when it meets a bundle signed by a delegated key."""

    now: float
    known: SignedDelegations | None = None
    """The newest document this verifier accepted (a device's stored one; the controller's current one)."""
    hardware_class: str | None = None
    """The device's hardware class; ``None`` for a verifier that is no device (the controller, the CLI):
    then only the classes the manifest targets are checked."""
    installing: bool = True
    """``False`` when re-verifying a bundle that is already installed (loading a slot at start): the
    chain's signatures and the scope are checked, not the expiries, nor whether a newer document
    revoked the key. Expiry and revocation stop installs, not a model that already serves."""


@dataclass(frozen=True)
class DelegatedSigner:
    """The delegation that authorised a bundle, and the document it is in."""

    delegation: Delegation
    document: SignedDelegations

    @property
    def keyid(self) -> str:
        return self.delegation.keyid


def delegated_signer(manifest_raw: bytes, signatures: list[Signature], *, embedded: SignedDelegations,
                     trusted: TrustedKeys, check: DelegationCheck) -> DelegatedSigner:
    """The delegation whose key signed ``manifest_raw`` under the newest valid document, or raise.

    ``embedded`` is the bundle's own document. It is used when it is not older than ``check.known``
    (and verified then: the caller may keep it as its newest); when the verifier knows a newer one,
    that one decides, so a key it no longer lists is refused as revoked. Does not look inside the
    manifest: :func:`check_scope` does that once the signature holds.
    """
    document = _document(embedded, trusted=trusted, check=check)
    delegations = document.signed
    bad: list[str] = []
    for s in signatures:
        delegation = delegations.by_keyid(s.keyid)
        if delegation is None:
            continue
        if _valid(delegation, s, manifest_raw):
            return DelegatedSigner(delegation, document)
        bad.append(delegation.name)
    if bad:
        raise SignatureError(f"the signature by delegated key {bad[0]!r} does not verify", where="signatures.json",
                             hint="the manifest was altered or the signature is corrupt")
    if document is not embedded:
        _refuse_revoked(manifest_raw, signatures, embedded=embedded, current=delegations, trusted=trusted)
    raise NotDelegatedError(f"no signature by a release key or by a key delegations version {delegations.version} "
                            "delegates", where="signatures.json",
                            hint="sign with a release key, or with a delegated key and its delegations document")


def _document(embedded: SignedDelegations, *, trusted: TrustedKeys, check: DelegationCheck) -> SignedDelegations:
    known = check.known
    if not check.installing:  # re-verifying an installed bundle: its own document, as it was accepted
        verify_document(embedded, trusted=trusted, known=None, now=None, where="delegations.json")
        return embedded
    if known is None or embedded.signed.version >= known.signed.version:
        verify_document(embedded, trusted=trusted, known=known.signed if known else None, now=check.now,
                        where="delegations.json")
        return embedded if known is None or embedded.signed.version > known.signed.version else known
    if check.now >= known.signed.expires_at:  # the newer document the verifier holds decides
        raise DelegationExpiredError(f"delegations document version {known.signed.version} expired at "
                                     f"{known.signed.expires_at} (now {int(check.now)})",
                                     where="delegations.expires_at", hint="sign a fresh version with the release keys")
    return known


def _refuse_revoked(manifest_raw: bytes, signatures: list[Signature], *, embedded: SignedDelegations,
                    current: DelegationsDocument, trusted: TrustedKeys) -> None:
    """Raise :class:`DelegationRevokedError` if a genuine older document delegated the key that signed."""
    try:
        verify_document(embedded, trusted=trusted, known=None, now=None, where="delegations.json")
    except VerificationError:
        return
    for s in signatures:
        old = embedded.signed.by_keyid(s.keyid)
        if old is not None and _valid(old, s, manifest_raw):
            raise DelegationRevokedError(
                f"key {s.keyid[:16]}... was delegated as {old.name!r} in delegations version "
                f"{embedded.signed.version}; the accepted version {current.version} no longer delegates it",
                where="delegations.delegations", hint="the delegation was revoked; sign with a delegated key")


def _valid(delegation: Delegation, signature: Signature, data: bytes) -> bool:
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(delegation.public_key))
    try:
        public.verify(base64.b64decode(signature.sig, validate=True), data)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def check_scope(delegation: Delegation, *, name: str, target_classes: list[str], check: DelegationCheck) -> None:
    """Raise unless a bundle called ``name`` that targets ``target_classes`` (empty: every class) is
    inside ``delegation``, for the device ``check`` describes, now."""
    label = f"delegation {delegation.name!r}"
    if check.installing and check.now >= delegation.expires_at:
        raise DelegationExpiredError(f"{label} expired at {delegation.expires_at} (now {int(check.now)})",
                                     where=f"delegations.{delegation.name}.expires_at",
                                     hint="the release keys must sign a document that renews it")
    if not any(fnmatch.fnmatchcase(name, p) for p in delegation.name_patterns):
        raise DelegationError(f"bundle name {name!r} is outside {label} "
                              f"(patterns {', '.join(delegation.name_patterns)})", where="manifest.name")
    classes = delegation.hardware_classes
    if ANY_HARDWARE_CLASS in classes:
        return
    if check.hardware_class is not None and check.hardware_class not in classes:
        raise DelegationError(f"this device's hardware class {check.hardware_class!r} is outside {label} "
                              f"(classes {', '.join(classes)})", where="device.hardware_class")
    if not target_classes:
        raise DelegationError(f"the bundle targets every hardware class; {label} covers only {', '.join(classes)}",
                              where="manifest.target.hardware_classes",
                              hint="list the hardware classes in the recipe's [target]")
    outside = [c for c in target_classes if c not in classes]
    if outside:
        raise DelegationError(f"the bundle targets hardware classes {', '.join(outside)} outside {label} "
                              f"(classes {', '.join(classes)})", where="manifest.target.hardware_classes")
