"""API tokens, roles and signed download links.

Tokens are random (``eft_`` + 256 bits), shown once, stored as SHA-256 hashes (a fast hash is enough
for a 256-bit random secret: nobody can guess one, so there is nothing for a slow hash to slow down;
passwords, which people choose, get argon2id in :mod:`.users`). Roles, each including the rights of
those before it: ``viewer`` (read), ``operator`` (read + change fleet state), ``approver`` (+ approve
rollouts to protected devices), ``admin`` (+ users, tokens, keys); and ``device`` (download bundles;
bound to one device id).

A *personal* token belongs to a user (``ApiToken.user_id``): it acts as ``user:NAME`` in the audit
log, with the lower of its own role and its owner's current role; it stops working when it expires,
is revoked or its owner is disabled. Shared tokens (no user) act as ``ROLE:NAME`` as before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, col, select

from edgefleet.cloud.services import audit
from edgefleet.cloud.store.tables import ApiToken, User
from edgefleet.cloud.vocabulary import OPERATOR_ROLES, Role
from edgefleet.protocol.errors import EdgeFleetError, InvalidRequestError, NotFoundError

log = logging.getLogger(__name__)

_RANK: dict[str, int] = {role: i + 1 for i, role in enumerate(OPERATOR_ROLES)}
"""viewer 1 < operator 2 < approver 3 < admin 4; a device token ranks 0 (none of a person's rights)."""
TOKEN_PREFIX = "eft_"
LAST_USED_EVERY_S = 60.0
"""A token's ``last_used_at`` is written at most this often (not one database write per request)."""


class AuthenticationError(EdgeFleetError):
    """No credentials, or credentials that match no live token."""

    code = "unauthenticated"


class PermissionDeniedError(EdgeFleetError):
    code = "forbidden"


def rank(role: str) -> int:
    """Where ``role`` stands among the roles of people (0: a device's, or no role at all)."""
    return _RANK.get(role, 0)


def lower_role(a: str, b: str) -> str:
    return a if rank(a) <= rank(b) else b


@dataclass(frozen=True)
class Principal:
    """Who is calling: used for permission checks and as the audit actor."""

    name: str
    role: str
    device_id: str | None = None
    user: str | None = None
    """The person, for a personal token or a password sign-in; ``None`` for shared and device tokens."""
    token_id: int | None = None

    def refusal(self, role: Role) -> str | None:
        """Why this principal may not act with ``role``'s rights; ``None`` when it may."""
        if self.role == Role.DEVICE or rank(self.role) < rank(role):
            return f"{self.name} ({self.role}) may not do this; needs {role}"
        return None

    def require(self, role: Role) -> Principal:
        refusal = self.refusal(role)
        if refusal is not None:
            raise PermissionDeniedError(refusal, hint=f"use a token with the {role} role")
        return self

    @property
    def actor(self) -> str:
        """The name in the audit log and in ``created_by``/``approved_by``: ``user:NAME`` for a person,
        whichever of their tokens they use; ``ROLE:NAME`` for a shared or device token."""
        return f"user:{self.user}" if self.user else f"{self.role}:{self.name}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret(prefix: str = TOKEN_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)


def create_token(session: Session, *, name: str, role: Role, actor: str, now: float,
                 device_id: str | None = None, secret: str | None = None, user: User | None = None,
                 expires_at: float | None = None, ui_session: bool = False) -> tuple[ApiToken, str]:
    """Create a token; return the row and the plaintext (the only time it is visible). With ``user``,
    a personal token of that user: its role must be one of a person's and at most the user's."""
    role = Role(role)
    if user is not None and rank(role) > rank(user.role):
        raise PermissionDeniedError(f"a token of {user.name} ({user.role}) may not have the {role} role",
                                    where="role", hint=f"choose a role up to {user.role}")
    if expires_at is not None and expires_at <= now:
        raise InvalidRequestError("the token would expire before it is made", where="expires_in_s",
                                  hint="give a lifetime of at least a minute")
    secret = secret or new_secret()
    row = ApiToken(name=name, token_hash=hash_secret(secret), role=role, device_id=device_id,
                   created_at=now, created_by=actor, user_id=user.id if user else None, expires_at=expires_at,
                   ui_session=ui_session)
    session.add(row)
    session.flush()
    if role != Role.DEVICE and not ui_session:
        details: dict[str, object] = {"name": name, "role": role}
        if user is not None:
            details |= {"user": user.name, "expires_at": expires_at}
        audit.record(session, actor=actor, action="token.create", target=f"token:{row.id}", details=details, now=now)
    return row, secret


def identify(session: Session, *, secret: str | None, now: float | None = None) -> Principal | None:
    """Who holds ``secret``; ``None`` for no secret or one that matches no live token (revoked, expired,
    or of a disabled user). ``now``: the controller's clock (without it, the wall clock judges expiry and
    ``last_used_at`` is left alone)."""
    if not secret:
        return None
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_secret(secret))).first()
    if row is None or row.revoked_at is not None:
        return None
    at = time.time() if now is None else now
    if row.expires_at is not None and at >= row.expires_at:
        return None
    owner = session.get(User, row.user_id) if row.user_id is not None else None
    if row.user_id is not None and (owner is None or owner.disabled_at is not None):
        return None
    if now is not None and (row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY_S):
        row.last_used_at = now
        session.add(row)
    if owner is not None:
        return Principal(name=owner.name, role=lower_role(row.role, owner.role), user=owner.name, token_id=row.id)
    return Principal(name=row.device_id or row.name, role=row.role, device_id=row.device_id, token_id=row.id)


