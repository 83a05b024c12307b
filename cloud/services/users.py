"""People who sign in: named users with a role and an argon2id password (docs/security.md, "People and roles").

Users are never deleted, only disabled, so every ``user:NAME`` in the audit log keeps naming someone.
A disabled user can neither sign in nor use any of their tokens (:func:`edgefleet.cloud.services.auth.identify`).

Passwords: argon2id through ``argon2-cffi`` with the parameters of :class:`PasswordPolicy`; a stored hash
made with other parameters is rehashed at the next successful sign-in. :func:`verify_password` costs one
argon2 verification whether or not the user exists, is disabled or has no password (a dummy hash stands
in), so the answer time does not tell which names exist; every refusal has the same message.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlmodel import Session, col, select

from edgefleet.cloud.services import audit
from edgefleet.cloud.services.auth import AuthenticationError, rank
from edgefleet.cloud.store.tables import User
from edgefleet.cloud.vocabulary import OPERATOR_ROLES, Role
from edgefleet.protocol.errors import ConflictError, InvalidRequestError, NotFoundError

log = logging.getLogger(__name__)

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.@-]{0,63}$"
"""Lower case only: ``Alice`` and ``alice`` would be two names for one person to the approval rule."""
MAX_PASSWORD_CHARS = 1024
"""Longer passwords are refused before hashing (argon2 takes any length; this bounds the work per request)."""
SIGN_IN_REFUSED = "unknown user name or wrong password"


@dataclass(frozen=True)
class PasswordPolicy:
    """The shortest password accepted and the argon2id cost (``ControllerSettings.password_*``)."""

    min_length: int = 12
    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 4


@dataclass(frozen=True)
class _Hashing:
    hasher: PasswordHasher
    dummy_hash: str
    """What an unknown user's password is checked against, so that costs the same as a known one."""


@lru_cache(maxsize=8)
def _hashing(time_cost: int, memory_kib: int, parallelism: int) -> _Hashing:
    hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
    return _Hashing(hasher, hasher.hash("edgefleet-no-such-user"))


def _hashing_of(policy: PasswordPolicy) -> _Hashing:
    return _hashing(policy.time_cost, policy.memory_kib, policy.parallelism)


def hash_password(password: str, *, policy: PasswordPolicy) -> str:
    """The argon2id hash (PHC string) of a password that meets ``policy``; else :class:`InvalidRequestError`."""
    check_password(password, policy=policy)
    return _hashing_of(policy).hasher.hash(password)


def check_password(password: str, *, policy: PasswordPolicy, where: str = "password") -> None:
    if len(password) < policy.min_length:
        raise InvalidRequestError(f"the password has {len(password)} characters; at least {policy.min_length} "
                                  "are needed", where=where, hint="choose a longer password (a passphrase of a few "
                                                                  "words is fine)")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidRequestError(f"the password is longer than {MAX_PASSWORD_CHARS} characters", where=where)
    if password != password.strip():
        raise InvalidRequestError("the password starts or ends with white space", where=where,
                                  hint="white space at the ends is easily lost when typing or pasting it")


