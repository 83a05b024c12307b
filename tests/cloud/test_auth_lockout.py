"""The lockout after failed authentications: the pure limiter (times given, no sleeping), then through
the app with the fake clock: bad API tokens, bad enrollment tokens, bad device passwords and UI sign-ins
from one address get 429 with Retry-After after the limit, other addresses and successes are not
affected, the lockout ends with the window, and it is audited and logged."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from edgefleet.cloud.app import create_app
from edgefleet.cloud.services.lockout import FailureLimiter, FailureRule

from cloudkit import ADMIN

RULE = FailureRule(limit=3, window_s=60.0)


# ---------------------------------------------------------------- the pure core

def test_the_limit_th_failure_locks_out_until_the_oldest_leaves_the_window():
    limiter = FailureLimiter(RULE)
    assert limiter.fail("a", now=100.0) is None
    assert limiter.fail("a", now=110.0) is None
    assert limiter.retry_after("a", now=115.0) is None
    assert limiter.fail("a", now=120.0) == pytest.approx(40.0)    # 100 + 60 - 120
    assert limiter.failures["a"] == (100.0, 110.0, 120.0)
    assert limiter.retry_after("a", now=130.0) == pytest.approx(30.0)
    assert limiter.retry_after("b", now=130.0) is None             # per address
    assert limiter.retry_after("a", now=160.0) is None             # the 100.0 failure left the window
    assert limiter.failures["a"] == (110.0, 120.0)


def test_a_locked_out_address_makes_at_most_limit_guesses_per_window():
    limiter = FailureLimiter(RULE)
    guesses, now = [], 0.0
    while now < 600:
        if limiter.retry_after("a", now=now) is None:
            guesses.append(now)
            limiter.fail("a", now=now)
        now += 1.0
    per_window = max(sum(1 for g in guesses if start <= g < start + RULE.window_s) for start in guesses)
    assert per_window == RULE.limit and len(guesses) == 30


def test_only_the_failure_that_locks_out_reports_it():
    limiter = FailureLimiter(RULE)
    for t in (1.0, 2.0):
        limiter.fail("a", now=t)
    assert limiter.fail("a", now=3.0) is not None
    assert limiter.fail("a", now=4.0) is None   # e.g. a request already under way: no second lockout
    assert len(limiter.failures["a"]) == RULE.limit


def test_limit_zero_is_off_and_the_table_is_bounded():
    off = FailureLimiter(FailureRule(limit=0, window_s=60.0))
    for t in range(100):
        assert off.fail("a", now=float(t)) is None
    assert off.retry_after("a", now=100.0) is None and not off.failures
    small = FailureLimiter(RULE, max_clients=2)
    for client in ("a", "b", "c"):
        small.fail(client, now=1.0)
    assert list(small.failures) == ["b", "c"]


# ---------------------------------------------------------------- through the app

@pytest.fixture
def limited_app(settings, clock, transport):
    return create_app(settings.model_copy(update={"auth_failure_limit": 3, "auth_failure_window_s": 60.0}),
                      clock=clock, transport_factory=lambda url, on_message: transport, reconcile_in_background=False)


def client_at(app, address: str) -> TestClient:
    return TestClient(app, client=(address, 50000), follow_redirects=False)


def test_bad_api_tokens_lock_out_the_address_with_a_retry_after(limited_app, clock):
    with TestClient(limited_app):
        attacker, other = client_at(limited_app, "192.0.2.1"), client_at(limited_app, "192.0.2.2")
        for _ in range(3):
            assert attacker.get("/api/v1/devices", headers={"Authorization": "Bearer eft_guess"}).status_code == 401
        r = attacker.get("/api/v1/devices", headers={"Authorization": "Bearer eft_guess"})
        assert r.status_code == 429 and r.headers["retry-after"] == "60"
        error = r.json()["error"]
        assert error["code"] == "rate_limited" and "3 failed authentications" in error["message"]
        # locked out means every credential from there: else a right guess would stand out
        assert attacker.get("/api/v1/devices", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 429
        assert attacker.get("/healthz").status_code == 200                        # takes no credentials
        assert other.get("/api/v1/devices", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
        clock.advance(30)
        assert attacker.get("/api/v1/devices").headers["retry-after"] == "30"
        clock.advance(30)
        assert attacker.get("/api/v1/devices", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
        audit = other.get("/api/v1/audit", params={"action": "auth.lockout"},
                          headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert [(e["target"], e["details"]["failures"]) for e in audit] == [("client:192.0.2.1", 3)]
    assert limited_app.state.controller.metrics.http_errors.labels("rate_limited")._value.get() == 3


def test_the_lockout_is_logged_when_it_begins(limited_app, caplog):
    with TestClient(limited_app), caplog.at_level(logging.WARNING, logger="edgefleet.cloud.api.guards"):
        attacker = client_at(limited_app, "192.0.2.9")
        for _ in range(3):
            attacker.get("/api/v1/info", headers={"Authorization": "Bearer eft_guess"})
    assert [r.getMessage() for r in caplog.records if "lockout" in r.getMessage()] == [
        "authentication lockout of 192.0.2.9: 3 failures within 60 s, refused for 60 s"]


def test_successes_do_not_count_nor_wipe_failures(limited_app):
    with TestClient(limited_app):
        user = client_at(limited_app, "192.0.2.3")
        good = {"Authorization": f"Bearer {ADMIN}"}
        for _ in range(2):
            assert user.get("/api/v1/devices", headers={"Authorization": "Bearer eft_typo"}).status_code == 401
        for _ in range(50):
            assert user.get("/api/v1/devices", headers=good).status_code == 200
        assert user.get("/api/v1/devices", headers={"Authorization": "Bearer eft_typo"}).status_code == 401
        assert user.get("/api/v1/devices", headers=good).status_code == 429


def test_bad_enrollment_tokens_device_passwords_and_ui_sign_ins_count_too(limited_app):
    with TestClient(limited_app):
        enrolling = client_at(limited_app, "192.0.2.4")
        for _ in range(3):
            assert enrolling.post("/api/v1/enroll", json={"token": "eet_wrong-guess"}).status_code == 401
        assert enrolling.post("/api/v1/enroll", json={"token": "eet_wrong-guess"}).status_code == 429

        device = client_at(limited_app, "192.0.2.5")
        for _ in range(3):
            r = device.post("/api/v1/device/message-key", json={"public_key_pem": "x"}, auth=("cam-1", "guess"))
            assert r.status_code == 401
        assert device.post("/api/v1/device/message-key", json={"public_key_pem": "x"},
                           auth=("cam-1", "guess")).status_code == 429

        person = client_at(limited_app, "192.0.2.6")
        person.get("/ui/login")
        nonce = person.cookies.get("edgefleet_login")
        for _ in range(3):
            assert person.post("/ui/login", data={"token": "eft_guess", "csrf_token": nonce}).status_code == 401
        r = person.post("/ui/login", data={"token": ADMIN, "csrf_token": nonce})
        assert r.status_code == 429 and "try again in 60 s" in r.text and "set-cookie" not in r.headers
