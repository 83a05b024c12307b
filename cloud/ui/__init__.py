"""The web UI, served by the controller itself: sign-in (:mod:`session`; OIDC: :mod:`oidc`), pages (:mod:`pages`),
the model registry (:mod:`models`), the audit log (:mod:`audit_log`), staged rollouts (:mod:`rollouts`),
actions: deploy (:mod:`deploy`), device actions and enrollment tokens (:mod:`device_actions`), users and
tokens (:mod:`people`),
drift incidents (:mod:`incidents`), the API docs (:mod:`apidocs`), error pages (:mod:`error_pages`),
rendering and filters, inline SVG charts, templates and static files. No CDN, no JavaScript library
(Swagger UI on /docs only)."""

from __future__ import annotations

from fastapi import FastAPI

from edgefleet.cloud.ui import (
    apidocs,
    audit_log,
    deploy,
    device_actions,
    error_pages,
    incidents,
    models,
    oidc,
    pages,
    people,
    rollouts,
    session,
)


def install(app: FastAPI) -> None:
    app.include_router(session.router)
    app.include_router(oidc.router)
    app.include_router(pages.router)
    app.include_router(rollouts.router)
    app.include_router(deploy.router)
    app.include_router(device_actions.router)
    app.include_router(people.router)
    app.include_router(incidents.router)
    app.include_router(models.router)
    app.include_router(audit_log.router)
    app.include_router(apidocs.router)
    error_pages.install(app)