def authenticate(session: Session, *, secret: str | None, now: float | None = None) -> Principal:
    """Like :func:`identify`, but a missing or unknown token raises :class:`AuthenticationError`."""
    principal = identify(session, secret=secret, now=now)
    if principal is None:
        if not secret:
            raise AuthenticationError("missing API token", where="Authorization",
                                      hint="send 'Authorization: Bearer <token>'")
        raise AuthenticationError("invalid, expired or revoked API token", where="Authorization")
    return principal


def list_tokens(session: Session) -> list[ApiToken]:
    """Operator tokens; device tokens come and go with enrollment and decommissioning."""
    return list(session.exec(select(ApiToken).where(ApiToken.role != Role.DEVICE).order_by(col(ApiToken.id))))


def user_tokens(session: Session, *, user: User) -> list[ApiToken]:
    """A user's personal tokens (UI sign-in sessions included), newest first."""
    return list(session.exec(select(ApiToken).where(ApiToken.user_id == user.id).order_by(col(ApiToken.id).desc())))


def revoke_token(session: Session, *, token_id: int, actor: str, now: float, user: User | None = None) -> ApiToken:
    """Revoke a token (with ``user``: only one of theirs; another's is "not found", as if it did not exist)."""
    row = session.get(ApiToken, token_id)
    if row is None or (user is not None and row.user_id != user.id):
        raise NotFoundError(f"no token {token_id}" + (f" of {user.name}" if user is not None else ""),
                            where="token_id")
    if row.revoked_at is None:
        row.revoked_at = now
        session.add(row)
        audit.record(session, actor=actor, action="token.revoke", target=f"token:{token_id}",
                     details={"name": row.name}, now=now)
    return row


def end_ui_session(session: Session, *, secret: str, now: float) -> bool:
    """Revoke the UI session token ``secret`` (a password sign-in's); a pasted API token is left alone.
    Whether one was revoked."""
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_secret(secret))).first()
    if row is None or not row.ui_session or row.revoked_at is not None:
        return False
    row.revoked_at = now
    session.add(row)
    return True


def revoke_device_tokens(session: Session, *, device_id: str, now: float) -> None:
    for row in session.exec(select(ApiToken).where(ApiToken.device_id == device_id,
                                                   col(ApiToken.revoked_at).is_(None))):
        row.revoked_at = now
        session.add(row)


def ensure_admin_token(session: Session, *, secret: str | None, now: float) -> str | None:
    """Make sure an admin can log in.

    With ``secret`` (from the settings) that token is registered if missing and ``None`` is
    returned. Without it, an admin token is generated only when no admin token and no enabled
    admin user exist yet, and its plaintext is returned (to be printed once).
    """
    if secret:
        exists = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_secret(secret))).first()
        if exists is None:
            create_token(session, name="admin", role=Role.ADMIN, actor="system", now=now, secret=secret)
        return None
    exists = session.exec(select(ApiToken).where(ApiToken.role == Role.ADMIN,
                                                 col(ApiToken.revoked_at).is_(None))).first()
    admin = session.exec(select(User).where(User.role == Role.ADMIN, col(User.disabled_at).is_(None))).first()
    if exists is not None or admin is not None:
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
