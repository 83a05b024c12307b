"""OpenID Connect sign-in, the pure core: no I/O and no clock (the caller passes ``now``, the provider's
documents and the ID token); :mod:`edgefleet.cloud.ui.oidc` does the HTTP around it (docs/security.md §12).

* :func:`parse_metadata` checks a discovery document (``/.well-known/openid-configuration``): its
  ``issuer`` is exactly the configured one, its endpoints are https (http only for a loopback issuer).
* :func:`start` makes the sign-in in progress (:class:`Pending`: random ``state``, ``nonce`` and PKCE
  ``code_verifier``) and the provider's authorization URL (code flow, ``S256`` challenge).
* :func:`check_callback` matches the provider's answer with the sign-in in progress.
* :func:`verify_id_token` checks the ID token's signature against the provider's JWKS (asymmetric
  algorithms the provider announces, never ``none`` or HMAC), then ``iss``, ``aud``, ``azp``, ``exp``,
  ``iat`` and ``nonce`` (``authlib``'s ``CodeIDToken`` rules, ``joserfc`` signatures).
* :func:`decide` maps the verified claims to a user name and role (:class:`Decision`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from edgefleet.cloud.services.auth import AuthenticationError, PermissionDeniedError, rank
from edgefleet.cloud.services.users import NAME_PATTERN
from edgefleet.cloud.store.tables import User
from edgefleet.protocol.errors import TransportError

CALLBACK_PATH = "/ui/login/oidc/callback"
PENDING_LIFETIME_S = 600
"""How long a sign-in may stay at the provider before the callback is refused."""
LEEWAY_S = 60
"""Clock difference tolerated on ``exp`` and ``iat``."""
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
"""Signature algorithms accepted for ID tokens: public-key ones only (no ``none``, no HMAC with the secret)."""
MAX_COOKIE_CHARS = 4096


class OidcRefusedError(AuthenticationError):
    """The sign-in failed as an authentication (401, counts toward the address's lockout): the provider
    refused, the answer does not belong to this browser's sign-in, or the ID token does not verify."""

    code = "oidc_refused"


class OidcNotAllowedError(PermissionDeniedError):
    """The provider vouched for the person but the controller does not let them in (403): disabled,
    no role, unknown and not created, or a name that is no user name."""

    code = "oidc_not_allowed"


class OidcProviderError(TransportError):
    """The provider could not be reached or answered something unusable (502)."""

    code = "oidc_provider_failed"


class UnknownSigningKeyError(OidcRefusedError):
    """The ID token names a key the JWKS does not hold (the provider may have rotated: fetch it again)."""


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str | None
    scopes: tuple[str, ...]
    username_claim: str
    role_claim: str
    role_map: Mapping[str, str]
    default_role: str | None
    create_users: bool
    sync_role: bool
    provider_name: str
    redirect_uri: str


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...]
    """The accepted ID token algorithms this provider announces."""


def _endpoint_ok(url: str, *, issuer: str) -> bool:
    parts, base = urlsplit(url), urlsplit(issuer)
    if parts.scheme == "https" and parts.hostname:
        return True
    return parts.scheme == "http" and base.scheme == "http" and parts.hostname == base.hostname


def parse_metadata(doc: object, *, issuer: str) -> ProviderMetadata:
    """The usable part of a discovery document; :class:`OidcProviderError` for anything wrong in it."""
    where = issuer.rstrip("/") + "/.well-known/openid-configuration"
    if not isinstance(doc, dict):
        raise OidcProviderError("the discovery document is not a JSON object", where=where)
    if doc.get("issuer") != issuer:
        raise OidcProviderError(f"the discovery document names the issuer {str(doc.get('issuer'))[:200]!r}, "
                                f"not {issuer!r}", where=where,
                                hint="set oidc_issuer to exactly the provider's issuer (a trailing '/' counts)")
    urls: dict[str, str] = {}
    for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = doc.get(field)
        if not isinstance(value, str) or not _endpoint_ok(value, issuer=issuer):
            raise OidcProviderError(f"the discovery document's {field} is missing or not an https URL", where=where)
        urls[field] = value
    announced = doc.get("id_token_signing_alg_values_supported", ["RS256"])
    algorithms = tuple(a for a in ALGORITHMS if isinstance(announced, list) and a in announced)
    if not algorithms:
        raise OidcProviderError(f"the provider signs ID tokens with none of {', '.join(ALGORITHMS)}", where=where,
                                hint="configure the client at the provider for RS256 (or ES256) ID tokens")
    methods = doc.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise OidcProviderError("the provider does not support PKCE with S256", where=where)
    return ProviderMetadata(issuer=issuer, authorization_endpoint=urls["authorization_endpoint"],
                            token_endpoint=urls["token_endpoint"], jwks_uri=urls["jwks_uri"], algorithms=algorithms)


