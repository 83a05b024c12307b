"""A minimal but real OpenID Connect provider for the tests, served by uvicorn on a free loopback port:
discovery document, JWKS, ``/authorize`` (approves the configured test user at once and redirects back
with a code) and ``/token`` (one use per code, the registered redirect URI and client secret, and the
PKCE ``code_verifier`` checked against the ``S256`` challenge). ID tokens are RS256, signed with
``joserfc`` (the JOSE library authlib 1.9 is built on; ``authlib.jose`` is its deprecated wrapper).

Each test sets what the provider does through :class:`Behaviour` (who signs in, a refusal, a token
signed by another key, a wrong audience, an expired token, another nonce)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import uvicorn
from fastapi import FastAPI, Form, Header, Request
from fastapi.responses import JSONResponse, RedirectResponse
from joserfc import jwt
from joserfc.jwk import RSAKey

from testkit import free_port

CLIENT_ID = "edgefleet-ui"
CLIENT_SECRET = "a client secret for the tests"


@dataclass
class Behaviour:
    claims: dict[str, Any] = field(default_factory=lambda: {"preferred_username": "alice", "sub": "u-alice"})
    """The signed-in user's claims (besides iss, aud, exp, iat, nonce)."""
    deny: bool = False
    """Answer the authorization request with ``error=access_denied``."""
    signer: str = "provider"
    """``provider``; ``rogue``: another key with the provider's key id; ``stranger``: another key and id."""
    audience: str = CLIENT_ID
    lifetime_s: int = 300
    """``exp`` - ``iat``; negative: already expired."""
    nonce: str | None = None
    """A nonce other than the request's."""


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    claims: dict[str, Any]
    used: bool = False


class Provider:
    def __init__(self) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.key = RSAKey.generate_key(2048, parameters={"kid": "provider-1", "use": "sig", "alg": "RS256"},
                                       private=True)
        self.rogue = RSAKey.generate_key(2048, parameters={"kid": "provider-1"}, private=True)
        self.stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger-1"}, private=True)
        self.redirect_uri = ""
        """The one redirect URI registered for the client (set when the controller's port is known)."""
        self.behaviour = Behaviour()
        self.grants: dict[str, Grant] = {}
        self.refusals: list[str] = []
        """Why the token endpoint refused, in order."""
        self.jwks_fetches = 0
        self.app = self._app()

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.refusals.clear()

    def discovery(self) -> dict[str, Any]:
        return {"issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"], "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"]}

    def id_token(self, grant: Grant) -> str:
        b = self.behaviour
        key = {"provider": self.key, "rogue": self.rogue, "stranger": self.stranger}[b.signer]
        now = int(time.time())
        claims = {**grant.claims, "iss": self.issuer, "aud": b.audience, "iat": now, "exp": now + b.lifetime_s,
                  "nonce": b.nonce if b.nonce is not None else grant.nonce}
        return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)

    def _refuse(self, why: str, error: str = "invalid_grant") -> JSONResponse:
        self.refusals.append(why)
        return JSONResponse({"error": error, "error_description": why}, status_code=400)

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/.well-known/openid-configuration")
        def discovery() -> dict[str, Any]:
            return self.discovery()

        @app.get("/jwks")
        def jwks() -> dict[str, Any]:
            self.jwks_fetches += 1
            return {"keys": [self.key.as_dict(private=False)]}

        @app.get("/authorize")
        def authorize(request: Request) -> RedirectResponse:
            q = request.query_params
            assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID, dict(q)
            assert q["redirect_uri"] == self.redirect_uri, (q["redirect_uri"], self.redirect_uri)
            assert q["code_challenge_method"] == "S256" and "openid" in q["scope"].split(), dict(q)
            if self.behaviour.deny:
                answer = {"error": "access_denied", "error_description": "the user declined", "state": q["state"]}
            else:
                code = secrets.token_urlsafe(24)
                self.grants[code] = Grant(client_id=q["client_id"], redirect_uri=q["redirect_uri"],
                                          challenge=q["code_challenge"], nonce=q["nonce"],
                                          claims=dict(self.behaviour.claims))
                answer = {"code": code, "state": q["state"]}
            return RedirectResponse(f"{q['redirect_uri']}?{urlencode(answer)}", status_code=302)

        @app.post("/token")
        def token(grant_type: str = Form(), code: str = Form(), redirect_uri: str = Form(),
                  code_verifier: str = Form(""), authorization: str = Header("")) -> JSONResponse:
            expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            if authorization != expected:
                return self._refuse("client authentication failed", "invalid_client")
            grant = self.grants.get(code)
            if grant_type != "authorization_code" or grant is None:
                return self._refuse("unknown code")
            if grant.used:
                return self._refuse("code already used")
            grant.used = True
            if redirect_uri != grant.redirect_uri:
                return self._refuse("redirect_uri differs")
            challenge = base64.urlsafe_b64encode(hashlib.sha256(code_verifier.encode()).digest()).decode().rstrip("=")
            if challenge != grant.challenge:
                return self._refuse("code_verifier does not match the code_challenge")
            return JSONResponse({"access_token": secrets.token_urlsafe(24), "token_type": "Bearer",
                                 "expires_in": 300, "id_token": self.id_token(grant)})

        return app


@contextmanager
def serve(app: Any, port: int) -> Iterator[None]:
    """``app`` in uvicorn on 127.0.0.1:``port`` in a background thread, until the block ends."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on port {port} did not start")
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(15)


@contextmanager
def provider() -> Iterator[Provider]:
    p = Provider()
    with serve(p.app, p.port):
        yield p
