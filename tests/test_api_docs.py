"""The API's own documentation: served from local files (no CDN), and off unless asked for."""

from __future__ import annotations

import re

import pytest

from comfygram.backend.app import create_app
from comfygram.run import single_machine_settings
from comfygram.settings import Settings
from tests.helpers import API_TOKEN, backend_client

PAGES = ("/docs", "/redoc", "/openapi.json")


def app_with(**values):
    return create_app(Settings(_env_file=None, api_token=API_TOKEN, **values))


async def test_the_docs_pages_load_everything_from_the_backend():
    async with backend_client(app_with(api_docs=True), token=None) as client:
        spec = await client.get("/openapi.json")
        assert spec.status_code == 200 and "/api/jobs/create" in spec.json()["paths"]
        for page in ("/docs", "/redoc"):
            html = await client.get(page)
            assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
            assert "/openapi.json" in html.text
            urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
            urls += re.findall(r"""url: ?["']([^"']+\.(?:js|css))["']""", html.text)
            assets = [url for url in urls if url.endswith((".js", ".css", ".png"))]
            assert assets, html.text
            for url in urls:
                assert not url.startswith(("http:", "https:", "//")), f"{page} loads {url}"
            for url in assets:
                asset = await client.get(url)
                assert asset.status_code == 200, url
                expected = {"js": "javascript", "css": "text/css", "png": "image/png"}
                assert expected[url.rsplit(".", 1)[1]] in asset.headers["content-type"], url
                assert len(asset.content) > 1000, url


@pytest.mark.parametrize("values", [{}, {"api_docs": False}])
async def test_the_docs_are_off_unless_asked_for(values):
    async with backend_client(app_with(**values), token=None) as client:
        for page in (*PAGES, "/docs/assets/swagger-ui-bundle.js"):
            assert (await client.get(page)).status_code == 404, page
        # The service token does not turn them on either.
    async with backend_client(app_with(**values)) as client:
        assert (await client.get("/docs")).status_code == 404


@pytest.mark.parametrize(
    ("values", "on"),
    [
        ({}, True),  # one machine, listening on loopback only
        ({"backend_host": "0.0.0.0"}, False),  # reachable from elsewhere: the operator decides
        ({"backend_host": "0.0.0.0", "api_docs": True}, True),
        ({"api_docs": False}, False),
    ],
)
def test_comfygram_run_serves_the_docs_on_loopback_unless_told(values, on):
    settings = Settings(_env_file=None, api_token=API_TOKEN, **values)
    assert single_machine_settings(settings).api_docs is on
