"""Ed25519 keys: generate, store (PEM; private files mode 0600; optional passphrase), load,
identify (key id = sha256 of the raw public key, hex) and sign/verify with a threshold.

Two roles use them (docs/security.md): the *release* key signs bundle manifests, the
*controller* key signs deployment orders. A device trusts only the keys provisioned at enrollment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.protocol.errors import ConfigError, SignatureError, UnknownKeyError
from edgefleet.protocol.files import atomic_write
from edgefleet.protocol.messages import Signature


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def private_key_pem(key: Ed25519PrivateKey, passphrase: str | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(passphrase.encode())
                  if passphrase else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def save_private_key(key: Ed25519PrivateKey, path: str | Path, passphrase: str | None = None) -> Path:
    """Write the private key as PEM, readable by the owner only (created 0600, never widened)."""
    return atomic_write(path, private_key_pem(key, passphrase), secret=True)


def save_public_key(key: Ed25519PublicKey, path: str | Path) -> Path:
    return atomic_write(path, public_key_pem(key))


def load_private_key(path: str | Path, passphrase: str | None = None) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read private key: {exc.strerror}", where=str(path)) from None
    try:
        key = serialization.load_pem_private_key(data, passphrase.encode() if passphrase else None)
    except TypeError:
        if passphrase:
            raise ConfigError("a passphrase was given but the private key is not encrypted",
                              where=str(path)) from None
        raise ConfigError("private key is encrypted", where=str(path),
                          hint="give the passphrase (EDGEFLEET_KEY_PASSPHRASE or --passphrase)") from None
    except ValueError:
        raise ConfigError("not a PEM private key, or wrong passphrase", where=str(path)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("private key is not Ed25519", where=str(path))
    return key


def load_public_key_pem(data: bytes, where: str = "public key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigError("not a PEM public key", where=where) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("public key is not Ed25519", where=where)
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read public key: {exc.strerror}", where=str(path)) from None
    return load_public_key_pem(data, where=str(path))


def sign(key: Ed25519PrivateKey, data: bytes) -> Signature:
    return Signature(keyid=key_id(key.public_key()), sig=base64.b64encode(key.sign(data)).decode("ascii"))


@dataclass
class TrustedKeys:
    """The public keys trusted for one role and how many distinct signatures are required."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    threshold: int = 1
    role: str = "release"

    @classmethod
    def of(cls, public_keys: Iterable[Ed25519PublicKey], *, role: str, threshold: int = 1) -> TrustedKeys:
        return cls({key_id(k): k for k in public_keys}, threshold, role)

    @classmethod
    def from_files(cls, paths: Iterable[str | Path], *, role: str, threshold: int = 1) -> TrustedKeys:
        return cls.of([load_public_key(p) for p in paths], role=role, threshold=threshold)

    def replace(self, other: TrustedKeys) -> None:
        """Trust exactly what ``other`` trusts from now on (a new trust root), in place, so every
        holder of this object (updater, delegations, uploader) sees the change at once."""
        self.keys, self.threshold = dict(other.keys), other.threshold

    def verify(self, data: bytes, signatures: Iterable[Signature]) -> set[str]:
        """Return the ids of the trusted keys whose valid signatures meet the threshold.

        Raises :class:`UnknownKeyError` when no signature comes from a trusted key and
        :class:`SignatureError` when signatures from trusted keys do not verify.
        """
        keys, threshold = self.keys, self.threshold   # one snapshot, should a new root replace them meanwhile
        if threshold < 1:  # a threshold of 0 would accept unsigned content
            raise ConfigError(f"{self.role} signature threshold must be at least 1, not {threshold}",
                              where=f"{self.role} threshold")
        valid: set[str] = set()
        seen_trusted = False
        for s in signatures:
            key = keys.get(s.keyid)
            if key is None:
                continue
            seen_trusted = True
            try:
                key.verify(base64.b64decode(s.sig, validate=True), data)
            except (InvalidSignature, binascii.Error, ValueError):
                continue
            valid.add(s.keyid)
        if len(valid) >= threshold:
            return valid
        if not seen_trusted:
            raise UnknownKeyError(f"no signature by a trusted {self.role} key",
                                  where=f"{self.role} signatures",
                                  hint="was this signed with a key the device was enrolled with?")
        raise SignatureError(f"{len(valid)} valid {self.role} signature(s), {threshold} required",
                             where=f"{self.role} signatures",
                             hint="the signed content was altered or the signature is corrupt")
