"""The API's documentation page, ``/docs``: Swagger UI served by the controller itself, so it works in
a closed network. Swagger UI's files come from the ``fastapi-offline`` package (MIT; Swagger UI itself
is Apache-2.0), its start-up is ``static/swagger-init.js`` (no inline script), and the page's policy
allows scripts, styles, images and requests from the controller only."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from markupsafe import escape

from edgefleet.cloud.ui.render import base_path

router = APIRouter(include_in_schema=False)

SWAGGER_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}
"""The files of Swagger UI that /docs loads (of those ``fastapi_offline/static`` ships)."""
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
DOCS_HEADERS = {"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-store"}


def swagger_dir() -> Path:
    return Path(str(importlib.resources.files("fastapi_offline") / "static"))


def docs_html(base: str, title: str) -> str:
    b = escape(base)
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<title>{escape(title)} · API</title>\n'
            f'<link rel="stylesheet" href="{b}/docs/assets/swagger-ui.css">\n'
            f'<link rel="icon" href="{b}/ui/static/favicon.svg" type="image/svg+xml">\n</head>\n<body>\n'
            f'<main id="swagger-ui" data-openapi="{b}/openapi.json"></main>\n'
            f'<script src="{b}/docs/assets/swagger-ui-bundle.js"></script>\n'
            f'<script src="{b}/ui/static/swagger-init.js"></script>\n</body>\n</html>\n')


@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request) -> Response:
    return HTMLResponse(docs_html(base_path(request), request.app.title), headers=DOCS_HEADERS)


@router.get("/docs/assets/{name}")
def docs_asset(name: str) -> Response:
    if name not in SWAGGER_FILES:
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(swagger_dir() / name, media_type=SWAGGER_FILES[name],
                        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})
