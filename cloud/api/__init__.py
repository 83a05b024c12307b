"""The REST API under ``/api/v1``: one routes module per resource, request and response
schemas, and the one mapping of domain errors to HTTP. Routes call :mod:`edgefleet.cloud.services`;
they never query the database themselves."""

from __future__ import annotations

from fastapi import FastAPI

from edgefleet.cloud.api import errors
from edgefleet.cloud.api.routes import (
    audit,
    bundles,
    captures,
    compression,
    deployments,
    devices,
    enrollment,
    experiments,
    incidents,
    keys,
    models,
    retraining,
    rollouts,
    system,
    telemetry,
    tokens,
    uploads,
    users,
    webhooks,
)

RESOURCES = (system, tokens, users, keys, audit, enrollment, devices, models, bundles, compression, retraining,
             deployments, rollouts, experiments, incidents, telemetry, webhooks, captures)


def install(app: FastAPI, *, upload_body_limit: int) -> None:
    """Mount every route and the error handlers on ``app``; the streaming upload routes get
    ``upload_body_limit`` instead of the app's request body limit."""
    errors.install(app)
    app.include_router(system.router, responses=errors.ERROR_RESPONSES)
    for module in RESOURCES:
        app.include_router(module.api, responses=errors.ERROR_RESPONSES)
    for module in (models, bundles, uploads):
        app.include_router(module.uploads, max_body_size=upload_body_limit, responses=errors.ERROR_RESPONSES)