@dataclass(frozen=True)
class Pending:
    """A sign-in in progress, kept in the browser (an HttpOnly cookie) until the callback."""

    state: str
    nonce: str
    verifier: str
    next: str
    expires_at: float

    def encode(self) -> str:
        data = json.dumps([self.state, self.nonce, self.verifier, self.next, self.expires_at]).encode()
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str | None) -> Pending | None:
        """The sign-in in the cookie; ``None`` for no cookie or anything that is not one."""
        if not text or len(text) > MAX_COOKIE_CHARS:
            return None
        try:
            fields = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (ValueError, binascii.Error):
            return None
        if (not isinstance(fields, list) or len(fields) != 5 or not all(isinstance(f, str) for f in fields[:4])
                or not isinstance(fields[4], (int, float))):
            return None
        return cls(state=fields[0], nonce=fields[1], verifier=fields[2], next=fields[3],
                   expires_at=float(fields[4]))


def start(config: OidcConfig, metadata: ProviderMetadata, *, next: str, now: float) -> tuple[Pending, str]:
    """A new sign-in and the URL of the provider's authorization endpoint that begins it."""
    pending = Pending(state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32),
                      verifier=secrets.token_urlsafe(48), next=next, expires_at=now + PENDING_LIFETIME_S)
    query = urlencode({"response_type": "code", "client_id": config.client_id, "redirect_uri": config.redirect_uri,
                       "scope": " ".join(config.scopes), "state": pending.state, "nonce": pending.nonce,
                       "code_challenge": create_s256_code_challenge(pending.verifier),
                       "code_challenge_method": "S256"})
    separator = "&" if "?" in metadata.authorization_endpoint else "?"
    return pending, f"{metadata.authorization_endpoint}{separator}{query}"


def check_callback(pending: Pending | None, *, state: str, code: str, error: str, error_description: str,
                   now: float) -> str:
    """The authorization code of this browser's sign-in; :class:`OidcRefusedError` otherwise."""
    if error:
        text = f": {error_description[:200]}" if error_description else ""
        raise OidcRefusedError(f"the provider refused the sign-in ({error[:64]}){text}", where="error",
                               hint="sign in at the provider again, or ask its administrator for access")
    if pending is None:
        raise OidcRefusedError("no sign-in is in progress in this browser (or it was already completed)",
                               where="state", hint="start again from the login page")
    if not hmac.compare_digest(pending.state.encode(), state.encode()):
        raise OidcRefusedError("the answer does not belong to the sign-in this browser started (state differs)",
                               where="state", hint="start again from the login page")
    if now > pending.expires_at:
        raise OidcRefusedError(f"the sign-in took longer than {PENDING_LIFETIME_S // 60} minutes", where="state",
                               hint="start again from the login page")
    if not code:
        raise OidcRefusedError("the provider's answer has no authorization code", where="code")
    return code


