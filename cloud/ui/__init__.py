"""The web UI, served by the controller itself: sign-in (:mod:`session`; OIDC: :mod:`oidc`), pages (:mod:`pages`),
the model registry (:mod:`models`), the audit log (:mod:`audit_log`), staged rollouts (:mod:`rollouts`),
the device list with its bulk actions (:mod:`device_list`),
actions: deploy (:mod:`deploy`), device actions and enrollment tokens (:mod:`device_actions`), cohort rollback
(:mod:`cohort_rollback`), bundle upload (:mod:`bundle_upload`), users and tokens (:mod:`people`),
drift incidents (:mod:`incidents`), webhooks (:mod:`webhooks_page`),
fleet trends and the live pages' fingerprint (:mod:`trends`), the API docs
(:mod:`apidocs`), error pages (:mod:`error_pages`),
rendering and filters, inline SVG charts, templates and static files. No CDN, no JavaScript library
(Swagger UI on /docs only)."""

from __future__ import annotations

from fastapi import FastAPI

from edgefleet.cloud.ui import (
    apidocs,
    audit_log,
    bundle_upload,
    cohort_rollback,
    deploy,
    device_actions,
    device_list,
    error_pages,
    incidents,
    models,
    oidc,
    pages,
    people,
    rollouts,
    session,
    trends,
    webhooks_page,
)


def install(app: FastAPI) -> None:
    app.include_router(session.router)
    app.include_router(oidc.router)
    app.include_router(pages.router)
    app.include_router(device_list.router)
    app.include_router(rollouts.router)
    app.include_router(deploy.router)
    app.include_router(device_actions.router)
    app.include_router(cohort_rollback.router)
    app.include_router(bundle_upload.router,   # the bundle file: the upload bound, not the app's request bound
                       max_body_size=bundle_upload.body_limit(app.state.controller.settings.max_bundle_bytes))
    app.include_router(people.router)
    app.include_router(incidents.router)
    app.include_router(models.router)
    app.include_router(audit_log.router)
    app.include_router(trends.router)
    app.include_router(webhooks_page.router)
    app.include_router(apidocs.router)
    error_pages.install(app)