def password_matches(stored: str | None, password: str, *, policy: PasswordPolicy) -> bool:
    """Whether ``password`` matches the ``stored`` hash; one argon2 verification either way (``stored``
    ``None``: against the dummy hash, always ``False``)."""
    hashing = _hashing_of(policy)
    if len(password) > MAX_PASSWORD_CHARS:
        password = password[:MAX_PASSWORD_CHARS]
    try:
        return hashing.hasher.verify(stored or hashing.dummy_hash, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def check_name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidRequestError(f"{name[:80]!r} is not a user name", where="name",
                                  hint="1-64 characters: lower-case letters, digits, '_', '.', '@', '-'; "
                                       "starting with a letter or digit")
    return name


def person_role(role: str, *, where: str = "role") -> Role:
    if role not in OPERATOR_ROLES:
        raise InvalidRequestError(f"{role[:40]!r} is not a role of a person", where=where,
                                  hint=f"one of {', '.join(OPERATOR_ROLES)}")
    return Role(role)


def get_user(session: Session, *, name: str) -> User:
    user = session.exec(select(User).where(User.name == name)).first()
    if user is None:
        raise NotFoundError(f"no user {name[:80]!r}", where="name", hint="see GET /api/v1/users")
    return user


def find_user(session: Session, *, name: str) -> User | None:
    return session.exec(select(User).where(User.name == name)).first()


def list_users(session: Session) -> list[User]:
    return list(session.exec(select(User).order_by(col(User.name))))


def create_user(session: Session, *, name: str, role: str, actor: str, now: float, policy: PasswordPolicy,
                password: str | None = None, display_name: str = "") -> User:
    """A new user; without ``password`` they cannot sign in with one until it is set."""
    check_name(name)
    role = person_role(role)
    password_hash = hash_password(password, policy=policy) if password is not None else None
    if find_user(session, name=name) is not None:
        raise ConflictError(f"there is already a user {name!r}", where="name",
                            hint="choose another name, or change that user with PATCH /api/v1/users/{name}")
    user = User(name=name, display_name=display_name, role=role, password_hash=password_hash, created_at=now,
                created_by=actor)
    session.add(user)
    session.flush()
    audit.record(session, actor=actor, action="user.create", target=f"user:{name}",
                 details={"role": role, "password": password is not None}, now=now)
    log.info("user %s created by %s with role %s", name, actor, role)
    return user


def set_password(session: Session, *, name: str, password: str, actor: str, now: float,
                 policy: PasswordPolicy) -> User:
    user = get_user(session, name=name)
    user.password_hash = hash_password(password, policy=policy)
    session.add(user)
    audit.record(session, actor=actor, action="user.password", target=f"user:{name}", now=now)
    return user


def update_user(session: Session, *, name: str, actor: str, now: float, role: str | None = None,
                disabled: bool | None = None, display_name: str | None = None) -> User:
    """Change a user's role, display name, or disable (``disabled=True``) / enable them again. Nobody
    changes their own role or disables themselves (so no admin locks the last admin out by mistake)."""
    user = get_user(session, name=name)
    changes: dict[str, object] = {}
    if actor == f"user:{name}" and ((role is not None and role != user.role) or disabled):
        raise ConflictError("you may not change your own role or disable yourself", where="name",
                            hint="ask another admin")
    if role is not None and role != user.role:
        changes["role"] = [user.role, person_role(role)]
        user.role = role
    if display_name is not None and display_name != user.display_name:
        changes["display_name"] = display_name
        user.display_name = display_name
    if disabled is not None and disabled != (user.disabled_at is not None):
        changes["disabled"] = disabled
        user.disabled_at = now if disabled else None
    if changes:
        session.add(user)
        audit.record(session, actor=actor, action="user.update", target=f"user:{name}", details=changes, now=now)
        log.info("user %s changed by %s: %s", name, actor, changes)
    return user


def verify_password(session: Session, *, name: str, password: str, now: float, policy: PasswordPolicy) -> User:
    """The user ``name`` if ``password`` is theirs and they are not disabled; else
    :class:`AuthenticationError` with one message for every cause. A hash made with other argon2
    parameters than ``policy``'s is replaced by a new one."""
    user = find_user(session, name=name) if re.fullmatch(NAME_PATTERN, name) else None
    matches = password_matches(user.password_hash if user else None, password, policy=policy)
    if user is None or not matches or user.disabled_at is not None:
        raise AuthenticationError(SIGN_IN_REFUSED, where="password", hint="check the user name and password")
    assert user.password_hash is not None   # matches only for a stored hash
    hasher = _hashing_of(policy).hasher
    if hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hasher.hash(password)
        log.info("password hash of user %s renewed with the current argon2 parameters", name)
    user.last_login_at = now
    session.add(user)
    return user


def may_hold(user: User, role: str) -> bool:
    """Whether a token of ``user`` may have ``role``'s rights (a role of a person at most the user's)."""
    return role in OPERATOR_ROLES and rank(role) <= rank(user.role)