def verify_id_token(id_token: str, *, jwks: object, config: OidcConfig, metadata: ProviderMetadata, nonce: str,
                    now: float) -> dict[str, Any]:
    """The claims of ``id_token`` once its signature, issuer, audience, expiry and nonce hold;
    :class:`UnknownSigningKeyError` when the JWKS lacks its key, else :class:`OidcRefusedError`."""
    try:
        keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise OidcProviderError(f"the provider's JWKS is unusable: {exc}"[:300], where=metadata.jwks_uri) from None
    try:
        token = jwt.decode(id_token, keys, algorithms=list(metadata.algorithms))
    except InvalidKeyIdError:
        raise UnknownSigningKeyError("the ID token is signed with a key the provider does not publish",
                                     where="id_token") from None
    except (JoseError, ValueError) as exc:
        raise OidcRefusedError(f"the ID token does not verify ({exc.__class__.__name__})", where="id_token",
                               hint="the provider's answer was altered or signed by someone else") from None
    options = {"iss": {"essential": True, "value": config.issuer},
               "aud": {"essential": True, "value": config.client_id}}
    claims = CodeIDToken(token.claims, token.header, options, {"nonce": nonce, "client_id": config.client_id})
    try:
        claims.validate(now=int(now), leeway=LEEWAY_S)
    except JoseError as exc:
        raise OidcRefusedError(f"the ID token is not valid here: {exc.description or exc.error}"[:300],
                               where="id_token", hint="check the controller's and the provider's clocks, and "
                                                      "oidc_issuer / oidc_client_id") from None
    if "nonce" not in claims:
        raise OidcRefusedError("the ID token has no nonce", where="id_token")
    return dict(claims)


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` (``realm_access.roles``); ``None`` when absent."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def mapped_role(claims: Mapping[str, Any], config: OidcConfig) -> str | None:
    """The highest role the role claim's values map to, else the default role (may be ``None``)."""
    values = claim(claims, config.role_claim)
    items = [values] if isinstance(values, str) else values if isinstance(values, list) else []
    roles = [config.role_map[v] for v in items if isinstance(v, str) and v in config.role_map]
    return max(roles, key=rank) if roles else config.default_role


def user_name(claims: Mapping[str, Any], config: OidcConfig) -> str:
    value = claim(claims, config.username_claim)
    source = config.username_claim
    if not isinstance(value, str) or not value:
        value, source = claims.get("sub"), "sub"
    name = value.strip().lower() if isinstance(value, str) else ""
    if not re.fullmatch(NAME_PATTERN, name):
        raise OidcNotAllowedError(f"the provider's {source} claim {name[:80]!r} is not a user name here",
                                  where=source, hint="set oidc_username_claim to a claim of 1-64 letters, digits, "
                                                     "'_', '.', '@', '-' (e.g. preferred_username or email)")
    return name


@dataclass(frozen=True)
class Decision:
    name: str
    role: str
    """The role the user has after this sign-in."""
    create: bool
    """An unknown user, to be created."""
    role_change: bool
    """A known user whose role becomes ``role``."""


def decide(claims: Mapping[str, Any], *, config: OidcConfig, existing: User | None) -> Decision:
    """Who signs in, with which role; :class:`OidcNotAllowedError` when nobody may."""
    name = user_name(claims, config)
    role = mapped_role(claims, config)
    if existing is not None and existing.disabled_at is not None:
        raise OidcNotAllowedError(f"the user {name!r} is disabled", where="user", hint="ask an admin to enable you")
    if existing is not None and not config.sync_role:
        return Decision(name=name, role=existing.role, create=False, role_change=False)
    if role is None:
        values = claim(claims, config.role_claim)
        raise OidcNotAllowedError(f"{name!r} has no role here: none of the values of the {config.role_claim!r} "
                                  f"claim ({str(values)[:120] if values is not None else 'absent'}) is mapped to a "
                                  "role", where=config.role_claim,
                                  hint="ask an admin to add you to a group that oidc_role_map maps to a role")
    if existing is None:
        if not config.create_users:
            raise OidcNotAllowedError(f"there is no user {name!r} on this controller", where="user",
                                      hint="ask an admin to create you (edgefleet users create NAME --role ROLE)")
        return Decision(name=name, role=role, create=True, role_change=False)
    return Decision(name=name, role=role, create=False, role_change=role != existing.role)
