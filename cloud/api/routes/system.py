"""Health, Prometheus metrics and controller info."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edgefleet.cloud.api.schemas import InfoOut
from edgefleet.cloud.deps import ControllerDep, SessionDep, ViewerDep
from edgefleet.cloud.store.engine import ping

router = APIRouter()
api = APIRouter(prefix="/api/v1")


def _version() -> str:
    try:
        return version("edgefleet")
    except PackageNotFoundError:
        return "0+unknown"


@router.get("/healthz", tags=["system"])
def healthz(controller: ControllerDep, session: SessionDep) -> dict[str, str]:
    """Liveness and readiness: database reachable, MQTT bridge connected."""
    ping(session)
    transport = controller.transport
    mqtt = "connected" if transport is not None and transport.connected else "disconnected"
    return {"status": "ok", "database": "ok", "mqtt": mqtt}


@router.get("/metrics", tags=["system"], response_class=Response)
def metrics(controller: ControllerDep) -> Response:
    """Prometheus metrics (unauthenticated, like most exporters; restrict at the network level)."""
    return Response(generate_latest(controller.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@api.get("/info", tags=["system"])
def info(controller: ControllerDep, session: SessionDep, _: ViewerDep) -> InfoOut:
    return InfoOut(version=_version(), broker_url=controller.device_broker_url,
                   topic_prefix=controller.settings.topic_prefix, public_url=controller.settings.resolved_public_url,
                   controller_key_id=controller.controller_key_id,
                   controller_public_key_pem=controller.controller_public_pem,
                   release_key_ids=sorted(controller.trusted_release_keys(session).keys))
