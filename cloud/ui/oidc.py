"""OpenID Connect sign-in for the web UI (off unless ``oidc_issuer`` is set; docs/security.md §12), the
HTTP around the pure core :mod:`edgefleet.cloud.services.oidc`:

* ``GET /ui/login/oidc`` keeps a new sign-in (``state``, ``nonce``, PKCE verifier, where to go after) in
  an HttpOnly cookie (SameSite=Lax, so the provider's redirect back brings it; one sign-in, ten
  minutes) and redirects to the provider's authorization endpoint.
* ``GET /ui/login/oidc/callback`` ends it (the cookie is deleted whatever happens): the state must
  match, the code is exchanged with the verifier at the token endpoint, the ID token verified, the
  claims mapped to a user (created just in time when configured), and the same UI session token as a
  password sign-in made. The answer is a page that moves on to the target itself: the session cookie
  is SameSite=Strict, which a browser leaves off a redirect that the provider's site started.

A failure is an error page: 401 for an authentication failure (provider refusal, wrong state, refused
code, ID token that does not verify: each counts toward the address's lockout), 403 when the person
may not come in (disabled, no role), 502 when the provider is unreachable. Nothing is stored then.

The discovery document and the JWKS are fetched with ``httpx2`` and cached for :data:`CACHE_S`; an ID
token signed with a key not in the cached JWKS fetches it once more (the provider rotated its keys).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edgefleet.cloud.deps import ControllerDep, SessionDep, oidc_config
from edgefleet.cloud.services import oidc as core
from edgefleet.cloud.services import users
from edgefleet.cloud.store.tables import User
from edgefleet.cloud.ui.render import base_path, render
from edgefleet.cloud.ui.session import safe_next, set_session_cookie, start_ui_session
from edgefleet.protocol.errors import EdgeFleetError
from edgefleet.protocol.vocabulary import Reason

log = logging.getLogger(__name__)

COOKIE = "edgefleet_oidc"
CACHE_S = 3600.0
"""How long the discovery document and the JWKS are used before they are fetched again."""
TIMEOUT_S = 10.0
MAX_DOCUMENT_BYTES = 256 * 1024
OIDC_ACTOR = "system:oidc"

router = APIRouter(include_in_schema=False)


class Provider:
    """The configured provider: its documents (fetched and cached) and its token endpoint."""

    def __init__(self, config: core.OidcConfig, *, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self._metadata: tuple[float, core.ProviderMetadata] | None = None
        self._jwks: tuple[float, object] | None = None

    def _get(self, url: str) -> Any:
        import httpx2 as httpx  # only a controller with OIDC configured needs it

        try:
            response = httpx.get(url, timeout=TIMEOUT_S, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise core.OidcProviderError(f"the provider could not be reached: {exc.__class__.__name__}", where=url,
                                    hint="check oidc_issuer and that the controller can reach the provider") from None
        if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
            raise core.OidcProviderError(f"the provider answered {response.status_code}", where=url)
        try:
            return response.json()
        except ValueError:
            raise core.OidcProviderError("the provider's answer is not JSON", where=url) from None

    def metadata(self) -> core.ProviderMetadata:
        now = self.clock()
        with self._lock:
            if self._metadata is not None and now - self._metadata[0] < CACHE_S:
                return self._metadata[1]
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        metadata = core.parse_metadata(self._get(url), issuer=self.config.issuer)
        with self._lock:
            self._metadata = (now, metadata)
        return metadata

    def jwks(self, metadata: core.ProviderMetadata, *, refresh: bool = False) -> object:
        now = self.clock()
        with self._lock:
            if not refresh and self._jwks is not None and now - self._jwks[0] < CACHE_S:
                return self._jwks[1]
        jwks = self._get(metadata.jwks_uri)
        with self._lock:
            self._jwks = (now, jwks)
        return jwks

    def exchange(self, metadata: core.ProviderMetadata, *, code: str, verifier: str) -> str:
        """The ID token the token endpoint gives for ``code`` and its PKCE ``verifier``."""
        import httpx2 as httpx

        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.config.redirect_uri,
                "code_verifier": verifier}
        auth: tuple[str, str] | None = None
        if self.config.client_secret is None:
            form["client_id"] = self.config.client_id
        else:
            auth = (self.config.client_id, self.config.client_secret)
        where = metadata.token_endpoint
        try:
            response = httpx.post(where, data=form, auth=auth, timeout=TIMEOUT_S, follow_redirects=False,
                                  headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise core.OidcProviderError(f"the token endpoint could not be reached: {exc.__class__.__name__}",
                                    where=where) from None
        try:
            body = response.json() if len(response.content) <= MAX_DOCUMENT_BYTES else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise core.OidcProviderError(f"the token endpoint answered {response.status_code} without a JSON object",
                                    where=where)
        if response.status_code == 400 or response.status_code == 401:
            error = str(body.get("error", "refused"))[:64]
            raise core.OidcRefusedError(f"the provider refused the authorization code ({error})", where="code",
                                   hint="a code works once and only with this browser's sign-in: start again "
                                        "from the login page")
        token = body.get("id_token")
        if response.status_code != 200 or not isinstance(token, str):
            raise core.OidcProviderError(f"the token endpoint answered {response.status_code} without an ID token",
                                    where=where, hint="is 'openid' among oidc_scopes?")
        return token

    def verify(self, metadata: core.ProviderMetadata, id_token: str, *, nonce: str, now: float) -> dict[str, Any]:
        try:
            return core.verify_id_token(id_token, jwks=self.jwks(metadata), config=self.config, metadata=metadata,
                                   nonce=nonce, now=now)
        except core.UnknownSigningKeyError:
            return core.verify_id_token(id_token, jwks=self.jwks(metadata, refresh=True), config=self.config,
                                   metadata=metadata, nonce=nonce, now=now)


_providers_lock = threading.Lock()


def provider_of(request: Request) -> Provider | None:
    """The app's provider (made at first use), ``None`` when OIDC sign-in is off."""
    controller = request.app.state.controller
    with _providers_lock:
        provider: Provider | None = getattr(request.app.state, "oidc_provider", None)
        if provider is None:
            config = oidc_config(controller)
            if config is None:
                return None
            provider = Provider(config, clock=controller.now)
            request.app.state.oidc_provider = provider
    return provider


