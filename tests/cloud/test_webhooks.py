"""Webhooks out: the signature and the backoff as pure functions, then the service with a fake
``post`` and explicit times (delivery, retries, giving up, isolation between receivers, claims,
transactions), the REST API with its roles, and the CLI."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient

from edgefleet.cloud.app import create_app
from edgefleet.cloud.cli import main as cli
from edgefleet.cloud.controller import Controller
from edgefleet.cloud.services import audit, webhooks
from edgefleet.cloud.store.tables import WebhookDelivery
from edgefleet.cloud.vocabulary import DeliveryState, WebhookEvent
from edgefleet.protocol.errors import InvalidRequestError, TransportError

from cloudkit import ADMIN, CliClient
from testkit import free_port, wait_until

NOW = 1_800_000_000.0
SECRET = "whsec_test"


# ------------------------------------------------------------------------------------ signature

def test_a_signature_verifies_and_has_the_documented_form():
    body = b'{"id":1}'
    header = webhooks.sign(SECRET, 1_700_000_000, body)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert webhooks.verify(SECRET, header, body, now=1_700_000_000 + 299)


@pytest.mark.parametrize(("secret", "body", "now"), [
    (SECRET, b'{"id":2}', 1_700_000_000),          # tampered body
    ("whsec_other", b'{"id":1}', 1_700_000_000),   # wrong secret
    (SECRET, b'{"id":1}', 1_700_000_000 + 301),    # stale: a replay
    (SECRET, b'{"id":1}', 1_700_000_000 - 301),    # from the future
], ids=["tampered-body", "wrong-secret", "stale", "future"])
def test_a_signature_fails(secret, body, now):
    header = webhooks.sign(SECRET, 1_700_000_000, b'{"id":1}')
    assert not webhooks.verify(secret, header, body, now=now)


@pytest.mark.parametrize("header", ["", "garbage", "t=abc,v1=00", "v1=00", "t=1700000000", "t=1700000000,v1=é"])
def test_a_malformed_signature_header_fails(header):
    assert not webhooks.verify(SECRET, header, b"{}", now=1_700_000_000)


def test_any_of_several_signatures_may_match_and_the_timestamp_is_signed():
    body = b"{}"
    good = webhooks.sign(SECRET, 1_700_000_000, body)
    assert webhooks.verify(SECRET, f"t=1700000000,v1={'0' * 64},{good.split(',')[1]}", body, now=1_700_000_000)
    moved = good.replace("t=1700000000", "t=1700000100")
    assert not webhooks.verify(SECRET, moved, body, now=1_700_000_100)


# ------------------------------------------------------------------------------------ backoff, validation

def test_the_backoff_doubles_from_the_base_up_to_the_cap():
    policy = webhooks.RetryPolicy(base_s=10, cap_s=3600)
    assert [policy.delay(n) for n in range(1, 11)] == [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600]
    assert policy.delay(10_000) == 3600


def test_the_backoff_jitter_keeps_half_of_each_step_and_is_reproducible():
    policy = webhooks.RetryPolicy(base_s=10, cap_s=3600)
    delays = [policy.delay(n, random.Random(7)) for n in range(1, 9)]
    assert delays == [policy.delay(n, random.Random(7)) for n in range(1, 9)]
    for n, delay in enumerate(delays, start=1):
        assert policy.delay(n) / 2 <= delay <= policy.delay(n)


def test_events_are_checked_and_normalised():
    assert webhooks.check_events(["rollout.paused", "rollout.aborted", "rollout.paused"]) == \
        ["rollout.aborted", "rollout.paused"]
    assert webhooks.check_events(["rollout.paused", "*"]) == ["*"]
    assert set(webhooks.EVENTS) >= {"rollout.stage_passed", "rollout.gate_failed", "rollout.paused",
                                    "rollout.aborted", "rollout.succeeded", "ping"}
    for bad in ([], ["rollout.exploded"]):
        with pytest.raises(InvalidRequestError) as info:
            webhooks.check_events(bad)
        assert info.value.where == "events" and "rollout.paused" in (info.value.hint or "")


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/x", "hooks.example.com/x", "http://", "https:///path",
                                 "http://exa mple.com/", "http://hooks.example.com:99999/", "http://[::1/",
                                 "https://hooks.example.com/" + "x" * 2048])
def test_a_webhook_url_must_be_http_with_a_host(url):
    with pytest.raises(InvalidRequestError) as info:
        webhooks.check_url(url)
    assert info.value.where == "url"


def test_good_webhook_urls_pass():
    for url in ("https://hooks.example.com/edgefleet?x=1", "http://127.0.0.1:8081/", "http://[::1]:9000/h"):
        assert webhooks.check_url(url) == url


def test_no_answer_from_a_receiver_is_a_transport_error_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    with pytest.raises(TransportError) as info:
        webhooks.http_post(url, b"{}", {"Content-Type": "application/json"}, 2.0)
    assert info.value.where == url


# ------------------------------------------------------------------------------------ the service

@dataclass
class Call:
    url: str
    body: bytes
    headers: dict[str, str]
    timeout_s: float

    @property
    def doc(self) -> dict:
        return json.loads(self.body)


@dataclass
class FakePost:
    """Answers per URL, one per call (the last one repeats); an exception instance is raised."""

    answers: dict[str, list[int | Exception]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        with self.lock:
            self.calls.append(Call(url, body, headers, timeout_s))
            queue = self.answers.get(url, [200])
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def to(self, url: str) -> list[Call]:
        return [c for c in self.calls if c.url == url]


@pytest.fixture
def hook(controller):
    """Make a webhook; returns ``(row, secret)``."""
    def make(url: str = "https://hooks.example.com/a", events=("*",)):
        with controller.session() as session:
            return webhooks.create_webhook(session, url=url, events=list(events), actor="admin:test", now=NOW)
    return make


def emit(controller, event=WebhookEvent.ROLLOUT_PAUSED, payload=None, now=NOW) -> int:
    with controller.session() as session:
        return webhooks.emit(session, event=event, payload=payload or {"rollout_id": "r1"}, now=now)


def deliveries(controller, webhook_id: int) -> list[WebhookDelivery]:
    with controller.session() as session:
        return webhooks.deliveries_of(session, webhook_id, 100)


def deliver(controller, post, now, **kw) -> webhooks.DeliveryReport:
    return webhooks.deliver_due(controller.session, now=now, post=post, **kw)


def test_an_event_is_delivered_signed_to_its_subscribers_once(controller, hook):
    paused, secret = hook("https://hooks.example.com/paused", events=["rollout.paused"])
    every, _ = hook("https://hooks.example.com/all")
    assert emit(controller, payload={"rollout_id": "r1", "reason": "gate"}) == 2
    assert emit(controller, WebhookEvent.ROLLOUT_SUCCEEDED) == 1
    post = FakePost()
    report = deliver(controller, post, NOW + 1, timeout_s=7.0)
    assert len(report.delivered) == 3 and not (report.retrying or report.failed or report.postponed)
    [call] = post.to(paused.url)
    assert call.timeout_s == 7.0 and call.headers["Content-Type"] == "application/json"
    assert call.headers["EdgeFleet-Event"] == "rollout.paused"
    assert webhooks.verify(secret, call.headers["EdgeFleet-Signature"], call.body, now=NOW + 1)
    delivery = deliveries(controller, paused.id)[0]
    assert call.doc == {"id": delivery.id, "event": "rollout.paused", "created_at": NOW,
                        "data": {"rollout_id": "r1", "reason": "gate"}}
    assert call.headers["EdgeFleet-Delivery"] == str(delivery.id)
    assert (delivery.state, delivery.attempts, delivery.last_status, delivery.delivered_at) == \
        (DeliveryState.DELIVERED, 1, 200, NOW + 1)
    assert sorted(c.doc["event"] for c in post.to(every.url)) == ["rollout.paused", "rollout.succeeded"]
    assert deliver(controller, post, NOW + 3600) == webhooks.DeliveryReport()
    assert len(post.calls) == 3


def test_no_answer_or_an_error_status_is_retried_later_and_later(controller, hook):
    row, _ = hook()
    emit(controller)
    post = FakePost({row.url: [500, ConnectionError("refused"), 302, 200]})
    [delivery_id] = deliver(controller, post, NOW).retrying
    [d] = deliveries(controller, row.id)
    assert (d.state, d.attempts, d.last_status, d.last_error, d.next_attempt_at) == \
        (DeliveryState.PENDING, 1, 500, "HTTP 500", NOW + 10)
    assert deliver(controller, post, NOW + 9) == webhooks.DeliveryReport()        # not due yet
    assert deliver(controller, post, NOW + 10).retrying == [delivery_id]
    [d] = deliveries(controller, row.id)
    assert (d.attempts, d.last_status, d.last_error, d.next_attempt_at) == \
        (2, None, "ConnectionError: refused", NOW + 10 + 20)
    assert deliver(controller, post, NOW + 30).retrying == [delivery_id]          # a redirect is not followed
    assert deliveries(controller, row.id)[0].next_attempt_at == NOW + 30 + 40
    assert deliver(controller, post, NOW + 70).delivered == [delivery_id]
    [d] = deliveries(controller, row.id)
    assert (d.state, d.attempts, d.last_status, d.last_error) == (DeliveryState.DELIVERED, 4, 200, None)
    assert len({c.doc["id"] for c in post.calls}) == 1 and len({c.body for c in post.calls}) == 1


def test_a_delivery_fails_after_max_attempts(controller, hook):
    row, _ = hook()
    emit(controller)
    post, retry, now = FakePost({row.url: [503]}), webhooks.RetryPolicy(max_attempts=3, base_s=1), NOW
    outcomes = []
    for _ in range(3):
        report = deliver(controller, post, now, retry=retry)
        outcomes.append((len(report.retrying), len(report.failed)))
        now += 3600
    assert outcomes == [(1, 0), (1, 0), (0, 1)]
    [d] = deliveries(controller, row.id)
    assert (d.state, d.attempts, d.last_status) == (DeliveryState.FAILED, 3, 503)
    assert deliver(controller, post, now + 86400, retry=retry) == webhooks.DeliveryReport()
    assert len(post.calls) == 3


def test_a_failing_receiver_does_not_hold_up_another(controller, hook):
    broken, _ = hook("https://broken.example.com/")
    fine, _ = hook("https://fine.example.com/")
    emit(controller)
    emit(controller, WebhookEvent.ROLLOUT_ABORTED)
    post = FakePost({broken.url: [RuntimeError("boom")]})
    report = deliver(controller, post, NOW)
    assert sorted(report.delivered) == sorted(d.id for d in deliveries(controller, fine.id))
    first, second = sorted(d.id for d in deliveries(controller, broken.id))
    # the broken receiver's second delivery waits for the next pass instead of failing too
    assert (report.retrying, report.postponed) == ([first], [second])
    assert len(post.to(broken.url)) == 1
    [d] = [d for d in deliveries(controller, broken.id) if d.id == second]
    assert (d.state, d.attempts, d.in_flight_until) == (DeliveryState.PENDING, 0, None)
    assert deliver(controller, post, NOW + 1).retrying == [second]


def test_a_delivery_being_sent_is_not_sent_again_and_a_dead_senders_claim_runs_out(controller, hook):
    row, _ = hook()
    emit(controller)
    nested: list[webhooks.DeliveryReport] = []

    def post(url, body, headers, timeout_s):  # a second controller's pass while this one sends
        nested.append(deliver(controller, FakePost(), NOW))
        return 200

    assert len(deliver(controller, post, NOW).delivered) == 1
    assert nested == [webhooks.DeliveryReport()]
    emit(controller)
    with controller.session() as session:   # claimed by a sender that died before it recorded anything
        [d] = [d for d in webhooks.deliveries_of(session, row.id) if d.state == DeliveryState.PENDING]
        d.in_flight_until = NOW + 15
    fresh = FakePost()
    assert deliver(controller, fresh, NOW + 14) == webhooks.DeliveryReport()
    assert len(deliver(controller, fresh, NOW + 15).delivered) == 1


def test_an_event_of_a_rolled_back_transaction_is_not_stored(controller, hook):
    row, _ = hook()
    with pytest.raises(RuntimeError), controller.session() as session:
        assert webhooks.emit(session, event=WebhookEvent.ROLLOUT_ABORTED, payload={}, now=NOW) == 1
        assert webhooks.emitted(session)
        raise RuntimeError("the state change failed")
    assert deliveries(controller, row.id) == []
    assert deliver(controller, FakePost(), NOW) == webhooks.DeliveryReport()


def test_unknown_events_are_refused_and_disabled_webhooks_get_nothing(controller, hook):
    row, _ = hook()
    with pytest.raises(InvalidRequestError) as info, controller.session() as session:
        webhooks.emit(session, event="rollout.exploded", payload={}, now=NOW)
    assert info.value.where == "event"
    with controller.session() as session:
        webhooks.get_webhook(session, row.id).enabled = False
    assert emit(controller) == 0


def test_deleting_a_webhook_drops_its_deliveries(controller, hook):
    row, _ = hook()
    emit(controller)
    [pending] = deliveries(controller, row.id)
    with controller.session() as session:
        webhooks.delete_webhook(session, webhook_id=row.id, actor="admin:test", now=NOW)
    with controller.session() as session:
        assert webhooks.list_webhooks(session) == []
        assert session.get(WebhookDelivery, pending.id) is None
        actions = [e.action for e in audit.list_entries(session, action="webhook.")]
    assert actions == ["webhook.delete", "webhook.create"]
    assert deliver(controller, FakePost(), NOW) == webhooks.DeliveryReport()


@pytest.fixture
def pg_controller(settings, clock, transport, pg_url):
    """A controller on a PostgreSQL database of its own."""
    controller = Controller(settings.model_copy(update={"database_url": pg_url}), clock=clock,
                            transport_factory=lambda url, on_message: transport, reconcile_in_background=False)
    try:
        yield controller
    finally:
        controller.engine.dispose()


@pytest.mark.postgres
@pytest.mark.integration
def test_two_senders_on_postgres_never_claim_one_delivery_twice(pg_controller):
    controller = pg_controller
    assert controller.engine.dialect.name == "postgresql"
    with controller.session() as session:
        row, secret = webhooks.create_webhook(session, url="https://hooks.example.com/pg", events=["*"],
                                              actor="admin:test", now=NOW)
    for event in (WebhookEvent.ROLLOUT_PAUSED, WebhookEvent.ROLLOUT_ABORTED, WebhookEvent.ROLLOUT_SUCCEEDED):
        emit(controller, event)
    post, rival = FakePost(), []

    @contextmanager
    def racing_session():
        """The first pass's claim transaction; before it commits, a second controller runs a pass."""
        with controller.session() as session:
            yield session
            if not rival:
                session.flush()
                rival.append(webhooks.deliver_due(controller.session, now=NOW, post=post))

    report = webhooks.deliver_due(racing_session, now=NOW, post=post)
    assert rival == [webhooks.DeliveryReport()]  # the claimed rows were locked: skipped, not waited for
    assert len(report.delivered) == 3 and len({c.doc["id"] for c in post.calls}) == len(post.calls) == 3
    assert all(webhooks.verify(secret, c.headers["EdgeFleet-Signature"], c.body, now=NOW) for c in post.calls)
    assert [d.state for d in deliveries(controller, row.id)] == [DeliveryState.DELIVERED] * 3


