"""One device under test: a real agent process, its keys, a bundle server and an observer."""

from __future__ import annotations

import uuid
from pathlib import Path

from agentkit.bundles import make_bundle, order_message
from agentkit.observer import Observer
from agentkit.process import AgentProcess

FAST = {
    "telemetry_interval_s": 0.5,
    "heartbeat_interval_s": 1.0,
    "reconnect_min_s": 0.1,
    "reconnect_max_s": 1.0,
    "health_check_inferences": 0,
    "health_check_timeout_s": 10.0,
    "update_timeout_s": 60.0,
    "download_attempts": 4,
    "download_timeout_s": 10.0,
    "retry_base_s": 0.05,
    "retry_cap_s": 0.2,
    "inference_listen": "127.0.0.1:0",
}


class Harness:
    def __init__(self, tmp_path: Path, broker, prefix: str, release_key, controller_key, file_server,
                 tiny_onnx: bytes, *, tls_ca=None, persistent_observer: bool = False) -> None:
        self.tmp = tmp_path
        self.broker = broker
        self.prefix = prefix
        self.release_key = release_key
        self.controller_key = controller_key
        self.files = file_server
        self.model = tiny_onnx
        self.device_id = f"dev-{uuid.uuid4().hex[:10]}"
        self.sequence = 0
        self.observer = Observer(broker.host, broker.port, prefix, self.device_id, tls_ca=tls_ca,
                                 persistent=persistent_observer)
        self.agent = AgentProcess(tmp_path, {
            "device_id": self.device_id, "state_dir": str(tmp_path / "state"), "broker_url": broker.url,
            "topic_prefix": prefix, "release_keys": [str(release_key.public_path)],
            "controller_keys": [str(controller_key.public_path)],
            # the test's file server is the bundle store: an allow-listed origin, plain http
            "bundle_origins": [file_server.url("")], "allow_http_bundles": True, **FAST})

    def start(self, *, online: bool = True, **overrides) -> AgentProcess:
        """Start the agent; with ``online``, wait until THIS run announced itself online (so it
        has subscribed to its cmd topic before a test publishes an order)."""
        seen = len(self.observer.messages)
        self.agent.start(**overrides)
        self.agent.wait_ready()
        if online:
            self.observer.wait_for(lambda o: any(k == "state" and m and m.get("status") == "online"
                                                 for k, m, _, _ in o.messages[seen:]), what="agent online")
        return self.agent

    def wait_online(self, timeout: float = 30.0) -> dict:
        return self.observer.wait_for(
            lambda o: next((m for m in reversed(o.of("state")) if m["status"] == "online"), None),
            timeout, "state online")

    def bundle(self, **kwargs) -> bytes:
        return make_bundle(kwargs.pop("model", self.model), self.release_key.private, **kwargs)

    def serve(self, data: bytes, path: str | None = None) -> str:
        return self.files.add(path or f"/bundles/{uuid.uuid4().hex}.efb", data)

    def order(self, data: bytes, url: str | None = None, *, sequence: int | None = None, key=None,
              **kwargs) -> tuple[str, bytes]:
        if sequence is None:
            self.sequence += 1
            sequence = self.sequence
        dep = kwargs.pop("deployment_id", f"dep-{uuid.uuid4().hex[:8]}")
        payload = order_message(self.device_id, data, url or self.serve(data), key or self.controller_key.private,
                                sequence=sequence, deployment_id=dep, **kwargs)
        return dep, payload

    def deploy(self, data: bytes, **kwargs) -> str:
        dep, payload = self.order(data, **kwargs)
        self.observer.publish("cmd", payload)
        return dep

    def install(self, data: bytes, timeout: float = 120.0, **kwargs) -> dict:
        dep = self.deploy(data, **kwargs)
        return self.observer.final_status(dep, timeout)

    def close(self) -> None:
        try:
            self.agent.terminate()
        finally:
            self.observer.close()