def _cookie_path(request: Request) -> str:
    return f"{base_path(request)}/ui/login/oidc"


def _failure(request: Request, exc: EdgeFleetError, status_code: int) -> HTMLResponse:
    response = render(request, "error.html", status_code=status_code, user=None, title="Sign-in failed",
                      status=status_code, message=exc.message, where=exc.where, hint=exc.hint, code=exc.code)
    response.delete_cookie(COOKIE, path=_cookie_path(request), httponly=True, samesite="lax")
    return response


def _refused(request: Request, exc: EdgeFleetError) -> HTMLResponse:
    status_code = (401 if isinstance(exc, core.OidcRefusedError) else
                   403 if isinstance(exc, core.OidcNotAllowedError) else 502)
    client = request.client.host if request.client else "?"
    log.warning("OIDC sign-in refused from %s (%s): %s", client, exc.code, exc)
    if status_code != 502:
        request.app.state.controller.metrics.http_errors.labels(Reason.UI_LOGIN_REFUSED).inc()
    return _failure(request, exc, status_code)


def _not_configured(request: Request) -> HTMLResponse:
    return _failure(request, EdgeFleetError("OIDC sign-in is not configured on this controller", code="not_found",
                                            where="oidc_issuer",
                                            hint="sign in with a user name and password or an API token"), 404)


@router.get("/ui/login/oidc", response_class=HTMLResponse)
def oidc_login(request: Request, next: Annotated[str, Query(max_length=2048)] = "/") -> Response:
    provider = provider_of(request)
    if provider is None:
        return _not_configured(request)
    try:
        metadata = provider.metadata()
    except core.OidcProviderError as exc:
        return _refused(request, exc)
    pending, url = core.start(provider.config, metadata, next=safe_next(next), now=provider.clock())
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(COOKIE, pending.encode(), max_age=core.PENDING_LIFETIME_S, path=_cookie_path(request),
                        httponly=True, samesite="lax", secure=request.url.scheme == "https")
    return response


def _sign_in(session: SessionDep, provider: Provider, claims: dict[str, Any], *, now: float) -> tuple[User, str]:
    """The user the verified ``claims`` name (created or their role synced as configured) and a new UI
    session token of theirs."""
    existing = users.find_user(session, name=core.user_name(claims, provider.config))
    decision = core.decide(claims, config=provider.config, existing=existing)
    if decision.create:
        user = users.create_user(session, name=decision.name, role=decision.role, actor=OIDC_ACTOR, now=now,
                                 policy=users.PasswordPolicy(), display_name=str(claims.get("name") or "")[:128])
    else:
        assert existing is not None
        user = existing
        if decision.role_change:
            user = users.update_user(session, name=user.name, role=decision.role, actor=OIDC_ACTOR, now=now)
    user.last_login_at = now
    session.add(user)
    return user, start_ui_session(session, user=user, now=now, method="oidc")


@router.get("/ui/login/oidc/callback", response_class=HTMLResponse)
def oidc_callback(request: Request, session: SessionDep, controller: ControllerDep,
                  code: Annotated[str, Query(max_length=2048)] = "", state: Annotated[str, Query(max_length=512)] = "",
                  error: Annotated[str, Query(max_length=256)] = "",
                  error_description: Annotated[str, Query(max_length=1024)] = "") -> Response:
    provider = provider_of(request)
    if provider is None:
        return _not_configured(request)
    pending = core.Pending.decode(request.cookies.get(COOKIE))
    now = controller.now()
    try:
        code = core.check_callback(pending, state=state, code=code, error=error, error_description=error_description,
                              now=now)
        assert pending is not None
        metadata = provider.metadata()
        id_token = provider.exchange(metadata, code=code, verifier=pending.verifier)
        claims = provider.verify(metadata, id_token, nonce=pending.nonce, now=now)
        user, secret = _sign_in(session, provider, claims, now=now)
    except (core.OidcRefusedError, core.OidcNotAllowedError, core.OidcProviderError) as exc:
        session.rollback()
        return _refused(request, exc)
    log.info("UI login by user:%s with OIDC (%s)", user.name, provider.config.issuer)
    response = render(request, "oidc_continue.html", target=safe_next(pending.next), who=user.name, role=user.role,
                      provider=provider.config.provider_name)
    set_session_cookie(request, response, secret)
    response.delete_cookie(COOKIE, path=_cookie_path(request), httponly=True, samesite="lax")
    return response