# ------------------------------------------------------------------------------------ the API

def test_the_api_creates_shows_the_secret_once_pings_and_removes(client, controller):
    r = client.post("/api/v1/webhooks", json={"url": "https://hooks.example.com/ef", "description": "chat"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40 and created["events"] == ["*"]
    listed = client.get("/api/v1/webhooks").json()
    assert [w["id"] for w in listed] == [created["id"]] and "secret" not in listed[0]
    assert created["secret"] not in client.get("/api/v1/webhooks").text

    r = client.post(f"/api/v1/webhooks/{created['id']}/ping")
    assert r.status_code == 202 and r.json()["state"] == "pending"
    post = FakePost()
    controller.webhook_post = post
    assert controller.deliver_webhooks().delivered == [r.json()["id"]]
    [call] = post.calls
    assert call.doc["event"] == "ping" and call.doc["data"] == {"webhook_id": created["id"]}
    assert webhooks.verify(created["secret"], call.headers["EdgeFleet-Signature"], call.body, now=controller.now())
    [d] = client.get(f"/api/v1/webhooks/{created['id']}/deliveries").json()
    assert (d["state"], d["attempts"], d["last_status"]) == ("delivered", 1, 200)

    assert client.delete(f"/api/v1/webhooks/{created['id']}").status_code == 204
    assert client.get(f"/api/v1/webhooks/{created['id']}/deliveries").status_code == 404
    assert client.post(f"/api/v1/webhooks/{created['id']}/ping").status_code == 404
    actions = [e["action"] for e in client.get("/api/v1/audit", params={"action": "webhook."}).json()]
    assert actions == ["webhook.delete", "webhook.ping", "webhook.create"]


def test_a_stored_event_wakes_the_background_sender(settings, clock, transport):
    post = FakePost()
    app = create_app(settings.model_copy(update={"webhook_interval_s": 3600.0}), clock=clock,
                     transport_factory=lambda url, on_message: transport, webhook_post=post)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        hook_id = client.post("/api/v1/webhooks", json={"url": "https://hooks.example.com/"}).json()["id"]
        assert client.post(f"/api/v1/webhooks/{hook_id}/ping").status_code == 202
        wait_until(lambda: post.calls, what="the ping sent long before the sender's interval")


@pytest.mark.parametrize(("body", "where"), [({"url": "ftp://x.example.com/"}, "url"),
                                             ({"url": "https://x.example.com/", "events": ["nope"]}, "events")])
def test_the_api_refuses_bad_webhooks_naming_the_field(client, body, where):
    r = client.post("/api/v1/webhooks", json=body)
    assert r.status_code == 400 and r.json()["error"]["where"] == where
    assert client.get("/api/v1/webhooks").json() == []


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_only_admins_manage_webhooks(client, role):
    token = client.post("/api/v1/tokens", json={"name": role, "role": role}).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    r = client.post("/api/v1/webhooks", json={"url": "https://hooks.example.com/"}, headers=headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert client.get("/api/v1/webhooks", headers=headers).status_code == 403
    assert client.get("/api/v1/webhooks").json() == []


# ------------------------------------------------------------------------------------ the CLI

def test_the_cli_adds_lists_pings_shows_deliveries_and_removes(client, controller, capsys, monkeypatch):
    from edgefleet.cloud.cli import webhooks as cli_webhooks
    monkeypatch.setattr(cli_webhooks, "client_from_env", lambda url, token: CliClient(client))

    def run(*args: str) -> str:
        capsys.readouterr()
        assert cli(list(args)) == 0
        return capsys.readouterr().out

    out = run("webhook", "add", "https://hooks.example.com/cli", "--event", "rollout.paused",
              "--event", "rollout.aborted", "--description", "ops chat")
    assert "signing secret (shown once): whsec_" in out
    [listed] = json.loads(run("webhook", "list", "--json"))
    assert listed["events"] == ["rollout.aborted", "rollout.paused"] and listed["description"] == "ops chat"
    assert "ops chat" in run("webhook", "list")
    hook_id = str(listed["id"])
    assert "ping queued as delivery" in run("webhook", "ping", hook_id)
    controller.webhook_post = FakePost({"https://hooks.example.com/cli": [500]})
    controller.deliver_webhooks()
    [d] = json.loads(run("webhook", "deliveries", hook_id, "--json"))
    assert (d["event"], d["state"], d["attempts"], d["last_error"]) == ("ping", "pending", 1, "HTTP 500")
    assert "HTTP 500" in run("webhook", "deliveries", hook_id)
    assert json.loads(run("webhook", "remove", hook_id, "--json")) == {"removed": int(hook_id)}
    assert json.loads(run("webhook", "list", "--json")) == []
