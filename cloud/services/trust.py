"""The controller's keys: its order-signing key (loaded, or generated on first start), the
release keys trusted to sign bundles (configured files plus keys registered through the API), the
delegations document in force (docs/security.md §6: the release keys, kept offline, delegate a scoped
key to automation) and the key server-side builds sign with (:func:`bundle_signer`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlmodel import Session, col, select

from edgefleet.cloud.services import audit
from edgefleet.cloud.store.tables import DelegationsRecord, Device, ReleaseKey, TrustRootRecord
from edgefleet.protocol.delegation import (
    MAX_DOCUMENT_BYTES,
    DelegationCheck,
    delegations_json,
    parse_delegations,
    verify_document,
)
from edgefleet.protocol.errors import ConfigError, ConflictError, InvalidRequestError, NotFoundError, SizeLimitError
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
from edgefleet.protocol.messages import (
    MAX_ROOTS,
    Delegation,
    DelegationsMessage,
    RootsMessage,
    SignedDelegations,
    SignedRoot,
    encode,
)
from edgefleet.protocol.root import changes, parse_root, root_json, trusted, verify_next, verify_self
from edgefleet.protocol.topics import cmd

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
    """The release keys of the trust root in force; before the first root, the configured ones and
    those registered through the API."""
    root = current_root(session)
    if root is not None:
        return trusted(root.signed, "release")
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


# --------------------------------------------------------------------------- trust roots

def _root_record(session: Session) -> TrustRootRecord | None:
    return session.exec(select(TrustRootRecord).order_by(col(TrustRootRecord.version).desc())).first()


def current_root(session: Session) -> SignedRoot | None:
    """The trust root in force: the highest version pushed (``None`` before the first)."""
    row = _root_record(session)
    return parse_root(row.document, where=f"stored trust root version {row.version}") if row else None


def roots_after(session: Session, version: int | None) -> list[SignedRoot]:
    """Every stored root newer than ``version`` (all of them for ``None``), oldest first, at most
    :data:`MAX_ROOTS` (a device further behind walks the rest after its next hello)."""
    query = select(TrustRootRecord).where(col(TrustRootRecord.version) > (version or 0))
    rows = session.exec(query.order_by(col(TrustRootRecord.version)).limit(MAX_ROOTS))
    return [parse_root(r.document, where=f"stored trust root version {r.version}") for r in rows]


def push_root(session: Session, *, root: SignedRoot, actor: str, now: float) -> tuple[TrustRootRecord, bool]:
    """Store a new trust root: the first one signed by a threshold of its own root keys (the
    operator's bootstrap), each later one the next version, signed by the root keys of the one in
    force and by its own. ``(record, created)``: pushing the current root again changes nothing."""
    raw = root_json(root)
    current = _root_record(session)
    if current is not None and current.document == raw.decode():
        return current, False
    known = parse_root(current.document) if current is not None else None
    if known is None:
        verify_self(root, where="body")
    else:
        verify_next(root, known=known.signed, where="body")
    new = root.signed
    if now >= new.expires_at:
        raise InvalidRequestError(f"trust root version {new.version} expired at {new.expires_at}",
                                  where="body.signed.expires_at", hint="sign it with a later expiry")
    row = TrustRootRecord(version=new.version, document=raw.decode(), expires_at=new.expires_at, pushed_at=now,
                          pushed_by=actor)
    session.add(row)
    details = {"version": new.version, "expires_at": new.expires_at,
               "changes": changes(known.signed, new) if known else "first root"}
    audit.record(session, actor=actor, action="trust_root.push", target=f"trust_root:{new.version}",
                 details=details, now=now)
    log.warning("trust root version %d in force: %s", new.version, details["changes"])
    return row, True


def root_messages(session: Session, *, prefix: str, device_ids: Iterable[str] | None = None) -> list[tuple[str, bytes]]:
    """``(topic, payload)`` of a ``roots`` message for every enrolled device (or those of
    ``device_ids``) whose last hello named an older root than the one in force."""
    latest = _root_record(session)
    if latest is None:
        return []
    query = select(Device.id, Device.root_version).where(Device.mqtt_password_hash != "")
    if device_ids is not None:
        query = query.where(col(Device.id).in_(list(device_ids)))
    out = []
    for device_id, version in session.exec(query):
        if (version or 0) < latest.version:
            roots = roots_after(session, version)
            out.append((cmd(device_id, prefix), encode(RootsMessage(device_id=device_id, roots=roots))))
    return out


# --------------------------------------------------------------------------- delegations

def delegations_record(session: Session) -> DelegationsRecord | None:
    """The delegations document in force: the highest version pushed (``None`` before the first)."""
    return session.exec(select(DelegationsRecord).order_by(col(DelegationsRecord.version).desc())).first()


def current_delegations(session: Session) -> SignedDelegations | None:
    row = delegations_record(session)
    return parse_delegations(row.document, where=f"stored delegations version {row.version}") if row else None


def delegation_check(session: Session, *, now: float) -> DelegationCheck:
    """How the controller judges a bundle signed by a delegated key (registry uploads and builds): under
    its current document (or a newer valid one the bundle carries), for the classes the manifest targets."""
    return DelegationCheck(now=now, known=current_delegations(session))


def push_delegations(session: Session, *, document: SignedDelegations, trusted: TrustedKeys, actor: str,
                     now: float) -> tuple[DelegationsRecord, bool]:
    """Store a new delegations document once it verifies against the trusted release keys (threshold),
    is newer than the current one and has not expired. ``(record, created)``: pushing the current
    document again changes nothing."""
    raw = delegations_json(document)
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise SizeLimitError(f"delegations document of {len(raw)} bytes exceeds {MAX_DOCUMENT_BYTES}", where="body")
    current = delegations_record(session)
    if current is not None and current.document == raw.decode():
        return current, False
    known = parse_delegations(current.document) if current is not None else None
    verify_document(document, trusted=trusted, known=known.signed if known else None, now=now, where="body")
    signed = document.signed
    row = DelegationsRecord(version=signed.version, document=raw.decode(), expires_at=signed.expires_at,
                            pushed_at=now, pushed_by=actor)
    session.add(row)
    before = {d.name for d in known.signed.delegations} if known else set()
    after = {d.name for d in signed.delegations}
    audit.record(session, actor=actor, action="delegations.push", target=f"delegations:{signed.version}",
                 details={"version": signed.version, "delegations": sorted(after), "added": sorted(after - before),
                          "revoked": sorted(before - after), "expires_at": signed.expires_at}, now=now)
    log.warning("delegations version %d in force: %s%s", signed.version, ", ".join(sorted(after)) or "none",
                f" (revoked: {', '.join(sorted(before - after))})" if before - after else "")
    return row, True


def delegation_messages(session: Session, *, prefix: str,
                        device_ids: Iterable[str] | None = None) -> list[tuple[str, bytes]]:
    """``(topic, payload)`` of a ``delegations`` message with the current document for every enrolled
    device (or those of ``device_ids``); none before the first document."""
    doc = current_delegations(session)
    if doc is None:
        return []
    query = select(Device.id).where(Device.mqtt_password_hash != "")
    if device_ids is not None:
        query = query.where(col(Device.id).in_(list(device_ids)))
    return [(cmd(device_id, prefix), encode(DelegationsMessage(device_id=device_id, delegations=doc)))
            for device_id in session.exec(query)]


@dataclass(frozen=True)
class BundleSigner:
    """The key a server-side build signs with, and the delegations document to embed with it
    (``None`` when ``key`` is a release key): ``build_bundle(..., release_key=signer.key,
    delegations=signer.delegations)``."""

    key: Ed25519PrivateKey
    delegations: SignedDelegations | None = None
    delegation: Delegation | None = None

    @property
    def key_id(self) -> str:
        return key_id(self.key.public_key())


def load_delegated_signing_key(path: Path | None, passphrase: str | None) -> Ed25519PrivateKey | None:
    """The opt-in delegated key for server-side builds (``None`` when not configured)."""
    if path is None:
        return None
    key = load_private_key(path, passphrase)
    log.info("the controller holds a delegated signing key (key id %s): it signs only what its delegation allows",
             key_id(key.public_key())[:16])
    return key


def bundle_signer(session: Session, *, delegated_key: Ed25519PrivateKey | None,
                  release_key: Ed25519PrivateKey | None, now: float) -> BundleSigner:
    """The key a server-side build signs with: the delegated key (setting ``delegated_signing_key_path``)
    with the current delegations document when configured, else the opt-in release key
    (``release_signing_key_path``). Raises :class:`ConflictError` when the controller holds neither, or
    when the current document does not delegate the key (or it expired), so a build fails before it
    signs anything devices would refuse. ``Controller.bundle_signer(session)`` passes the loaded keys."""
    if delegated_key is not None:
        kid = key_id(delegated_key.public_key())
        doc = current_delegations(session)
        delegation = doc.signed.by_keyid(kid) if doc is not None else None
        if doc is None or delegation is None:
            version = f"version {doc.signed.version}" if doc is not None else "none yet"
            raise ConflictError(f"the delegated signing key {kid[:16]}... is not delegated by the controller's "
                                f"delegations document ({version})", where="delegated_signing_key_path",
                                hint="delegate it (edgefleet keys delegate --public-key ...) and push the document "
                                     "(edgefleet keys delegations push)")
        for what, expires_at in (("delegations document", doc.signed.expires_at),
                                 (f"delegation {delegation.name!r}", delegation.expires_at)):
            if now >= expires_at:
                raise ConflictError(f"the {what} expired at {expires_at}", where="delegated_signing_key_path",
                                    hint="renew it with the release keys (edgefleet keys delegate ... --from) and push")
        return BundleSigner(delegated_key, doc, delegation)
    if release_key is None:
        raise ConflictError("this controller does not build bundles: it holds no signing key",
                            where="release_signing_key_path",
                            hint="build and sign with `edgefleet bundle build` and upload, or set "
                                 "EDGEFLEET_DELEGATED_SIGNING_KEY_PATH to a delegated key (or, opt-in, "
                                 "EDGEFLEET_RELEASE_SIGNING_KEY_PATH; see docs/security.md)")
    return BundleSigner(release_key)
