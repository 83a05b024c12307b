"""API tokens, roles and signed download links.

Tokens are random (``eft_`` + 256 bits), shown once, stored as SHA-256 hashes. Roles:
``viewer`` (read), ``operator`` (read + change fleet state), ``admin`` (+ tokens, keys) and
``device`` (download bundles; bound to one device id).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, col, select

from edgefleet.cloud.services import audit
from edgefleet.cloud.store.tables import ApiToken
from edgefleet.cloud.vocabulary import Role
from edgefleet.protocol.errors import EdgeFleetError, NotFoundError

log = logging.getLogger(__name__)

_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}
TOKEN_PREFIX = "eft_"


class AuthenticationError(EdgeFleetError):
    """No credentials, or credentials that match no live token."""

    code = "unauthenticated"


class PermissionDeniedError(EdgeFleetError):
    code = "forbidden"


@dataclass(frozen=True)
class Principal:
    """Who is calling: used for permission checks and as the audit actor."""

    name: str
    role: str
    device_id: str | None = None

    def refusal(self, role: Role) -> str | None:
        """Why this principal may not act with ``role``'s rights; ``None`` when it may."""
        if self.role == Role.DEVICE or _RANK.get(Role(self.role), 0) < _RANK[role]:
            return f"{self.name} ({self.role}) may not do this; needs {role}"
        return None

    def require(self, role: Role) -> Principal:
        refusal = self.refusal(role)
        if refusal is not None:
            raise PermissionDeniedError(refusal, hint=f"use a token with the {role} role")
        return self

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.name}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret(prefix: str = TOKEN_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)


def create_token(session: Session, *, name: str, role: Role, actor: str, now: float,
                 device_id: str | None = None, secret: str | None = None) -> tuple[ApiToken, str]:
    """Create a token; return the row and the plaintext (the only time it is visible)."""
    role = Role(role)
    secret = secret or new_secret()
    row = ApiToken(name=name, token_hash=hash_secret(secret), role=role, device_id=device_id,
                   created_at=now, created_by=actor)
    session.add(row)
    session.flush()
    if role != Role.DEVICE:
        audit.record(session, actor=actor, action="token.create", target=f"token:{row.id}",
                     details={"name": name, "role": role}, now=now)
    return row, secret


def identify(session: Session, *, secret: str | None) -> Principal | None:
    """Who holds ``secret``; ``None`` for no secret or one that matches no live token."""
    if not secret:
        return None
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_secret(secret))).first()
    if row is None or row.revoked_at is not None:
        return None
    return Principal(name=row.device_id or row.name, role=row.role, device_id=row.device_id)


def authenticate(session: Session, *, secret: str | None) -> Principal:
    """Like :func:`identify`, but a missing or unknown token raises :class:`AuthenticationError`."""
    principal = identify(session, secret=secret)
    if principal is None:
        if not secret:
            raise AuthenticationError("missing API token", where="Authorization",
                                      hint="send 'Authorization: Bearer <token>'")
        raise AuthenticationError("invalid or revoked API token", where="Authorization")
    return principal


def list_tokens(session: Session) -> list[ApiToken]:
    """Operator tokens; device tokens come and go with enrollment and decommissioning."""
    return list(session.exec(select(ApiToken).where(ApiToken.role != Role.DEVICE).order_by(col(ApiToken.id))))


def revoke_token(session: Session, *, token_id: int, actor: str, now: float) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFoundError(f"no token {token_id}", where="token_id")
    if row.revoked_at is None:
        row.revoked_at = now
        session.add(row)
        audit.record(session, actor=actor, action="token.revoke", target=f"token:{token_id}",
                     details={"name": row.name}, now=now)
    return row


def revoke_device_tokens(session: Session, *, device_id: str, now: float) -> None:
    for row in session.exec(select(ApiToken).where(ApiToken.device_id == device_id,
                                                   col(ApiToken.revoked_at).is_(None))):
        row.revoked_at = now
        session.add(row)


def ensure_admin_token(session: Session, *, secret: str | None, now: float) -> str | None:
    """Make sure an admin can log in.

    With ``secret`` (from the settings) that token is registered if missing and ``None`` is
    returned. Without it, an admin token is generated only when no admin token exists yet,
    and its plaintext is returned (to be printed once).
    """
    if secret:
        exists = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_secret(secret))).first()
        if exists is None:
            create_token(session, name="admin", role=Role.ADMIN, actor="system", now=now, secret=secret)
        return None
    exists = session.exec(select(ApiToken).where(ApiToken.role == Role.ADMIN,
                                                 col(ApiToken.revoked_at).is_(None))).first()
    if exists is not None:
        return None
    _, plaintext = create_token(session, name="admin", role=Role.ADMIN, actor="system", now=now)
    return plaintext


def mosquitto_password_hash(password: str, *, salt: bytes | None = None, iterations: int = 101) -> str:
    """Hash in Mosquitto's password-file format (``$7$`` = PBKDF2-SHA512), so
    ``GET /api/v1/broker/passwd`` can export a ready ``password_file``."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_mosquitto_password(password: str, hashed: str) -> bool:
    try:
        _, seven, iterations, salt, _ = hashed.split("$")
        salt_bytes = base64.b64decode(salt)
    except ValueError:
        return False
    expected = mosquitto_password_hash(password, salt=salt_bytes, iterations=int(iterations))
    return seven == "7" and hmac.compare_digest(expected, hashed)


def _download_message(digest: str, expires_at: int) -> bytes:
    return f"edgefleet-download:{digest}:{expires_at}".encode()


def download_token(key: Ed25519PrivateKey, *, digest: str, expires_at: int) -> str:
    """A short-lived token for ``?token=`` on a bundle download URL, signed by the controller key."""
    sig = key.sign(_download_message(digest, expires_at))
    return f"{expires_at}.{base64.urlsafe_b64encode(sig).decode().rstrip('=')}"


def check_download_token(key: Ed25519PrivateKey, *, digest: str, token: str, now: float) -> None:
    try:
        expires_text, sig_text = token.split(".", 1)
        expires_at = int(expires_text)
        sig = base64.urlsafe_b64decode(sig_text + "=" * (-len(sig_text) % 4))
        key.public_key().verify(sig, _download_message(digest, expires_at))
    except (ValueError, InvalidSignature):
        raise AuthenticationError("invalid download token", where="token") from None
    if now >= expires_at:
        raise AuthenticationError("download token expired", where="token",
                                  hint="ask the controller for a fresh order or use the device API token")
