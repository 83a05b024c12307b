"""The composition root: one :class:`Controller` owns the engine, keys, stores, metrics, the
MQTT transport (embedded broker when no URL is configured), the ingest worker, the reconciler, the
compression-job worker, the webhook sender and the drift-incident pass.

``create_app`` wraps it in FastAPI; the demo and tests can use it directly::

    controller = Controller(settings)
    controller.start()          # broker, MQTT bridge, ingest worker, reconciler loop
    with controller.session() as session: ...
    controller.stop()
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session

from edgefleet.cloud.background import BackgroundLoop
from edgefleet.cloud.metrics import ControllerMetrics
from edgefleet.cloud.mqtt.bridge import MqttBridge
from edgefleet.cloud.mqtt.broker import EmbeddedBroker, check_listen_address, embedded_broker_port
from edgefleet.cloud.mqtt.decoding import Decoded
from edgefleet.cloud.mqtt.dynsec import DynsecClient, DynsecIdentity
from edgefleet.cloud.mqtt.ingest import Ingestor
from edgefleet.cloud.services import (
    auth,
    broker_identity,
    broker_kinds,
    captures,
    compression_jobs,
    deployments,
    fleet_history,
    leases,
    retraining,
    trust,
    webhooks,
)
from edgefleet.cloud.services.device_ca import DeviceCA
from edgefleet.cloud.services.incidents import service as incidents
from edgefleet.cloud.services.incidents.rule import IncidentRule
from edgefleet.cloud.services.orders import OrderIssuer
from edgefleet.cloud.services.reconciler import ReconcileReport, reconcile
from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.cloud.store.blobs import BlobStore
from edgefleet.cloud.store.engine import create_schema, make_engine, session_scope
from edgefleet.protocol.acks import ack_messages
from edgefleet.protocol.brokers import parse_broker_url
from edgefleet.protocol.delegation import raw_public_key
from edgefleet.protocol.errors import ConfigError, EdgeFleetError
from edgefleet.protocol.keys import TrustedKeys, key_id, public_key_pem
from edgefleet.protocol.messages import SignedRoot, UploadRequest
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
        if settings.broker_url is None:   # checked before anything is made
            check_listen_address(settings.embedded_broker_host, insecure=settings.insecure_broker)
        broker_kinds.check_settings(settings.broker_kind, embedded=settings.broker_url is None,
                                    topic_prefix=settings.topic_prefix, shared_group=settings.shared_subscription_group)
        self.broker_identity: DynsecIdentity | None = managed_broker(settings)
        """The broker identities the controller keeps itself (``broker_admin``); ``None``: the operator's."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.embedded_broker_port: int | None = None if settings.broker_url is not None else embedded_broker_port(
            settings.data_dir, host=settings.embedded_broker_host, configured=settings.embedded_broker_port)
        """Kept in ``data_dir/broker.port`` across restarts (enrolled devices hold it in their ``agent.toml``)."""
        self.engine = make_engine(settings.resolved_database_url)
        create_schema(self.engine, auto_upgrade=settings.database_auto_upgrade)
        self.controller_key = trust.load_or_create_controller_key(settings.resolved_controller_key_path)
        self.device_ca = DeviceCA.load_or_create(settings.data_dir / "ca") if settings.device_certificates else None
        """Signs device TLS client certificates at enrollment (``device_certificates``)."""
        self.previous_controller_key: Ed25519PrivateKey | None = None
        """The key orders were signed with before the last rotation (its download links still work)."""
        self.configured_release_keys = trust.configured_release_keys(settings.release_key_paths)
        passphrase = settings.release_signing_key_passphrase
        self.release_signing_key = trust.load_release_signing_key(
            settings.release_signing_key_path, passphrase.get_secret_value() if passphrase else None)
        delegated_passphrase = settings.delegated_signing_key_passphrase
        self.delegated_signing_key = trust.load_delegated_signing_key(
            settings.delegated_signing_key_path,
            delegated_passphrase.get_secret_value() if delegated_passphrase else None)
        self.bundles = bundle_store(settings)
        """Local directory, or an S3 bucket (``bundle_store``; docs/operations.md, "Downloads that scale")."""
        self.artifacts = BlobStore(settings.data_dir / "artifacts")
        self.captures = BlobStore(settings.data_dir / "captures")
        """Captured datasets uploaded by devices (services/captures.py); their partial uploads: ``upload_dir``."""
        self.upload_dir = settings.data_dir / "uploads"
        self.metrics = ControllerMetrics()
        self.issuer = OrderIssuer(key=self.controller_key, public_url=settings.resolved_public_url,
                                  lifetime_s=settings.order_lifetime_s,
                                  download_lifetime_s=settings.download_token_lifetime_s)
        self.grants = captures.GrantIssuer(key=self.controller_key, public_url=settings.resolved_public_url,
                                           lifetime_s=settings.upload_grant_lifetime_s,
                                           max_bytes=settings.max_capture_bytes)
        self.ingestor = Ingestor(engine=self.engine, prefix=settings.topic_prefix, metrics=self.metrics, clock=clock,
                                 batch_max=settings.ingest_batch_max, queue_max=settings.ingest_queue_max,
                                 decode_workers=settings.ingest_decode_workers,
                                 accept_keyless=settings.accept_unsigned_devices, on_stored=self._stored,
                                 on_acked=self._acked if settings.delivery_acks else None)
        self._transport_factory = transport_factory or self._mqtt_transport
        self.transport: Transport | None = None
        self.broker: EmbeddedBroker | None = None
        self.broker_url: str | None = settings.broker_url
        self._broker_problem: str | None = "not checked yet"
        """Why the controller's own role on the managed broker is not known to be in place (``None``: it is)."""
        self._publish_lock = threading.Lock()
        self.instance = leases.instance_name()
        """This process among the controllers sharing the database (the holder of its leases)."""
        self._loop = BackgroundLoop(self._leased(self.reconcile, "reconciler"),
                                    interval_s=settings.reconcile_interval_s, name="reconciler",
                                    min_gap_s=settings.rollout_wake_interval_s) \
            if reconcile_in_background else None
        self._rollout_devices: frozenset[str] = frozenset()
        """Devices in a running stage of a rollout (refreshed by every pass): their reports wake the reconciler."""
        self._jobs_lock = threading.Lock()
        self._jobs = BackgroundLoop(self._leased(self.run_pending_jobs, "compression-worker"),
                                    interval_s=settings.compression_poll_interval_s, name="compression-worker") \
            if reconcile_in_background else None
        self._retraining_lock = threading.Lock()
        self._retraining = BackgroundLoop(self._leased(self.run_retraining_jobs, "retraining-worker"),
                                          interval_s=settings.compression_poll_interval_s,
                                          name="retraining-worker") if reconcile_in_background else None
        """Retraining jobs run in a worker of their own: a long training run holds up no compression job."""
        self.retraining = retraining.Workshop(
            open_session=self.session, artifacts=self.artifacts, bundles=self.bundles, captures=self.captures,
            work_root=settings.data_dir / "retraining", signer=self.bundle_signer, trusted=self.trusted_release_keys,
            clock=clock, max_dataset_bytes=settings.max_dataset_bytes, max_capture_bytes=settings.max_capture_bytes,
            max_artifact_bytes=settings.max_artifact_bytes, max_bundle_bytes=settings.max_bundle_bytes)
        self.webhook_post: WebhookPost = webhook_post or webhooks.http_post
        """Sends one webhook request (tests replace it)."""
        self._webhook_retry = webhooks.RetryPolicy(max_attempts=settings.webhook_max_attempts,
                                                   base_s=settings.webhook_retry_base_s,
                                                   cap_s=settings.webhook_retry_cap_s)
        self._webhook_rng = random.Random()
        self._webhooks = BackgroundLoop(self._leased(self.deliver_webhooks, "webhooks"),
                                        interval_s=settings.webhook_interval_s,
                                        name="webhooks") if reconcile_in_background else None
        self.incident_rules = incident_rules(settings)
        self._incidents = BackgroundLoop(self._leased(self.process_incidents, "incidents"),
                                         interval_s=settings.reconcile_interval_s,
                                         name="incidents", min_gap_s=settings.rollout_wake_interval_s) \
            if reconcile_in_background else None
        """Judges new telemetry windows for drift incidents when ingest stored some, and closes the
        incidents that cooled down every ``reconcile_interval_s``."""
        self.leases = leases.LeaseKeeper(self.session, holder=self.instance, names=LEASED_LOOPS,
                                         ttl_s=settings.lease_ttl_s, clock=clock) \
            if self.engine.dialect.name != "sqlite" else None
        """With several controllers on one database, each loop runs in the one process that holds its lease
        (services/leases.py). SQLite is one controller's database (one host, one writer): no leases there."""
        self._lease_loop = BackgroundLoop(self.keep_leases, interval_s=settings.lease_ttl_s / 3, name="leases") \
            if reconcile_in_background and self.leases is not None else None
        with self.session() as session:
            self.initial_admin_token = auth.ensure_admin_token(session, secret=settings.admin_token, now=clock())
        if self.initial_admin_token:  # the plaintext is handed to whoever started us, never logged
            log.warning("created the first admin API token (its holder is shown it once)")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.broker_url is None:
            self.broker = EmbeddedBroker(host=self.settings.embedded_broker_host,
                                         port=self.embedded_broker_port or 0,
                                         max_payload_size=self.settings.embedded_broker_max_payload).start()
            self.broker_url = self.broker.url
        self.sync_broker_identity()   # the controller's own role first: the bridge connects with it
        self.ingestor.start()
        self.transport = self._transport_factory(self.broker_url, self.ingestor.submit)
        self.transport.start()
        if self._lease_loop is None:   # one process (SQLite, or no background loops): jobs left "running" are dead
            self._recover({"retraining-worker", "compression-worker"})
        else:   # the first pass now, so a lone controller runs its loops from the start
            self.keep_leases()
            self._lease_loop.start()
        if self._loop is not None:
            self._loop.start()
        if self._jobs is not None:
            self._jobs.start()
        if self._retraining is not None:
            self.retraining.stopping.clear()
            self._retraining.start()
        if self._webhooks is not None:
            self._webhooks.start()
        if self._incidents is not None:
            self._incidents.start()
        log.info("controller started: API %s, broker %s", self.settings.resolved_public_url,
                 parse_broker_url(self.broker_url).public_url)

    def stop(self) -> None:
        if self._incidents is not None:
            self._incidents.stop()
        if self._webhooks is not None:
            self._webhooks.stop(timeout_s=self.settings.webhook_timeout_s + 5)
        if self._jobs is not None:
            self._jobs.stop()
        if self._retraining is not None:
            self.retraining.stopping.set()   # a running entry point is killed, its job fails "interrupted"
            self._retraining.stop()
        if self._loop is not None:
            self._loop.stop()
        if self._lease_loop is not None:
            self._lease_loop.stop()
        if self.leases is not None:
            self.leases.release_all()   # another controller takes the loops over at once
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

    def _leased(self, step: Callable[[], object], lease: str) -> Callable[[], object]:
        """``step`` as a background loop runs it: only while this process holds ``lease`` (if it takes leases)."""
        def run() -> object:
            return step() if self.leases is None or self.leases.holds(lease) else None
        return run

    def keep_leases(self) -> leases.KeeperPass | None:
        """Take or renew this process's leases; for a loop taken over from a controller that died, first
        do what its holder left undone, then run the loop at once."""
        if self.leases is None:
            return None
        report = self.leases.run_pass()
        if report.taken:
            self._recover(report.taken)
            for loop, name in ((self._loop, "reconciler"), (self._jobs, "compression-worker"),
                               (self._retraining, "retraining-worker"), (self._webhooks, "webhooks"),
                               (self._incidents, "incidents")):
                if loop is not None and name in report.taken:
                    loop.wake()
        return report

    def _recover(self, taken: set[str] | frozenset[str]) -> None:
        """Jobs a worker's previous holder left "running" can no longer finish: fail them "interrupted"
        (retraining first: it fails the compression jobs it was running)."""
        if "retraining-worker" in taken:
            with self.session() as session:
                retraining.recover_interrupted(session, now=self.clock())
        if "compression-worker" in taken:
            with self.session() as session:
                compression_jobs.recover_interrupted(session, now=self.clock())

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

    def bundle_signer(self, session: Session) -> trust.BundleSigner:
        """What a server-side build (the retraining job) signs with: the delegated key and its document,
        else the opt-in release key (:func:`trust.bundle_signer`)."""
        return trust.bundle_signer(session, delegated_key=self.delegated_signing_key,
                                   release_key=self.release_signing_key, now=self.clock())

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

    def check_device_id(self, device_id: str | None) -> None:
        """Refuse (:class:`InvalidRequestError`) a device id the broker would not carry in a topic
        (``broker_kind``: NATS and RabbitMQ take no ``.``)."""
        if device_id is not None:
            broker_kinds.check_device_id(self.settings.broker_kind, device_id,
                                         embedded=self.settings.broker_url is None)

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
        """Tell the compression and retraining workers a job is waiting (no-op without the background workers)."""
        for loop in (self._jobs, self._retraining):
            if loop is not None:
                loop.wake()

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

    def run_retraining_jobs(self) -> list[int]:
        """Run every runnable retraining job to a final state, in order; return their ids. The background
        worker calls this; tests (``reconcile_in_background=False``) call it directly."""
        done: list[int] = []
        with self._retraining_lock:
            while (job_id := retraining.run_next(self.retraining)) is not None:
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
                               metrics=self.metrics, history=fleet_history.HistoryPolicy.of(self.settings))
        with self.session() as session:
            self._rollout_devices = frozenset(rollouts.devices_in_running_stages(session))
        self.publish_grants()
        self.sync_broker_identity()
        return report

    def sync_broker_identity(self) -> list[str]:
        """With a managed broker (``broker_admin``): put the controller's own role in place (at start,
        then on every reconcile pass until it is) and disable the clients of decommissioned devices the
        broker could not be told about before. Returns the ids of the devices disabled now."""
        identity = self.broker_identity
        if identity is None:
            return []
        if self._broker_problem is not None:
            address = parse_broker_url(self.broker_url or "")
            try:
                identity.ensure_controller(username=address.username or "", password=address.password,
                                           shared_group=self.settings.shared_subscription_group)
            except EdgeFleetError as exc:
                if str(exc) != self._broker_problem:   # said once, not on every pass
                    log.error("dynamic security: the controller's role is not in place (%s); retrying on every "
                              "reconcile pass", exc)
                self._broker_problem = str(exc)
                return []
            self._broker_problem = None
        with self.session() as session:
            return broker_identity.retry_pending(session, identity, now=self.clock())

    def publish_grants(self) -> int:
        """Answer the devices' upload requests that no grant answered yet (after ingest stored one,
        and on every reconcile pass, so a grant the broker did not take goes out later)."""
        with self.session() as session:
            return captures.publish_grants(session, publish=self.publish, prefix=self.settings.topic_prefix,
                                           issuer=self.grants, now=self.clock())

    def publish_roots(self, device_ids: list[str] | None = None) -> int:
        """Send every enrolled device (or those of ``device_ids``) that is behind the trust root in
        force the roots it lacks: after a new root is pushed, and to a device after its hello."""
        with self.session() as session:
            messages = trust.root_messages(session, prefix=self.settings.topic_prefix, device_ids=device_ids)
        return sum(1 for topic, payload in messages if self.publish(topic, payload))

    @property
    def next_controller_key_path(self) -> Path:
        path = self.settings.resolved_controller_key_path
        return path.with_name(path.stem + "-next" + path.suffix)

    def next_controller_key(self) -> Ed25519PrivateKey:
        """The key the controller will sign with once a trust root lists it (made on first ask)."""
        return trust.load_or_create_controller_key(self.next_controller_key_path)

    def adopt_root(self, root: SignedRoot) -> None:
        """After a new trust root: if it no longer lists the key the controller signs with but lists
        the prepared next key (``edgefleet keys rotate controller``), sign with that one from now on;
        the old key file is kept beside it as ``*.retired``."""
        listed = set(root.signed.controller.keys)
        if raw_public_key(self.controller_key.public_key()) in listed or not self.next_controller_key_path.exists():
            return
        nxt = trust.load_or_create_controller_key(self.next_controller_key_path)
        if raw_public_key(nxt.public_key()) not in listed:
            log.error("trust root version %d trusts neither the controller's key nor its next key: orders it "
                      "signs will be refused", root.signed.version)
            return
        current = self.settings.resolved_controller_key_path
        retired = f"{current.name}.retired-{key_id(self.controller_key.public_key())[:16]}"
        os.replace(current, current.with_name(retired))
        os.replace(self.next_controller_key_path, current)
        self.previous_controller_key = self.controller_key
        self.controller_key = self.issuer.key = self.grants.key = nxt
        log.warning("trust root version %d: orders are signed with controller key %s from now on",
                    root.signed.version, key_id(nxt.public_key())[:16])

    def publish_delegations(self, device_ids: list[str] | None = None) -> int:
        """Send the current delegations document to every enrolled device (or to ``device_ids``): after
        a new version is pushed, and to a device after its hello. Returns how many the broker took."""
        with self.session() as session:
            messages = trust.delegation_messages(session, prefix=self.settings.topic_prefix, device_ids=device_ids)
        return sum(1 for topic, payload in messages if self.publish(topic, payload))

    def process_incidents(self, now: float | None = None) -> incidents.PassReport:
        """Judge the telemetry windows stored since the last pass for drift incidents and close those
        that cooled down (docs/incidents.md). The background loop calls this; tests
        (``reconcile_in_background=False``) call it directly."""
        report = incidents.process(self.session, rules=self.incident_rules, now=self.clock() if now is None else now)
        if report.opened:
            self.wake_jobs()   # an incident may have queued a retraining job
        return report

    def _acked(self, acked: dict[str, list[str]]) -> None:
        """Ingest committed a batch: tell each device which of its messages are stored (signed by the
        controller key), so its outbox lets go of exactly those. Lost acks cost a re-send, nothing more."""
        for topic, payload in ack_messages(acked, key=self.controller_key, prefix=self.settings.topic_prefix,
                                           issued_at=int(self.clock())):
            self.publish(topic, payload)

    def _stored(self, items: list[Decoded]) -> None:
        """Ingest stored a batch: a telemetry window or status of a device in a running rollout stage
        may change a gate's verdict, so the reconciler runs now (its passes stay ``rollout_wake_interval_s``
        apart). An upload request is answered with a grant at once."""
        if any(isinstance(i.message, UploadRequest) for i in items):
            try:
                self.publish_grants()
            except Exception:  # the next reconcile pass retries
                log.exception("publishing upload grants failed")
        hellos = [i.device_id for i in items if i.kind == "hello"]
        if hellos:  # a device that (re)connects gets the trust roots and delegations it may have missed
            try:
                self.publish_roots(hellos)
                self.publish_delegations(hellos)
            except Exception:  # the next hello (or push) sends it again
                log.exception("publishing the delegations document failed")
        if self._incidents is not None and any(i.kind == "telemetry" for i in items):
            self._incidents.wake()
        if self._loop is None or not self.settings.rollout_wake_interval_s or not self._rollout_devices:
            return
        if any(i.kind in ("telemetry", "status") and i.device_id in self._rollout_devices for i in items):
            self._loop.wake()


