"""Small request helpers shared by the backend tests."""

from __future__ import annotations

import json

import httpx
from fastapi import FastAPI

from tests import images as images_module

API_TOKEN = "test-api-token-5f1c9e"


def backend_client(
    app: FastAPI, token: str | None = API_TOKEN, *, raise_app_exceptions: bool = True
) -> httpx.AsyncClient:
    """An HTTP client of the in-process backend, carrying the service token unless None."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://backend.test", headers=headers)


async def register(api: httpx.AsyncClient, telegram_id: int = 1001, **extra: object) -> dict:
    response = await api.post("/api/users/register", json={"telegram_id": telegram_id, **extra})
    assert response.status_code in (200, 201), response.text
    return response.json()


async def grant(api: httpx.AsyncClient, telegram_id: int, amount: int, key: str) -> dict:
    response = await api.post(
        f"/api/users/by-telegram-id/{telegram_id}/credits",
        json={"amount": amount, "reason": "test", "actor": "tests", "idempotency_key": key},
    )
    assert response.status_code == 200, response.text
    return response.json()


async def create_job(
    api: httpx.AsyncClient,
    telegram_id: int = 1001,
    preset: str = "bw",
    image: bytes | None = None,
    *,
    prompt: str | None = None,
    key: str | None = None,
    filename: str = "photo.png",
    images: list[bytes] | None = None,
    options: dict[str, str] | str | None = None,
) -> httpx.Response:
    """POST /api/jobs/create: one photo (``image``, a PNG unless given) or several
    (``images``, in slot order); ``options`` as a dict, or as the raw form field."""
    data: dict[str, str] = {"telegram_id": str(telegram_id), "preset": preset}
    if prompt is not None:
        data["prompt"] = prompt
    if options is not None:
        data["options"] = options if isinstance(options, str) else json.dumps(options)
    headers = {"Idempotency-Key": key} if key else {}
    photos = images if images is not None else [images_module.png() if image is None else image]
    files = [("image", (filename, photo, "image/png")) for photo in photos]
    return await api.post("/api/jobs/create", data=data, files=files, headers=headers)


async def balance(api: httpx.AsyncClient, telegram_id: int = 1001) -> int:
    response = await api.get(f"/api/users/by-telegram-id/{telegram_id}")
    assert response.status_code == 200, response.text
    return response.json()["balance"]
