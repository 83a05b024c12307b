"""Webhooks out: the controller tells HTTP receivers about events, signed and retried.

A webhook is a URL, the events it subscribes to and a secret. :func:`emit` stores one
:class:`WebhookDelivery` per subscribed webhook in the caller's transaction, so an event exists
exactly when the state change behind it commits. :func:`deliver_due` (the controller's
``webhooks`` loop) sends the due ones: it claims them in one short transaction, sends outside any
transaction through the injected ``post`` (one sender thread per webhook, a timeout per request),
and records each result in a transaction of its own. A 2xx answer delivers; anything else is
retried with capped exponential backoff (:class:`RetryPolicy`) until ``max_attempts``. Delivery is
at least once: receivers de-duplicate on the ``EdgeFleet-Delivery`` header. Requests are signed
Stripe-style (:func:`sign`, :func:`verify`), docs/webhooks.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import secrets
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sqlmodel import Session, col, or_, select

from edgefleet.cloud.services import audit
from edgefleet.cloud.store.engine import OpenSession
from edgefleet.cloud.store.tables import Webhook, WebhookDelivery, row_id
from edgefleet.cloud.vocabulary import DeliveryState, WebhookEvent
from edgefleet.protocol.errors import InvalidRequestError, NotFoundError, TransportError

log = logging.getLogger(__name__)

Post = Callable[[str, bytes, dict[str, str], float], int]
"""``post(url, body, headers, timeout_s) -> HTTP status``; raises when no answer came."""

EVENTS: tuple[str, ...] = tuple(WebhookEvent)
ALL_EVENTS = "*"
"""Subscribes a webhook to every event, also those added later."""
SECRET_PREFIX = "whsec_"
SIGNATURE_HEADER = "EdgeFleet-Signature"
EVENT_HEADER = "EdgeFleet-Event"
DELIVERY_HEADER = "EdgeFleet-Delivery"
MAX_URL_LENGTH = 2048
PER_WEBHOOK_PER_PASS = 10
"""Deliveries one pass sends to one webhook (one after the other), so a pass stays short."""
SENDERS = 8
"""Webhooks a pass sends to at the same time."""
CLAIM_GRACE_S = 5.0
_EMITTED = "edgefleet.webhooks.emitted"
"""Key in ``Session.info``: set once the session stored a delivery."""


# ------------------------------------------------------------------------------------ pure core

def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``EdgeFleet-Signature`` header: ``t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance_s: float = 300) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a time at most ``tolerance_s`` from ``now``
    (older is a replay). Constant-time; any of several ``v1`` values may match (secret rotation)."""
    timestamp: int | None = None
    signatures: list[bytes] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value.encode("utf-8"))
    if timestamp is None or abs(now - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, timestamp, body).encode("ascii")
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 10
    base_s: float = 10.0
    cap_s: float = 3600.0

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds from the ``failures``-th failed attempt (1-based) to the next: ``base_s`` doubled
        per further failure, capped; with ``rng``, "equal jitter" (half fixed, half random)."""
        step = min(self.cap_s, self.base_s * 2.0 ** min(max(failures - 1, 0), 32))
        return step if rng is None else step / 2.0 + rng.uniform(0.0, step / 2.0)


DEFAULT_RETRY = RetryPolicy()


def check_url(url: str) -> str:
    """``url`` if it is an absolute ``http(s)://`` URL with a host; :class:`InvalidRequestError` otherwise."""
    problem = None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError as exc:
        problem = f"not a URL ({exc})"
    else:
        if len(url) > MAX_URL_LENGTH:
            problem = f"longer than {MAX_URL_LENGTH} characters"
        elif any(c.isspace() or not c.isprintable() for c in url):
            problem = "contains spaces or control characters"
        elif parts.scheme not in ("http", "https"):
            problem = f"scheme {parts.scheme!r} is not http or https"
        elif not parts.hostname:
            problem = "has no host"
    if problem:
        raise InvalidRequestError(f"webhook URL {problem}", where="url",
                                  hint="give an absolute URL like https://hooks.example.com/edgefleet")
    return url