LEASED_LOOPS = ("reconciler", "compression-worker", "retraining-worker", "webhooks", "incidents")
"""The background loops that run in one controller at a time, each under the lease of its name."""


def incident_rules(settings: ControllerSettings) -> incidents.Rules:
    """The drift-incident rules the settings say (``incident_*``): device cohorts need one device at alarm."""
    def rule(min_devices: int) -> IncidentRule:
        return IncidentRule(windows=settings.incident_windows, min_samples=settings.incident_min_samples,
                            cooldown_s=settings.incident_cooldown_s, min_devices=min_devices)

    tags = None if settings.incident_tags is None else frozenset(settings.incident_tags)
    return incidents.Rules(device=rule(1), tag=rule(settings.incident_min_devices), tags=tags)


def managed_broker(settings: ControllerSettings) -> DynsecIdentity | None:
    """The dynamic-security admin the settings ask for (``broker_admin = "dynsec"``), or ``None``."""
    if settings.broker_admin is None:
        return None
    if settings.broker_url is None:
        raise ConfigError("broker_admin = \"dynsec\" needs Mosquitto: the embedded broker has no dynamic-security "
                          "plugin", where="broker_admin",
                          hint="set broker_url to a Mosquitto that loads the plugin, or leave broker_admin unset")
    if not parse_broker_url(settings.broker_url).username:
        raise ConfigError("with broker_admin = \"dynsec\" the controller connects as a broker user of its own, and "
                          "broker_url names none", where="broker_url",
                          hint="mqtt://edgefleet-controller:<password>@host:port (the controller creates that "
                               "client on the broker if it does not exist)")
    where = "broker_admin_url" if settings.broker_admin_url else "broker_url"
    client = DynsecClient(url=settings.broker_admin_url or settings.broker_url,
                          timeout_s=settings.broker_admin_timeout_s, where=where)
    return DynsecIdentity(client, prefix=settings.topic_prefix)


def bundle_store(settings: ControllerSettings) -> BlobStore:
    """The bundle store ``settings.bundle_store`` names (boto3, the ``[s3]`` extra, is imported only for ``s3``)."""
    if settings.bundle_store != "s3":
        return BlobStore(settings.bundle_dir)
    from edgefleet.cloud.store.s3 import S3BlobStore
    assert settings.s3_bucket is not None   # the settings refuse s3 without a bucket
    secret = settings.s3_secret_access_key
    return S3BlobStore.connect(settings.bundle_dir, bucket=settings.s3_bucket, prefix=settings.s3_prefix,
                               endpoint_url=settings.s3_endpoint_url,
                               presign_endpoint_url=settings.s3_presign_endpoint_url, region=settings.s3_region,
                               addressing_style=settings.s3_addressing_style,
                               access_key_id=settings.s3_access_key_id,
                               secret_access_key=secret.get_secret_value() if secret else None,
                               content_type="application/x-tar")
