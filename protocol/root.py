"""Trust roots, TUF-style (docs/security.md §9): keys that rotate without re-enrolling devices.

A trust root (:class:`~edgefleet.protocol.messages.RootDocument`) lists, with a threshold each, the
*root* keys (offline; they sign the next root), the *release* keys (bundles) and the *controller* keys
(orders). A device pins the root it is given at enrollment and accepts version ``n + 1`` only when

    a threshold of version n's root keys  AND  a threshold of version n+1's own root keys

sign its canonical JSON, so a stolen key of one version alone cannot make a root, and a device that
was offline through several rotations walks them one by one. The newest accepted root decides which
release and controller keys the device trusts: a key left out of it (revoked, rotated away) is refused
from then on. Everything here is pure: documents, keys and ``now`` in; a root or an error out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from edgefleet.protocol.canonical import canonical_json
from edgefleet.protocol.delegation import raw_public_key
from edgefleet.protocol.errors import (
    ExpiredError,
    RootError,
    RootRollbackError,
    SignatureError,
    SizeLimitError,
    UnknownKeyError,
    VerificationError,
    first_problem,
)
from edgefleet.protocol.keys import TrustedKeys, sign
from edgefleet.protocol.messages import RoleKeys, RootDocument, SignedRoot

MAX_ROOT_BYTES = 8 * 1024
ROLES = ("root", "release", "controller")


def root_bytes(document: RootDocument) -> bytes:
    """The exact bytes the root keys sign: canonical JSON of the document."""
    return canonical_json(document.model_dump(mode="json"))


def root_json(root: SignedRoot) -> bytes:
    return canonical_json(root.model_dump(mode="json"))


def role_keys(keys: Iterable[Ed25519PublicKey], threshold: int = 1) -> RoleKeys:
    return RoleKeys(keys=sorted({raw_public_key(k) for k in keys}), threshold=threshold)


def trusted(root: RootDocument, role: str) -> TrustedKeys:
    """The keys ``root`` trusts for ``role`` (root, release or controller), with its threshold."""
    keys: RoleKeys = getattr(root, role)
    return TrustedKeys.of([Ed25519PublicKey.from_public_bytes(bytes.fromhex(k)) for k in keys.keys],
                          role=role, threshold=keys.threshold)


def sign_root(document: RootDocument, keys: Iterable[Ed25519PrivateKey]) -> SignedRoot:
    """Sign ``document`` with every key given (the previous version's root keys and its own)."""
    body = root_bytes(document)
    signatures = {s.keyid: s for s in (sign(k, body) for k in keys)}
    return SignedRoot(signed=document, signatures=list(signatures.values()))


def parse_root(raw: bytes | str, *, where: str = "root") -> SignedRoot:
    """Parse a signed root (NOT verified: :func:`verify_next` and :func:`verify_self` do that)."""
    if len(raw) > MAX_ROOT_BYTES:
        raise SizeLimitError(f"trust root of {len(raw)} bytes exceeds {MAX_ROOT_BYTES}", where=where)
    try:
        return SignedRoot.model_validate_json(raw)
    except ValidationError as exc:
        loc, problem = first_problem(exc)
        raise VerificationError(f"trust root is invalid: {problem}", where=f"{where}: {loc}" if loc else where) \
            from None


def _signed_by(root: SignedRoot, keys: TrustedKeys, *, whose: str, where: str) -> None:
    try:
        body = root_bytes(root.signed)
    except ValueError:
        raise SignatureError("the trust root has no canonical JSON form", where=where) from None
    try:
        keys.verify(body, root.signatures)
    except (SignatureError, UnknownKeyError) as exc:
        raise RootError(f"trust root version {root.signed.version} lacks a threshold ({keys.threshold}) of "
                        f"signatures by {whose}: {exc.message}", where=f"{where}.signatures",
                        hint="a root is signed by the previous version's root keys and by its own") from None


def verify_self(root: SignedRoot, *, where: str = "root") -> RootDocument:
    """A root signed by a threshold of its own root keys: how a device checks the root it pins at
    enrollment (trust on first use, over the enrollment's HTTPS) and re-reads the one it stored."""
    _signed_by(root, trusted(root.signed, "root"), whose="its own root keys", where=where)
    return root.signed


def verify_next(root: SignedRoot, *, known: RootDocument, where: str = "root") -> RootDocument:
    """``root`` if it is the version after ``known`` and signed by a threshold of ``known``'s root
    keys and of its own; the same document again is returned as ``known``."""
    new = root.signed
    if new.version <= known.version:
        if new.version == known.version and root_bytes(new) == root_bytes(known):
            return known
        raise RootRollbackError(f"trust root version {new.version} is not newer than the accepted version "
                                f"{known.version}", where=f"{where}.version",
                                hint="a replayed or forged root; the root keys must sign version "
                                     f"{known.version + 1}")
    if new.version != known.version + 1:
        raise RootError(f"trust root version {new.version} does not follow the accepted version {known.version}",
                        where=f"{where}.version", hint=f"give every version from {known.version + 1} on, in order")
    _signed_by(root, trusted(known, "root"), whose=f"the root keys of version {known.version}", where=where)
    _signed_by(root, trusted(new, "root"), whose="its own root keys", where=where)
    return new


def adopt_first(root: SignedRoot, *, release: TrustedKeys, where: str = "root") -> RootDocument:
    """The first root of a device that has none yet (enrolled before roots, trusting its configured
    keys): signed by a threshold of its own root keys *and* of the release keys the device trusts."""
    verify_self(root, where=where)
    _signed_by(root, release, whose="the release keys this device trusts", where=where)
    return root.signed


def walk(roots: Sequence[SignedRoot], *, known: RootDocument | None, now: float,
         release: TrustedKeys | None = None, where: str = "roots") -> RootDocument:
    """Follow ``roots`` (any order) from ``known`` to the newest, each checked by :func:`verify_next`
    (versions before ``known``'s are skipped); with no root known yet, the oldest given is adopted by
    :func:`adopt_first` against ``release``. The newest must not have expired (the versions in
    between may have: a device offline for long still catches up)."""
    ordered = sorted(roots, key=lambda r: r.signed.version)
    if not ordered:
        raise RootError("no trust root given", where=where)
    current = known
    for i, root in enumerate(ordered):
        if current is None:
            if release is None:
                raise RootError("this verifier holds no trust root to follow from", where=where)
            current = adopt_first(root, release=release, where=f"{where}[{i}]")
        elif root.signed.version < current.version:
            continue   # older than what is held: irrelevant (a rollback is refused when it is offered alone)
        else:
            current = verify_next(root, known=current, where=f"{where}[{i}]")
    assert current is not None   # ordered is not empty: the loop adopted or kept one
    if current is not known and now >= current.expires_at:
        raise ExpiredError(f"trust root version {current.version} expired at {current.expires_at} (now {int(now)})",
                           where=f"{where}.expires_at", hint="the root keys must sign a fresh version")
    return current


def changes(old: RootDocument, new: RootDocument) -> dict[str, dict[str, list[str]]]:
    """Per role, the keys ``new`` adds and removes (hex), for logs and audit entries."""
    out = {}
    for role in ROLES:
        before, after = set(getattr(old, role).keys), set(getattr(new, role).keys)
        if before != after or getattr(old, role).threshold != getattr(new, role).threshold:
            out[role] = {"added": sorted(after - before), "removed": sorted(before - after)}
    return out
