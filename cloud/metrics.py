"""Prometheus metrics of one controller (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.mqtt_messages = Counter("edgefleet_mqtt_messages_total",
                                     "Device messages decoded (before de-duplication), by kind", ["kind"], registry=r)
        self.mqtt_rejected = Counter("edgefleet_mqtt_rejected_total",
                                     "Device messages rejected (malformed, oversized, bad topic, unknown device)",
                                     ["reason"], registry=r)
        self.mqtt_duplicates = Counter("edgefleet_mqtt_duplicates_total", "Redelivered messages ignored by msg_id",
                                       ["kind"], registry=r)
        self.ingest_batch_seconds = Histogram("edgefleet_ingest_batch_seconds", "Time to store one ingest batch",
                                              registry=r)
        self.ingest_queue_depth = Gauge("edgefleet_ingest_queue_depth", "Messages received but not yet stored",
                                        registry=r)
        self.orders_published = Counter("edgefleet_orders_published_total", "Signed orders handed to the broker",
                                        registry=r)
        self.devices_online = Gauge("edgefleet_devices_online", "Devices currently online", registry=r)
        self.deployments_active = Gauge("edgefleet_deployments_active", "Deployments not yet finished", registry=r)
        self.http_errors = Counter("edgefleet_http_errors_total", "API requests answered with an error, by code",
                                   ["code"], registry=r)
