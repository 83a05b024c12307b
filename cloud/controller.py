"""The composition root: one :class:`Controller` owns the engine, keys, stores, metrics, the
MQTT transport (embedded broker when no URL is configured), the ingest worker, the reconciler, the
compression-job worker and the webhook sender.

``create_app`` wraps it in FastAPI; the demo and tests can use it directly::

    controller = Controller(settings)
    controller.start()          # broker, MQTT bridge, ingest worker, reconciler loop
    with controller.session() as session: ...
    controller.stop()
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from sqlmodel import Session

from edgefleet.cloud.background import BackgroundLoop
from edgefleet.cloud.metrics import ControllerMetrics
from edgefleet.cloud.mqtt.bridge import MqttBridge
from edgefleet.cloud.mqtt.broker import EmbeddedBroker
from edgefleet.cloud.mqtt.decoding import Decoded
from edgefleet.cloud.mqtt.ingest import Ingestor
from edgefleet.cloud.services import auth, compression_jobs, deployments, trust, webhooks
from edgefleet.cloud.services.orders import OrderIssuer
from edgefleet.cloud.services.reconciler import ReconcileReport, reconcile
from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.cloud.store.blobs import BlobStore
from edgefleet.cloud.store.engine import create_schema, make_engine, session_scope
from edgefleet.protocol.brokers import parse_broker_url
from edgefleet.protocol.keys import TrustedKeys, key_id, public_key_pem
from edgefleet.protocol.topics import controller_subscriptions

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class Transport(Protocol):
    """What the controller needs from MQTT (the real one is :class:`MqttBridge`)."""

    @property
    def connected(self) -> bool: ...

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def publish(self, topic: str, payload: bytes) -> bool: ...


TransportFactory = Callable[[str, Callable[[str, bytes], None]], Transport]
"""Builds a transport from the broker URL and the raw-message callback."""
WebhookPost = webhooks.Post
"""Sends one webhook request: ``(url, body, headers, timeout_s) -> HTTP status`` (the real one is
:func:`webhooks.http_post`)."""


class Controller:
    def __init__(self, settings: ControllerSettings, *, clock: Clock = time.time,
                 transport_factory: TransportFactory | None = None, reconcile_in_background: bool = True,
                 webhook_post: WebhookPost | None = None) -> None:
        self.settings = settings
        self.clock = clock
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(settings.resolved_database_url)
        create_schema(self.engine)
        self.controller_key = trust.load_or_create_controller_key(settings.resolved_controller_key_path)
        self.configured_release_keys = trust.configured_release_keys(settings.release_key_paths)
        passphrase = settings.release_signing_key_passphrase
        self.release_signing_key = trust.load_release_signing_key(
            settings.release_signing_key_path, passphrase.get_secret_value() if passphrase else None)
        self.bundles = BlobStore(settings.bundle_dir)
        self.artifacts = BlobStore(settings.data_dir / "artifacts")
        self.metrics = ControllerMetrics()
        self.issuer = OrderIssuer(key=self.controller_key, public_url=settings.resolved_public_url,
                                  lifetime_s=settings.order_lifetime_s,
                                  download_lifetime_s=settings.download_token_lifetime_s)
        self.ingestor = Ingestor(engine=self.engine, prefix=settings.topic_prefix, metrics=self.metrics, clock=clock,
                                 batch_max=settings.ingest_batch_max, queue_max=settings.ingest_queue_max,
                                 decode_workers=settings.ingest_decode_workers, on_stored=self._stored)
        self._transport_factory = transport_factory or self._mqtt_transport
        self.transport: Transport | None = None
        self.broker: EmbeddedBroker | None = None
        self.broker_url: str | None = settings.broker_url
        self._publish_lock = threading.Lock()
        self._loop = BackgroundLoop(self.reconcile, interval_s=settings.reconcile_interval_s, name="reconciler",
                                    min_gap_s=settings.rollout_wake_interval_s) if reconcile_in_background else None
        self._rollout_devices: frozenset[str] = frozenset()
        """Devices in a running stage of a rollout (refreshed by every pass): their reports wake the reconciler."""
        self._jobs_lock = threading.Lock()
        self._jobs = BackgroundLoop(self.run_pending_jobs, interval_s=settings.compression_poll_interval_s,
                                    name="compression-worker") \
            if reconcile_in_background else None
        self.webhook_post: WebhookPost = webhook_post or webhooks.http_post
        """Sends one webhook request (tests replace it)."""
        self._webhook_retry = webhooks.RetryPolicy(max_attempts=settings.webhook_max_attempts,
                                                   base_s=settings.webhook_retry_base_s,
                                                   cap_s=settings.webhook_retry_cap_s)
        self._webhook_rng = random.Random()
        self._webhooks = BackgroundLoop(self.deliver_webhooks, interval_s=settings.webhook_interval_s,
                                        name="webhooks") if reconcile_in_background else None
        with self.session() as session:
            self.initial_admin_token = auth.ensure_admin_token(session, secret=settings.admin_token, now=clock())
        if self.initial_admin_token:  # the plaintext is handed to whoever started us, never logged
            log.warning("created the first admin API token (its holder is shown it once)")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.broker_url is None:
            self.broker = EmbeddedBroker(host=self.settings.embedded_broker_host,
                                         port=self.settings.embedded_broker_port,
                                         max_payload_size=self.settings.embedded_broker_max_payload).start()
            self.broker_url = self.broker.url
        self.ingestor.start()
        self.transport = self._transport_factory(self.broker_url, self.ingestor.submit)
        self.transport.start()
        if self._loop is not None:
            self._loop.start()
        with self.session() as session:
            compression_jobs.recover_interrupted(session, now=self.clock())
        if self._jobs is not None:
            self._jobs.start()
        if self._webhooks is not None:
            self._webhooks.start()
        log.info("controller started: API %s, broker %s", self.settings.resolved_public_url,
                 parse_broker_url(self.broker_url).public_url)

    def stop(self) -> None:
        if self._webhooks is not None:
            self._webhooks.stop(timeout_s=self.settings.webhook_timeout_s + 5)
        if self._jobs is not None:
            self._jobs.stop()
        if self._loop is not None:
            self._loop.stop()
        if self.transport is not None:
            self.transport.stop()
            self.transport = None
        self.ingestor.stop()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
            self.broker_url = self.settings.broker_url
        self.engine.dispose()

    def _mqtt_transport(self, url: str, on_message: Callable[[str, bytes], None]) -> Transport:
        return MqttBridge(url=url, client_id=self.settings.resolved_mqtt_client_id, on_message=on_message,
                          subscriptions=controller_subscriptions(self.settings.topic_prefix,
                                                                 self.settings.shared_subscription_group),
                          shared_group=self.settings.shared_subscription_group)

    # ------------------------------------------------------------------ helpers used by the API

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.engine) as session:
            yield session
        if webhooks.emitted(session):  # committed: send the new deliveries now
            self.wake_webhooks()

    def now(self) -> float:
        return self.clock()

    def trusted_release_keys(self, session: Session) -> TrustedKeys:
        return trust.trusted_release_keys(session, configured=self.configured_release_keys)

    @property
    def controller_key_id(self) -> str:
        return key_id(self.controller_key.public_key())

    @property
    def controller_public_pem(self) -> str:
        return public_key_pem(self.controller_key.public_key()).decode()

    @property
    def device_broker_url(self) -> str | None:
        """The broker URL handed to devices (no controller credentials)."""
        if self.settings.device_broker_url:
            return self.settings.device_broker_url
        return parse_broker_url(self.broker_url).public_url if self.broker_url else None

    def publish(self, topic: str, payload: bytes) -> bool:
        return self.transport is not None and self.transport.publish(topic, payload)

    def publish_pending(self) -> int:
        """Send stored orders now (after a deployment is created or cancelled)."""
        with self._publish_lock, self.session() as session:
            sent = deployments.publish_pending(session, publish=self.publish, prefix=self.settings.topic_prefix,
                                               issuer=self.issuer, now=self.clock())
        self.metrics.orders_published.inc(sent)
        return sent

    def wake_jobs(self) -> None:
        """Tell the compression worker a job is waiting (no-op without the background worker)."""
        if self._jobs is not None:
            self._jobs.wake()

    def run_pending_jobs(self) -> list[int]:
        """Run every pending compression job to a final state, in order; return their ids.
        The background worker calls this; tests (``reconcile_in_background=False``) call it directly."""
        done: list[int] = []
        with self._jobs_lock:
            while (job_id := compression_jobs.run_next(open_session=self.session, store=self.artifacts,
                                                       clock=self.clock,
                                                       max_dataset_bytes=self.settings.max_dataset_bytes)) is not None:
                done.append(job_id)
        return done

    def wake_webhooks(self) -> None:
        """Tell the webhook sender deliveries are waiting (no-op without the background sender)."""
        if self._webhooks is not None:
            self._webhooks.wake()

    def deliver_webhooks(self, now: float | None = None) -> webhooks.DeliveryReport:
        """Send the due webhook deliveries. The background sender calls this; tests
        (``reconcile_in_background=False``) call it directly."""
        return webhooks.deliver_due(self.session, now=self.clock() if now is None else now, post=self.webhook_post,
                                    timeout_s=self.settings.webhook_timeout_s, retry=self._webhook_retry,
                                    rng=self._webhook_rng)

    def advance_rollouts(self) -> list[str]:
        """Advance every running rollout now and send the orders that makes (after an API action)."""
        with self._publish_lock:
            advanced = rollouts.advance_rollouts(self.session, now=self.clock(), issuer=self.issuer)
        self.publish_pending()
        return advanced

    def reconcile(self, now: float | None = None) -> ReconcileReport:
        with self._publish_lock:
            report = reconcile(self.session, now=self.clock() if now is None else now,
                               heartbeat_timeout_s=self.settings.heartbeat_timeout_s,
                               processed_id_retention_s=self.settings.processed_id_retention_s,
                               publish=self.publish, issuer=self.issuer, prefix=self.settings.topic_prefix,
                               metrics=self.metrics)
        with self.session() as session:
            self._rollout_devices = frozenset(rollouts.devices_in_running_stages(session))
        return report

    def _stored(self, items: list[Decoded]) -> None:
        """Ingest stored a batch: a telemetry window or status of a device in a running rollout stage
        may change a gate's verdict, so the reconciler runs now (its passes stay ``rollout_wake_interval_s``
        apart)."""
        if self._loop is None or not self.settings.rollout_wake_interval_s or not self._rollout_devices:
            return
        if any(i.kind in ("telemetry", "status") and i.device_id in self._rollout_devices for i in items):
            self._loop.wake()
