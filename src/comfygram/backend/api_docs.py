"""The API's own documentation (/docs, /redoc, /openapi.json), served from local files.

FastAPI's pages load Swagger UI and ReDoc from a CDN, so they are blank on a machine without
internet; these load the copies the fastapi-offline package ships. They are mounted only when
API_DOCS says so (docs/settings.md): the schema lists every route, which is nobody's business on
a public backend.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs/assets"
OPENAPI_URL = "/openapi.json"


def mount_api_docs(app: FastAPI) -> None:
    """Serve the OpenAPI schema, Swagger UI at /docs and ReDoc at /redoc."""
    assets = files("fastapi_offline") / "static"
    # Mounted before the pages, and under /docs/assets so one proxy rule covers them all.
    app.mount(ASSETS_URL, StaticFiles(directory=str(assets)), name="api-docs-assets")

    @app.get(OPENAPI_URL, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_URL,
            title=f"{app.title}: API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=OPENAPI_URL,
            title=f"{app.title}: API",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
