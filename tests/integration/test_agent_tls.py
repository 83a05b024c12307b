"""mqtts:// with a CA file: the agent connects over TLS and takes orders."""

from __future__ import annotations

import pytest

from agentkit.harness import Harness

pytestmark = pytest.mark.integration


def test_agent_over_mqtts(tmp_path, private_mosquitto_tls, topic_prefix, release_key, controller_key, file_server,
                          tiny_onnx):
    broker, ca = private_mosquitto_tls
    h = Harness(tmp_path, broker.broker, topic_prefix, release_key, controller_key, file_server, tiny_onnx, tls_ca=ca)
    try:
        agent = h.start(broker_url=f"mqtts://127.0.0.1:{broker.port}", ca_file=str(ca))
        assert h.install(h.bundle())["outcome"] == "committed"
        assert agent.get("/v1/stats")[1]["connected"] is True
    finally:
        h.close()
