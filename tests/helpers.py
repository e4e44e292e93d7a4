"""Small request helpers shared by the backend tests."""

from __future__ import annotations

import httpx

from tests import images


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
) -> httpx.Response:
    data: dict[str, str] = {"telegram_id": str(telegram_id), "preset": preset}
    if prompt is not None:
        data["prompt"] = prompt
    headers = {"Idempotency-Key": key} if key else {}
    files = {"image": (filename, images.png() if image is None else image, "image/png")}
    return await api.post("/api/jobs/create", data=data, files=files, headers=headers)


async def balance(api: httpx.AsyncClient, telegram_id: int = 1001) -> int:
    response = await api.get(f"/api/users/by-telegram-id/{telegram_id}")
    assert response.status_code == 200, response.text
    return response.json()["balance"]
