"""Small request helpers shared by the backend tests."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import httpx
from fastapi import FastAPI
from sqlalchemy import make_url

from comfygram.backend import db
from tests import images as images_module

API_TOKEN = "test-api-token-5f1c9e"

# The SQLite file migrated once per test process (see seed_sqlite); its folder goes at exit.
_template_dir: tempfile.TemporaryDirectory[str] | None = None


async def seed_sqlite(database_url: str) -> None:
    """Give a SQLite database that does not exist yet the schema, as a copy of a file migrated
    once per test process: migrating costs about 0.15 s a test, a copy a millisecond. The app's
    start still runs the migrations, which find the copy at head. PostgreSQL is left alone (its
    test database is migrated once and kept at head)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        _copy_if_new(await _migrated_template(), Path(url.database))


async def _migrated_template() -> Path:
    global _template_dir
    if _template_dir is None:
        folder = tempfile.TemporaryDirectory(prefix="comfygram-migrated-")
        engine = db.create_engine(f"sqlite+aiosqlite:///{folder.name}/migrated.db")
        try:
            await db.migrate(engine)
        finally:
            await engine.dispose()
        _template_dir = folder
    return Path(_template_dir.name) / "migrated.db"


def _copy_if_new(template: Path, database: Path) -> None:
    if not database.exists():
        database.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, database)


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
