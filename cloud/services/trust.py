"""The controller's keys: its order-signing key (loaded, or generated on first start) and the
release keys trusted to sign bundles (configured files plus keys registered through the API)."""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlmodel import Session, col, select

from edgefleet.cloud.services import audit
from edgefleet.cloud.store.tables import ReleaseKey
from edgefleet.protocol.errors import ConfigError, ConflictError, InvalidRequestError, NotFoundError
from edgefleet.protocol.keys import (
    TrustedKeys,
    generate_private_key,
    key_id,
    load_private_key,
    load_public_key,
    load_public_key_pem,
    public_key_pem,
    save_private_key,
)

log = logging.getLogger(__name__)


def load_or_create_controller_key(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        return load_private_key(path)
    key = generate_private_key()
    save_private_key(key, path)
    log.warning("generated controller signing key %s (key id %s)", path, key_id(key.public_key())[:16])
    return key


def load_release_signing_key(path: Path | None, passphrase: str | None) -> Ed25519PrivateKey | None:
    """The opt-in release key for server-side bundle builds (``None`` when not configured)."""
    if path is None:
        return None
    key = load_private_key(path, passphrase)
    log.warning("the controller holds a release signing key (key id %s): it can sign bundles",
                key_id(key.public_key())[:16])
    return key


def configured_release_keys(paths: list[Path]) -> list[Ed25519PublicKey]:
    return [load_public_key(p) for p in paths]


def release_keys(session: Session, *, configured: list[Ed25519PublicKey]) -> list[Ed25519PublicKey]:
    stored = [load_public_key_pem(row.pem.encode(), where=f"release key {row.key_id}")
              for row in session.exec(select(ReleaseKey))]
    return configured + stored


def trusted_release_keys(session: Session, *, configured: list[Ed25519PublicKey]) -> TrustedKeys:
    return TrustedKeys.of(release_keys(session, configured=configured), role="release")


def list_release_keys(session: Session) -> list[ReleaseKey]:
    return list(session.exec(select(ReleaseKey).order_by(col(ReleaseKey.added_at))))


def add_release_key(session: Session, *, pem: str, name: str, actor: str, now: float) -> ReleaseKey:
    try:
        key = load_public_key_pem(pem.encode(), where="pem")
    except ConfigError as exc:
        raise InvalidRequestError(exc.message, where="pem", hint="send an Ed25519 public key in PEM form") from None
    kid = key_id(key)
    if session.get(ReleaseKey, kid) is not None:
        raise ConflictError(f"release key {kid[:16]}... is already trusted", where="pem")
    row = ReleaseKey(key_id=kid, name=name, pem=public_key_pem(key).decode(), added_at=now, added_by=actor)
    session.add(row)
    audit.record(session, actor=actor, action="release_key.add", target=f"release_key:{kid}",
                 details={"name": name}, now=now)
    return row


def remove_release_key(session: Session, *, key_id_: str, actor: str, now: float) -> None:
    row = session.get(ReleaseKey, key_id_)
    if row is None:
        raise NotFoundError(f"no registered release key {key_id_}", where="key_id")
    session.delete(row)
    audit.record(session, actor=actor, action="release_key.remove", target=f"release_key:{key_id_}", now=now)
