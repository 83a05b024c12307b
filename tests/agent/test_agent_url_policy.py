"""agent/url_policy.py: where an order's bundle URL may point (pure)."""

from __future__ import annotations

import pytest

from edgefleet.agent.url_policy import UrlPolicy, origin
from edgefleet.protocol.errors import ConfigError, VerificationError


def policy(controller="https://fleet.example.com", stores=("https://bundles.example.com:8443",),
           allow_http=False) -> UrlPolicy:
    return UrlPolicy.from_config(controller_url=controller, bundle_origins=stores, allow_http=allow_http)


def test_origins_are_normalised_with_their_port():
    assert origin("HTTPS://Fleet.Example.com/x?y") == "https://fleet.example.com:443"
    assert origin("http://10.0.0.1:8080/b") == "http://10.0.0.1:8080"
    assert origin("http://[::1]:9/b") == "http://[::1]:9"


@pytest.mark.parametrize("url", [
    "https://fleet.example.com/api/v1/bundles/ab/download?token=t",
    "https://fleet.example.com:443/x",
    "https://bundles.example.com:8443/ab.efb",
])
def test_the_controllers_origin_and_the_allow_listed_stores_are_allowed(url):
    policy().check(url)


@pytest.mark.parametrize(("url", "why"), [
    ("file:///etc/passwd", "scheme 'file' is not allowed"),
    ("ftp://fleet.example.com/b", "scheme 'ftp' is not allowed"),
    ("data:application/octet-stream;base64,AAAA", "scheme 'data' is not allowed"),
    ("/etc/passwd", "scheme '(none)' is not allowed"),
    ("https://user:pw@fleet.example.com/b", "may not carry a user name or password"),
    ("https://fleet.example.com.evil.net/b", "is neither the controller's origin nor an allow-listed"),
    ("https://fleet.example.com:8443/b", "https://fleet.example.com:8443 is neither"),   # another port
    ("http://fleet.example.com/b", "http://fleet.example.com:80 is neither"),           # another scheme
    ("http://127.0.0.1:6379/", "is neither the controller's origin"),                  # a local service
    ("https://bundles.example.com/ab.efb", "is neither"),                                # the store's other port
])
def test_anything_else_is_refused_naming_why(url, why):
    with pytest.raises(VerificationError, match="bundle URL refused") as err:
        policy().check(url)
    assert why in err.value.message and err.value.code == "url_refused"


def test_http_is_allowed_on_an_http_controllers_own_origin_and_elsewhere_only_when_configured():
    plain = policy(controller="http://127.0.0.1:8080", stores=("http://127.0.0.1:9000",))
    plain.check("http://127.0.0.1:8080/api/v1/bundles/x/download")
    with pytest.raises(VerificationError, match="plain http to http://127.0.0.1:9000 is not allowed"):
        plain.check("http://127.0.0.1:9000/b.efb")
    policy(controller="http://127.0.0.1:8080", stores=("http://127.0.0.1:9000",), allow_http=True).check(
        "http://127.0.0.1:9000/b.efb")


def test_without_a_controller_or_a_store_nothing_is_allowed_and_it_says_what_to_set():
    with pytest.raises(VerificationError, match="the agent has no controller_url and no bundle_origins"):
        UrlPolicy.from_config(controller_url=None).check("https://anywhere.example/b")


def test_a_wrong_origin_in_the_config_is_a_config_error():
    with pytest.raises(ConfigError, match="bundle_origins: scheme 'ftp' is not http or https"):
        UrlPolicy.from_config(controller_url=None, bundle_origins=["ftp://x"])
    with pytest.raises(ConfigError, match="controller_url: .* names no host"):
        UrlPolicy.from_config(controller_url="https://")
