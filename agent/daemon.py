"""``edgefleet-agent``: the device daemon.

Wires the parts together: config -> trusted keys, A/B slots, predictor, updater, durable
outbox, local inference endpoint, sample capture and its uploader, and the MQTT link whose loop
drives the periodic work (outbox pump, heartbeats, telemetry windows, inbound orders and grants).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import platform
import queue
import shutil
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from edgefleet.agent.capture import Capture
from edgefleet.agent.config import AgentConfig, load_config
from edgefleet.agent.feedback import FeedbackJournal
from edgefleet.agent.identity import DeviceIdentity
from edgefleet.agent.inference import Predictor
from edgefleet.agent.mqtt import MqttLink
from edgefleet.agent.outbox import OUTBOX_FILE, Outbox, OutboxPump
from edgefleet.agent.server import InferenceServer, bundle_info
from edgefleet.agent.slots import Slots
from edgefleet.agent.statemachine import TERMINAL
from edgefleet.agent.stats import WindowSummary
from edgefleet.agent.trust_root import ROOT_FILE, RootStore
from edgefleet.agent.updater import UpdatePolicy, Updater
from edgefleet.agent.upload import Uploader
from edgefleet.agent.url_policy import UrlPolicy
from edgefleet.protocol import topics
from edgefleet.protocol.acks import verify_ack
from edgefleet.protocol.errors import EdgeFleetError, MessageError
from edgefleet.protocol.files import atomic_write
from edgefleet.protocol.keys import TrustedKeys
from edgefleet.protocol.manifest import DeviceFacts
from edgefleet.protocol.messages import (
    MAX_PAYLOAD,
    AckMessage,
    DelegationsMessage,
    Event,
    Hello,
    InstalledBundle,
    Message,
    OrderMessage,
    RootsMessage,
    SignedRoot,
    State,
    TelemetryWindow,
    UploadGrantMessage,
    decode,
    encode,
)
from edgefleet.protocol.runtimes import available_runtimes
from edgefleet.protocol.vocabulary import DeviceStatus, DriftLevel, EventLevel, Reason, UpdateState

log = logging.getLogger(__name__)

MALFORMED_EVENT_EVERY_S = 10.0


def agent_version() -> str:
    try:
        return importlib.metadata.version("edgefleet")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.device_id = config.device_id
        self.started = time.monotonic()
        state_dir = config.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = config.topic_prefix
        self.runtimes: list[str] = list(available_runtimes())
        self.facts = DeviceFacts(arch=platform.machine(), runtimes=self.runtimes, agent_version=agent_version(),
                                 hardware_class=config.hardware_class)
        release = TrustedKeys.from_files(config.release_keys, role="release")
        controller = TrustedKeys.from_files(config.controller_keys, role="controller")
        self.roots = RootStore(state_dir / ROOT_FILE, release=release, controller=controller)
        """The trust root, when the device holds one: it replaces the configured keys in place."""
        self.outbox = Outbox(state_dir / OUTBOX_FILE, max_rows=config.outbox_max_rows)
        self.pump = OutboxPump(self.outbox, ack_timeout_s=config.ack_timeout_s, retry_cap_s=config.ack_retry_cap_s,
                               end_to_end=False if config.delivery == "broker" else None)
        """Rows leave on the controller's signed acknowledgement (``ack`` topic) once it is seen to send them."""
        self.controller_keys = controller
        self.acks_refused = 0
        self.predictor = Predictor()
        self.feedback: FeedbackJournal | None = None
        if config.feedback_window_s > 0:
            self.feedback = FeedbackJournal(self.predictor, window_s=config.feedback_window_s,
                                            max_samples=config.feedback_max_samples)
            self.predictor.add_listener(self.feedback.remember)
        self.slots = Slots(state_dir / "slots")
        policy = UpdatePolicy(update_timeout_s=config.update_timeout_s, download_attempts=config.download_attempts,
                              download_timeout_s=config.download_timeout_s, retry_base_s=config.retry_base_s,
                              retry_cap_s=config.retry_cap_s, health_check_inferences=config.health_check_inferences,
                              health_check_timeout_s=config.health_check_timeout_s,
                              max_bundle_bytes=config.max_bundle_bytes,
                              pause_in=frozenset(config.fault_pause_in),
                              urls=UrlPolicy.from_config(controller_url=config.controller_url,
                                                         bundle_origins=config.bundle_origins,
                                                         allow_http=config.allow_http_bundles))
        self.updater = Updater(device_id=self.device_id, state_dir=state_dir, slots=self.slots,
                               predictor=self.predictor, release_keys=release, controller_keys=controller,
                               facts=self.facts, report=self._enqueue, policy=policy,
                               max_binned_rows=config.drift_max_rows)
        self.capture = Capture(state_dir / "capture")
        self.predictor.add_listener(self.capture.on_served)
        if self.feedback is not None:
            self.feedback.listeners.append(self.capture.on_labelled)
        self.uploader = Uploader(self.capture, device_id=self.device_id, controller_url=config.controller_url,
                                 controller_keys=controller, send=self._enqueue, chunk_bytes=config.upload_chunk_bytes,
                                 retry_s=config.upload_retry_s, timeout_s=config.upload_timeout_s)
        self.malformed = 0
        self._last_malformed_event = -MALFORMED_EVENT_EVERY_S
        self._inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self.stop_event = threading.Event()
        self.identity = DeviceIdentity.load_or_create(config)
        self._key_registered = threading.Event()
        """Set when the controller learnt the device key at this start (it dropped what came before)."""
        self.link = MqttLink(config, will=self._sealed("state", self._state(DeviceStatus.OFFLINE)),
                             on_connected=self._on_connected, on_message=self._on_message,
                             on_published=self.pump.acked)
        self.server: InferenceServer | None = None
        self._next_heartbeat = 0.0
        self._next_telemetry = time.monotonic() + config.telemetry_interval_s
        self._published_state: tuple[str, str | None, InstalledBundle | None] | None = None

    # ------------------------------------------------------------------ messages

    def _topic(self, kind: str) -> str:
        return topics.device_topic(self.device_id, kind, self.prefix)

    def _sealed(self, kind: str, msg: Message) -> tuple[str, bytes]:
        """The topic of ``msg`` and its payload, signed with the device key."""
        topic = self._topic(kind)
        return topic, self.identity.seal(topic, encode(msg))

    def _installed(self) -> InstalledBundle | None:
        model = self.predictor.model
        return model.installed if model is not None else None

    def _state(self, status: DeviceStatus) -> State:
        r = self.updater.record if hasattr(self, "updater") else None
        return State(device_id=self.device_id, status=status, update_state=r.state if r else UpdateState.IDLE,
                     deployment_id=r.deployment_id if r else None, sequence=r.sequence if r and r.deployment_id
                     else None, outcome=r.outcome if r and r.state in TERMINAL else None, installed=self._installed(),
                     uptime_s=round(time.monotonic() - self.started, 3),
                     heartbeat_interval_s=self.config.heartbeat_interval_s)

    def _enqueue(self, msg: Message) -> None:
        kind = {"status": "status", "telemetry": "telemetry", "event": "events", "upload_request": "events"}[msg.type]
        self.outbox.enqueue(*self._sealed(kind, msg), msg_id=msg.msg_id, qos=1)

    def _hello(self) -> Hello:
        try:
            free = shutil.disk_usage(self.config.state_dir).free
        except OSError:
            free = 0
        return Hello(device_id=self.device_id, agent_version=self.facts.agent_version, arch=self.facts.arch,
                     os=f"{platform.system()} {platform.release()}", runtimes=self.runtimes,
                     hardware_class=self.config.hardware_class, installed=self._installed(),
                     free_disk_bytes=free, tags=list(self.config.tags), root_version=self.roots.version)

    # ------------------------------------------------------------------ MQTT callbacks (link thread)

    def _on_connected(self) -> None:
        self.link.subscribe(self._topic("cmd"), qos=1)
        self.link.subscribe(self._topic("ack"), qos=1)
        self.link.publish(*self._sealed("hello", self._hello()), qos=1)
        self._publish_state()

    def _on_message(self, topic: str, payload: bytes) -> None:
        self._inbox.put((topic, payload))

    def _publish_state(self) -> None:
        state = self._state(DeviceStatus.ONLINE)
        if self.link.publish(*self._sealed("state", state), qos=1, retain=True) is not None:
            self._published_state = (state.update_state, state.deployment_id, state.installed)
            self._next_heartbeat = time.monotonic() + self.config.heartbeat_interval_s

    def _handle_ack(self, topic: str, payload: bytes) -> None:
        """A delivery acknowledgement: delete what the controller stored, if the controller key signed it."""
        try:
            if len(payload) > MAX_PAYLOAD["ack"]:
                raise MessageError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD['ack']}-byte limit",
                                   code=Reason.PAYLOAD_TOO_LARGE, where="ack")
            msg = decode("ack", payload)
            assert isinstance(msg, AckMessage)
            ids = verify_ack(msg, trusted=self.controller_keys, device_id=self.device_id)
        except EdgeFleetError as exc:   # forged, altered, for another device, malformed: deletes nothing
            self.acks_refused += 1
            log.warning("ignored delivery acknowledgement on %s (%d bytes): %s [%s]", topic, len(payload), exc,
                        exc.code)
            return
        self.pump.delivered(ids)

    def _handle_inbound(self, topic: str, payload: bytes) -> None:
        if topic == self._topic("ack"):
            self._handle_ack(topic, payload)
            return
        try:
            if topic != self._topic("cmd"):
                raise MessageError(f"unexpected topic {topic!r}", where="topic")
            limit = min(self.config.max_payload_bytes, MAX_PAYLOAD["cmd"])
            if len(payload) > limit:
                raise MessageError(f"payload of {len(payload)} bytes exceeds the {limit}-byte limit",
                                   code=Reason.PAYLOAD_TOO_LARGE, where="cmd")
            msg = decode("cmd", payload)
            if msg.device_id != self.device_id:
                raise MessageError(f"message for device {msg.device_id!r}", where="cmd.device_id")
        except MessageError as exc:
            self.malformed += 1
            log.warning("ignored malformed message on %s (%d bytes): %s [%s]", topic, len(payload), exc, exc.code)
            now = time.monotonic()
            if now - self._last_malformed_event >= MALFORMED_EVENT_EVERY_S:
                self._last_malformed_event = now
                self._enqueue(Event(device_id=self.device_id, level=EventLevel.WARNING, kind=Reason.MALFORMED_MESSAGE,
                                    text=str(exc)[:2000],
                                    data={"code": exc.code, "topic": topic, "bytes": len(payload),
                                          "count": self.malformed}))
            return
        if isinstance(msg, UploadGrantMessage):
            self.uploader.on_grant(msg)
            return
        if isinstance(msg, DelegationsMessage):
            self.updater.delegations.offer(msg.delegations, source="cmd.delegations")
            return
        if isinstance(msg, RootsMessage):
            self._follow_roots(msg.roots, source="cmd.roots")
            return
        assert isinstance(msg, OrderMessage)
        if msg.roots:   # keys may have rotated while this device was away: follow them before the order
            self._follow_roots(msg.roots, source="cmd.order.roots")
        self.updater.submit(msg.order)

    def _follow_roots(self, roots: list[SignedRoot], *, source: str) -> None:
        before = self.roots.version
        self.roots.offer(roots, source=source)
        if self.roots.version != before:   # tell the controller which root this device holds now
            self.link.publish(*self._sealed("hello", self._hello()), qos=1)

    # ------------------------------------------------------------------ periodic work

    def tick(self) -> None:
        while True:
            try:
                topic, payload = self._inbox.get_nowait()
            except queue.Empty:
                break
            try:
                self._handle_inbound(topic, payload)
            except Exception:  # never let one message kill the loop
                log.exception("error handling a message on %s", topic)
        now = time.monotonic()
        if now >= self._next_telemetry:
            self._next_telemetry = now + self.config.telemetry_interval_s
            self.flush_telemetry()
        if self.link.connected:
            if self._key_registered.is_set():   # the controller heard nothing before: say hello again
                self._key_registered.clear()
                self._on_connected()
            r = self.updater.record
            if now >= self._next_heartbeat or self._published_state != (r.state.value, r.deployment_id,
                                                                        self._installed()):
                self._publish_state()
        self._capture_tick()
        self.pump.pump(self.link.publish, self.link.connected)
        self.predictor.fold()

    def _capture_tick(self) -> None:
        """Sample capture: follow the active bundle's policy, store queued samples, seal and upload batches."""
        try:
            model = self.predictor.model
            self.capture.set_model(model.installed.digest if model else None, model.manifest.capture if model else None)
            self.capture.tick()
            self.uploader.tick(online=self.link.connected)
        except Exception:  # capture must never stop the agent loop
            log.exception("sample capture failed device=%s", self.device_id)

    def flush_telemetry(self) -> None:
        for installed, summary in self.predictor.flush():
            self._enqueue_window(installed, summary)
            self.capture.observe_window(installed.digest, summary.drift.level if summary.drift else None)
            if summary.drift is not None and summary.drift.level == DriftLevel.ALARM:
                log.warning("drift alarm: psi=%.3f js=%.3f over %d samples device=%s", summary.drift.psi,
                            summary.drift.js, summary.drift.samples, self.device_id)

    def _enqueue_window(self, installed: InstalledBundle, summary: WindowSummary) -> None:
        """Store one closed telemetry window under the next window sequence number."""
        def build(seq: int) -> tuple[bytes, str]:
            msg = TelemetryWindow(device_id=self.device_id, window_seq=seq, window_start=summary.start,
                                  window_end=summary.end, bundle=installed, requests=summary.requests,
                                  batches=summary.batches, samples=summary.samples, errors=summary.errors,
                                  latency_ms=summary.latency_ms, features=summary.features,
                                  predictions=summary.predictions, drift=summary.drift,
                                  feedback=summary.feedback)
            return self.identity.seal(topic, encode(msg)), msg.msg_id
        topic = self._topic("telemetry")
        self.outbox.enqueue_sequenced(topic, "window_seq", build)

    def stats(self) -> dict[str, Any]:
        model = self.predictor.model
        window = None
        if model is not None:
            s = model.stats
            window = {"requests": s.requests, "batches": s.batches, "samples": s.samples, "errors": s.errors}
        r = self.updater.record
        delegations = self.updater.delegations.current
        return {"device_id": self.device_id, "uptime_s": round(time.monotonic() - self.started, 3),
                "connected": self.link.connected, "requests_total": self.predictor.total_requests,
                "errors_total": self.predictor.total_errors, "malformed_messages": self.malformed,
                "delegations_version": delegations.signed.version if delegations is not None else None,
                "delegations_refused": self.updater.delegations.refused,
                "root_version": self.roots.version, "roots_refused": self.roots.refused,
                "outbox_pending": len(self.outbox), "telemetry_windows": self.outbox.counter("window_seq"),
                "delivery": "end_to_end" if self.pump.end_to_end else "broker",
                "outbox_awaiting_ack": self.pump.awaiting, "outbox_resent": self.pump.resent,
                "acks_refused": self.acks_refused,
                "update_state": r.state.value, "deployment_id": r.deployment_id,
                "bundle": bundle_info(model.installed) if model is not None else None, "window": window,
                "capture": self.capture.stats() | {"uploaded": self.uploader.uploaded,
                                                   "refused_grants": self.uploader.refused_grants}}

    # ------------------------------------------------------------------ lifecycle

    def start_server(self) -> None:
        listen = self.config.listen
        if listen is None:
            return
        self.server = InferenceServer(listen, self.predictor, self.stats,
                                      max_request_bytes=self.config.max_request_bytes, feedback=self.feedback)
        self.server.start()
        host, port = self.server.address
        atomic_write(self.config.state_dir / "inference.addr", f"{host}:{port}".encode())
        log.info("inference endpoint on http://%s:%d/v1/predict", host, port)

    def run(self) -> None:
        log.info("edgefleet-agent %s starting device=%s runtimes=%s", self.facts.agent_version, self.device_id,
                 ",".join(self.runtimes) or "none")
        self.updater.boot()
        self.start_server()
        self.identity.register_in_background(self.config, self.stop_event, done=self._key_registered)
        try:
            self.link.run(self.stop_event, self.tick)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        log.info("stopping device=%s", self.device_id)
        self.updater.stop()
        self.flush_telemetry()
        self.pump.pump(self.link.publish, self.link.connected)
        self.link.close(final=self._sealed("state", self._state(DeviceStatus.OFFLINE)))
        if self.server is not None:
            self.server.stop()
        self.uploader.stop()
        self.capture.close()
        self.outbox.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["enroll"]:
        from edgefleet.agent.enroll import main as enroll_main

        return enroll_main(argv[1:])
    parser = argparse.ArgumentParser(prog="edgefleet-agent", description="EdgeFleet device agent "
                                     "('edgefleet-agent enroll --help' to enroll a new device)")
    parser.add_argument("--config", metavar="PATH", help="agent TOML config (EDGEFLEET_AGENT_* override keys)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=f"edgefleet-agent {agent_version()}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        agent = Agent(config)
    except EdgeFleetError as exc:
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return 2

    def _terminate(signum: int, frame: FrameType | None) -> None:
        agent.stop_event.set()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
