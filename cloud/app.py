"""The FastAPI application: ``create_app(settings)``.

No module-level engine or settings: everything hangs off one :class:`Controller` kept in
``app.state.controller``. The lifespan starts and stops the embedded broker (when no broker URL
is configured), the MQTT bridge, the ingest worker, the reconciler loop and the compression
worker. :class:`edgefleet.cloud.server.BackgroundServer` runs it in a thread (demo, tests).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from edgefleet.cloud import api, ui
from edgefleet.cloud.api import guards
from edgefleet.cloud.controller import Clock, Controller, TransportFactory, WebhookPost
from edgefleet.cloud.settings import ControllerSettings

log = logging.getLogger(__name__)


def create_app(settings: ControllerSettings | None = None, *, clock: Clock = time.time,
               transport_factory: TransportFactory | None = None, reconcile_in_background: bool = True,
               webhook_post: WebhookPost | None = None) -> FastAPI:
    """Build the controller app. ``transport_factory`` replaces the MQTT bridge and ``webhook_post``
    the webhook sender's HTTP client (tests); ``reconcile_in_background=False`` leaves reconciling to
    explicit ``controller.reconcile(now)`` calls, compression jobs to ``controller.run_pending_jobs()``
    and webhooks to ``controller.deliver_webhooks()``."""
    settings = settings or ControllerSettings()
    controller = Controller(settings, clock=clock, transport_factory=transport_factory,
                            reconcile_in_background=reconcile_in_background, webhook_post=webhook_post)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        controller.start()
        try:
            yield
        finally:
            controller.stop()

    app = FastAPI(title="EdgeFleet controller", version="1", lifespan=lifespan,
                  max_body_size=settings.max_request_bytes, docs_url=None, redoc_url=None,  # /docs: edgefleet.cloud.ui
                  description="Registry, devices, deployments and telemetry of an EdgeFleet fleet. "
                              "Authenticate with `Authorization: Bearer <API token>`.")
    app.state.controller = controller
    api.install(app, upload_body_limit=max(settings.max_bundle_bytes, settings.max_artifact_bytes,
                                           settings.max_dataset_bytes, settings.max_capture_bytes))
    ui.install(app)
    guards.install(app, controller)
    return app
