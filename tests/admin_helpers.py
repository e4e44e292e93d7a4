"""Helpers for the admin panel tests: a backend with the panel on, and a logged-in client."""

from __future__ import annotations

import re

import httpx
from fastapi import FastAPI

ADMIN_USERNAME = "operator"
ADMIN_PASSWORD = "correct-horse-battery-9"


def panel_client(app: FastAPI) -> httpx.AsyncClient:
    """A browser-like client of the in-process backend: no API token, cookies kept."""
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://backend.test")


async def login(
    client: httpx.AsyncClient, username: str = ADMIN_USERNAME, password: str = ADMIN_PASSWORD
) -> httpx.Response:
    return await client.post("/admin/login", data={"username": username, "password": password})


async def csrf(client: httpx.AsyncClient, page: str) -> str:
    response = await client.get(page)
    assert response.status_code == 200, response.text
    match = re.search(r'name="csrf" value="([^"]+)"', response.text)
    assert match, f"no csrf field on {page}"
    return match.group(1)


def stat(html: str, name: str) -> str:
    """The text of the dashboard element marked data-stat=name."""
    match = re.search(rf'data-stat="{re.escape(name)}"[^>]*>\s*([^<]*?)\s*<', html)
    assert match, f"no data-stat={name} on the page"
    return match.group(1)
