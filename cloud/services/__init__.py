"""The controller's domain, one module per subject: devices and enrollment, deployments and their
signed orders, the model and bundle registry, datasets, compression jobs, server-side bundle builds,
telemetry aggregates, drift incidents, trusted keys, API tokens, the audit log, and the reconciler.
Services take a session and keyword-only arguments; they use :mod:`edgefleet.cloud.store` and never
the web, MQTT or CLI rooms."""
