"""CSRF tokens of the UI's forms (pure: no I/O).

Every state-changing form post carries ``csrf_token`` (or the ``X-CSRF-Token`` header, which no
cross-site form can set), on top of the SameSite=Strict session cookie and the Origin check:

* signed in: a synchronizer token bound to the session -- an HMAC of the fixed label
  :data:`LABEL` keyed by the session cookie's secret. It needs no server state, survives a controller
  restart, ends with the session, and tells nothing about the secret it is derived from;
* the sign-in form (no session yet): double submit -- a random nonce in an HttpOnly, SameSite=Strict
  cookie (:data:`LOGIN_COOKIE`) that the form must repeat.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Annotated

from fastapi import Form

SESSION_COOKIE = "edgefleet_ui"
"""The session cookie (its value is the operator's API token; see :mod:`edgefleet.cloud.ui.session`)."""
FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
LOGIN_COOKIE = "edgefleet_login"
LOGIN_COOKIE_MAX_AGE = 3600
LABEL = b"edgefleet-ui-csrf-v1"

CsrfField = Annotated[str, Form(max_length=128, alias=FIELD)]
"""The form field every state-changing UI post route takes."""


def session_token(secret: str) -> str:
    """The CSRF token of the session whose cookie holds ``secret``."""
    digest = hmac.new(secret.encode("utf-8"), LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def new_nonce() -> str:
    return secrets.token_urlsafe(32)


def page_token(cookies: dict[str, str]) -> str | None:
    """The token the forms of a page carry: the session's, or before sign-in the login nonce."""
    secret = cookies.get(SESSION_COOKIE)
    return session_token(secret) if secret else cookies.get(LOGIN_COOKIE)


def matches(expected: str | None, given: str | None) -> bool:
    """Whether ``given`` (from the form or the header) is the ``expected`` token; never for an empty one."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected).encode(), str(given).encode())
