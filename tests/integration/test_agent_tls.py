"""mqtts:// with a CA file: the agent connects over TLS and takes orders."""

from __future__ import annotations

import pytest

from agentkit.harness import Harness
from agentkit.observer import Observer
from agentkit.tls import make_ca_and_server
from conftest import start_private_mosquitto

pytestmark = pytest.mark.integration


def test_agent_over_mqtts(tmp_path, mqtt_broker, topic_prefix, release_key, controller_key, file_server, tiny_onnx):
    ca, cert, key = make_ca_and_server(tmp_path / "tls")
    broker = start_private_mosquitto(tmp_path, tls=(ca, cert, key))
    h = None
    try:
        plain = start_private_mosquitto.__globals__["Broker"]("127.0.0.1", broker.port)
        h = Harness(tmp_path, plain, topic_prefix, release_key, controller_key, file_server, tiny_onnx)
        h.observer.close()
        h.observer = Observer("127.0.0.1", broker.port, topic_prefix, h.device_id, tls_ca=ca)
        agent = h.start(broker_url=f"mqtts://127.0.0.1:{broker.port}", ca_file=str(ca))
        assert h.install(h.bundle())["outcome"] == "committed"
        assert agent.get("/v1/stats")[1]["connected"] is True
    finally:
        if h is not None:
            h.close()
        broker.stop()
