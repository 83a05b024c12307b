"""Helpers for agent integration tests: models, bundles, orders, an HTTP file server with
fault injection, an MQTT observer and a handle on a real ``edgefleet-agent`` process."""
