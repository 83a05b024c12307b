"""The web UI, served by the controller itself: sign-in (:mod:`session`), pages (:mod:`pages`),
staged rollouts (:mod:`rollouts`), drift incidents (:mod:`incidents`), rendering and filters, inline
SVG charts, templates and static files. No CDN, no JavaScript library."""

from __future__ import annotations

from fastapi import FastAPI

from edgefleet.cloud.ui import incidents, pages, rollouts, session


def install(app: FastAPI) -> None:
    app.include_router(session.router)
    app.include_router(pages.router)
    app.include_router(rollouts.router)
    app.include_router(incidents.router)
