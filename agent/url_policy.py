"""Where the agent may fetch a bundle from: a pure check of an order's ``bundle_url`` (and of every
redirect on the way), before anything is read.

An order is signed by the controller's key, so a bundle URL is as trusted as that key -- which is why
it must not be able to reach further than a bundle store: a compromised controller key must not make
the device read its own files (``file:///etc/passwd``) or talk to services on its local network. The
rule (docs/security.md, "Bundle URLs"):

* the scheme is ``https``, or ``http`` only where configured: on the controller's own origin when the
  device was enrolled with an ``http://`` controller URL (the operator chose plain HTTP there), or
  anywhere on the allowed origins with ``allow_http_bundles = true``;
* the origin (scheme, host, port) is the controller's (``controller_url``) or one of
  ``bundle_origins`` (an allow-listed store, e.g. ``https://bundles.example.com``);
* no user name or password in the URL, no other scheme (``file``, ``ftp``, ``data`` ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from edgefleet.protocol.errors import ConfigError, VerificationError
from edgefleet.protocol.vocabulary import Reason

DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str, *, where: str = "url") -> str:
    """``scheme://host:port`` of an http(s) URL, lower case, the port always written."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{where}: scheme {parts.scheme or '(none)'!r} is not http or https")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"{where}: the port of {url!r} is not a number") from None
    if not parts.hostname:
        raise ValueError(f"{where}: {url!r} names no host")
    host = parts.hostname.lower()
    return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"


@dataclass(frozen=True)
class UrlPolicy:
    controller: str | None
    """The controller's origin (from ``controller_url``), or None when the agent has none."""
    stores: frozenset[str] = frozenset()
    """Allow-listed bundle stores' origins (``bundle_origins``)."""
    allow_http: bool = False
    """``allow_http_bundles``: plain HTTP also off the controller's own ``http://`` origin."""

    @classmethod
    def from_config(cls, *, controller_url: str | None, bundle_origins: Iterable[str] = (),
                    allow_http: bool = False) -> UrlPolicy:
        try:
            controller = origin(controller_url, where="controller_url") if controller_url else None
            stores = frozenset(origin(o, where="bundle_origins") for o in bundle_origins)
        except ValueError as exc:
            raise ConfigError(str(exc), where="agent config",
                              hint="give origins as https://host[:port]") from None
        return cls(controller=controller, stores=stores, allow_http=allow_http)

    def check(self, url: str) -> None:
        """Raise :class:`VerificationError` (``url_refused``) unless the agent may fetch ``url``."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise _refused(f"scheme {parts.scheme or '(none)'!r} is not allowed for bundles (https, or http where "
                           "configured)", url)
        if parts.username is not None or parts.password is not None:
            raise _refused("a bundle URL may not carry a user name or password", url)
        try:
            here = origin(url)
        except ValueError as exc:
            raise _refused(str(exc), url) from None
        allowed = self.stores | ({self.controller} if self.controller else set())
        if here not in allowed:
            known = ", ".join(sorted(allowed)) or "none: the agent has no controller_url and no bundle_origins"
            raise _refused(f"{here} is neither the controller's origin nor an allow-listed bundle store "
                           f"(allowed: {known})", url)
        if scheme == "http" and not (self.allow_http or here == self.controller):
            raise _refused(f"plain http to {here} is not allowed (set allow_http_bundles = true to allow it)", url)


def _refused(message: str, url: str) -> VerificationError:
    return VerificationError(f"bundle URL refused: {message}", code=Reason.URL_REFUSED, where=url[:200],
                             hint="the agent fetches bundles only from its controller or bundle_origins "
                                  "(docs/security.md)")