def check_events(events: Iterable[str]) -> list[str]:
    """The subscription to store: the known event names (sorted, once each), or ``["*"]``."""
    chosen = set(events)
    hint = f"known events: {', '.join(EVENTS)}, or {ALL_EVENTS!r} for all"
    if not chosen:
        raise InvalidRequestError("subscribe to at least one event", where="events", hint=hint)
    unknown = sorted(chosen - set(EVENTS) - {ALL_EVENTS})
    if unknown:
        raise InvalidRequestError(f"unknown event {unknown[0]!r}", where="events", hint=hint)
    return [ALL_EVENTS] if ALL_EVENTS in chosen else sorted(chosen)


def subscribes(events: Iterable[str], event: str) -> bool:
    subscribed = set(events)
    return ALL_EVENTS in subscribed or event in subscribed


def delivery_body(delivery_id: int, *, event: str, created_at: float, data: dict[str, Any]) -> str:
    return json.dumps({"id": delivery_id, "event": event, "created_at": created_at, "data": data},
                      separators=(",", ":"), sort_keys=True)


def delivery_headers(*, secret: str, event: str, delivery_id: int, body: bytes, now: float) -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": "EdgeFleet-Webhooks/1", EVENT_HEADER: event,
            DELIVERY_HEADER: str(delivery_id), SIGNATURE_HEADER: sign(secret, int(now), body)}


# ------------------------------------------------------------------------------------ webhooks

def create_webhook(session: Session, *, url: str, events: Iterable[str], actor: str, now: float,
                   description: str = "") -> tuple[Webhook, str]:
    """Register a receiver; return the row and its secret (the only time the API shows it)."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    row = Webhook(url=check_url(url), events=check_events(events), secret=secret, description=description,
                  created_at=now, created_by=actor)
    session.add(row)
    session.flush()
    audit.record(session, actor=actor, action="webhook.create", target=f"webhook:{row.id}",
                 details={"url": row.url, "events": row.events}, now=now)
    log.info("webhook %s created for %s (events %s) by %s", row.id, row.url, ",".join(row.events), actor)
    return row, secret


def list_webhooks(session: Session) -> list[Webhook]:
    return list(session.exec(select(Webhook).order_by(col(Webhook.id))))


def get_webhook(session: Session, webhook_id: int) -> Webhook:
    row = session.get(Webhook, webhook_id)
    if row is None:
        raise NotFoundError(f"no webhook {webhook_id}", where="webhook_id")
    return row


def delete_webhook(session: Session, *, webhook_id: int, actor: str, now: float) -> Webhook:
    """Remove the webhook and its deliveries (pending ones are not sent)."""
    row = get_webhook(session, webhook_id)
    for delivery in session.exec(select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)):
        session.delete(delivery)
    session.flush()
    session.delete(row)
    audit.record(session, actor=actor, action="webhook.delete", target=f"webhook:{webhook_id}",
                 details={"url": row.url}, now=now)
    log.info("webhook %s (%s) deleted by %s", webhook_id, row.url, actor)
    return row


def deliveries_of(session: Session, webhook_id: int, limit: int = 50) -> list[WebhookDelivery]:
    """The webhook's latest deliveries, newest first."""
    get_webhook(session, webhook_id)
    return list(session.exec(select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
                             .order_by(col(WebhookDelivery.id).desc()).limit(limit)))


# ------------------------------------------------------------------------------------ events

def emit(session: Session, *, event: str, payload: dict[str, Any], now: float) -> int:
    """Store ``event`` for every enabled webhook subscribed to it, in the caller's transaction (a
    rollback stores nothing). Returns how many deliveries it stored."""
    if event not in EVENTS:
        raise InvalidRequestError(f"unknown event {event!r}", where="event", hint=f"one of {', '.join(EVENTS)}")
    hooks = [hook for hook in session.exec(select(Webhook).where(col(Webhook.enabled).is_(True))
                                           .order_by(col(Webhook.id)))
             if subscribes(hook.events, event)]
    for hook in hooks:
        _enqueue(session, hook, event=event, payload=payload, now=now)
    return len(hooks)


def ping(session: Session, *, webhook_id: int, actor: str, now: float) -> WebhookDelivery:
    """A ``ping`` to this one webhook (whatever it subscribes to), to test its receiver."""
    hook = get_webhook(session, webhook_id)
    delivery = _enqueue(session, hook, event=WebhookEvent.PING, payload={"webhook_id": webhook_id}, now=now)
    audit.record(session, actor=actor, action="webhook.ping", target=f"webhook:{webhook_id}",
                 details={"delivery_id": delivery.id}, now=now)
    return delivery


def emitted(session: Session) -> bool:
    """Whether this session stored a delivery (the controller wakes its sender after the commit)."""
    return bool(session.info.get(_EMITTED))


def _enqueue(session: Session, hook: Webhook, *, event: str, payload: dict[str, Any], now: float) -> WebhookDelivery:
    delivery = WebhookDelivery(webhook_id=row_id(hook), event=event, next_attempt_at=now, created_at=now,
                               updated_at=now)
    session.add(delivery)
    session.flush()
    delivery.body = delivery_body(row_id(delivery), event=event, created_at=now, data=payload)
    session.info[_EMITTED] = True
    log.info("webhook delivery %s (%s) to webhook %s: pending", delivery.id, event, hook.id)
    return delivery


# ------------------------------------------------------------------------------------ delivering

@dataclass
class DeliveryReport:
    """Delivery ids by what one :func:`deliver_due` pass did with them."""

    delivered: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    """No 2xx answer; due again after the backoff."""
    failed: list[int] = field(default_factory=list)
    """No 2xx answer at the last attempt: given up."""
    postponed: list[int] = field(default_factory=list)
    """Not tried: an earlier delivery to the same webhook got no 2xx answer in this pass."""

    def add(self, other: DeliveryReport) -> None:
        for name in ("delivered", "retrying", "failed", "postponed"):
            getattr(self, name).extend(getattr(other, name))


@dataclass(frozen=True)
class _Claim:
    delivery_id: int
    webhook_id: int
    url: str
    secret: str
    event: str
    body: bytes


def deliver_due(open_session: OpenSession, *, now: float, post: Post, limit: int = 100, timeout_s: float = 10.0,
                retry: RetryPolicy = DEFAULT_RETRY, rng: random.Random | None = None) -> DeliveryReport:
    """Send the due deliveries (at most ``limit``, at most :data:`PER_WEBHOOK_PER_PASS` per
    webhook). Claimed first in one short transaction (a row lock skips those another controller
    is claiming; the claim keeps them from being claimed again while they are sent), then sent
    with no transaction open, each result recorded in its own transaction."""
    queues = _claim(open_session, now=now, limit=limit, timeout_s=timeout_s)
    report = DeliveryReport()
    if not queues:
        return report

    def send(queue: list[_Claim]) -> DeliveryReport:
        return _send_queue(open_session, queue, now=now, post=post, timeout_s=timeout_s, retry=retry, rng=rng)

    with ThreadPoolExecutor(max_workers=min(SENDERS, len(queues)), thread_name_prefix="edgefleet-webhook") as pool:
        for part in pool.map(send, queues):
            report.add(part)
    return report


def _claim(open_session: OpenSession, *, now: float, limit: int, timeout_s: float) -> list[list[_Claim]]:
    """The due deliveries, claimed (``in_flight_until``), grouped by webhook in the order to send."""
    enabled = select(Webhook.id).where(col(Webhook.enabled).is_(True))
    with open_session() as session:
        rows = list(session.exec(
            select(WebhookDelivery)
            .where(WebhookDelivery.state == DeliveryState.PENDING, col(WebhookDelivery.next_attempt_at) <= now,
                   or_(col(WebhookDelivery.in_flight_until).is_(None), col(WebhookDelivery.in_flight_until) <= now),
                   col(WebhookDelivery.webhook_id).in_(enabled))
            .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id))
            .limit(limit)
            .with_for_update(skip_locked=True, of=WebhookDelivery)))
        if not rows:
            return []
        hooks = {row_id(hook): hook for hook in session.exec(
            select(Webhook).where(col(Webhook.id).in_({row.webhook_id for row in rows})))}
        queues: dict[int, list[_Claim]] = {}
        for row in rows:
            queue = queues.setdefault(row.webhook_id, [])
            if len(queue) >= PER_WEBHOOK_PER_PASS:
                continue
            # sent one after the other, each within timeout_s: the claim covers this one's turn
            row.in_flight_until = now + (len(queue) + 1) * timeout_s + CLAIM_GRACE_S
            hook = hooks[row.webhook_id]
            queue.append(_Claim(delivery_id=row_id(row), webhook_id=row.webhook_id, url=hook.url, secret=hook.secret,
                                event=row.event, body=row.body.encode("utf-8")))
    return list(queues.values())


def _send_queue(open_session: OpenSession, queue: list[_Claim], *, now: float, post: Post, timeout_s: float,
                retry: RetryPolicy, rng: random.Random | None) -> DeliveryReport:
    """One webhook's claimed deliveries in order, until one gets no 2xx (the rest wait for the next pass)."""
    report = DeliveryReport()
    for index, claim in enumerate(queue):
        status, error = _attempt(claim, now=now, post=post, timeout_s=timeout_s)
        state = _record(open_session, claim, status=status, error=error, now=now, retry=retry, rng=rng)
        if state == DeliveryState.DELIVERED:
            report.delivered.append(claim.delivery_id)
            continue
        if state == DeliveryState.FAILED:
            report.failed.append(claim.delivery_id)
        elif state == DeliveryState.PENDING:
            report.retrying.append(claim.delivery_id)
        rest = [c.delivery_id for c in queue[index + 1:]]
        _release(open_session, rest)
        report.postponed.extend(rest)
        break
    return report


def _attempt(claim: _Claim, *, now: float, post: Post, timeout_s: float) -> tuple[int | None, str | None]:
    """``(HTTP status or None, error or None)`` of one request; never raises."""
    headers = delivery_headers(secret=claim.secret, event=claim.event, delivery_id=claim.delivery_id,
                               body=claim.body, now=now)
    try:
        status = post(claim.url, claim.body, headers, timeout_s)
    except Exception as exc:  # whatever the injected sender raises is a failed attempt, retried
        return None, f"{type(exc).__name__}: {exc}"[:500]
    return status, None if 200 <= status < 300 else f"HTTP {status}"


def _record(open_session: OpenSession, claim: _Claim, *, status: int | None, error: str | None, now: float,
            retry: RetryPolicy, rng: random.Random | None) -> DeliveryState | None:
    """Store one attempt's result; the delivery's new state (``None``: it is gone or was settled)."""
    with open_session() as session:
        row = session.get(WebhookDelivery, claim.delivery_id)
        if row is None or row.state != DeliveryState.PENDING:
            return None
        row.attempts += 1
        row.last_status, row.last_error = status, error
        row.in_flight_until = None
        row.updated_at = now
        if error is None:
            row.state, row.delivered_at = DeliveryState.DELIVERED, now
            log.info("webhook delivery %s (%s) to webhook %s: delivered (HTTP %s, attempt %d)",
                     row.id, row.event, row.webhook_id, status, row.attempts)
        elif row.attempts >= retry.max_attempts:
            row.state = DeliveryState.FAILED
            log.warning("webhook delivery %s (%s) to webhook %s: failed after %d attempts (%s)",
                        row.id, row.event, row.webhook_id, row.attempts, error)
        else:
            row.next_attempt_at = now + retry.delay(row.attempts, rng)
            log.info("webhook delivery %s (%s) to webhook %s: retry in %.0f s after attempt %d (%s)",
                     row.id, row.event, row.webhook_id, row.next_attempt_at - now, row.attempts, error)
        return DeliveryState(row.state)


def _release(open_session: OpenSession, delivery_ids: list[int]) -> None:
    """Give claimed deliveries back unsent (due again at once)."""
    if not delivery_ids:
        return
    with open_session() as session:
        for row in session.exec(select(WebhookDelivery).where(col(WebhookDelivery.id).in_(delivery_ids))):
            row.in_flight_until = None


# ------------------------------------------------------------------------------------ the edge

def http_post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """POST ``body`` and return the status without reading the answer's body (redirects are not
    followed: they count as a failed attempt). No answer raises :class:`TransportError`."""
    import httpx2 as httpx  # here, not at module level: only the sender needs it

    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False) as client, \
                client.stream("POST", url, content=body, headers=headers) as response:
            return response.status_code
    except httpx.HTTPError as exc:
        raise TransportError(f"no answer from the webhook receiver: {exc}", where=url) from None
