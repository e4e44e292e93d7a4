"""Helpers for the admin panel tests: a backend with the panel on, and a logged-in client."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import httpx
from fastapi import FastAPI
from pydantic import SecretStr

from comfygram.backend.models import Job, JobFile, Payment, User
from comfygram.settings import Settings

ADMIN_USERNAME = "operator"
ADMIN_PASSWORD = "correct-horse-battery-9"
PANEL_URL = "http://backend.test"
# Loopback is a trusted address (ADMIN_TRUSTED_IPS); the tests of the login limit come from
# addresses in TEST-NET ranges, which are not.
LOOPBACK = "127.0.0.1"


def with_admin(settings: Settings, **overrides: object) -> Settings:
    """The test settings with the panel on."""
    values = {
        "admin_username": ADMIN_USERNAME,
        "admin_password": SecretStr(ADMIN_PASSWORD),
        **overrides,
    }
    return settings.model_copy(update=values)


def panel_client(
    app: FastAPI, address: str = LOOPBACK, *, raise_app_exceptions: bool = True
) -> httpx.AsyncClient:
    """A browser-like client of the in-process backend from `address`: no API token, cookies
    kept, and the panel's own origin on every request, as a browser sends it."""
    transport = httpx.ASGITransport(
        app=app, client=(address, 50000), raise_app_exceptions=raise_app_exceptions
    )
    return httpx.AsyncClient(transport=transport, base_url=PANEL_URL, headers={"Origin": PANEL_URL})


async def login(
    client: httpx.AsyncClient, username: str = ADMIN_USERNAME, password: str = ADMIN_PASSWORD
) -> httpx.Response:
    return await client.post("/admin/login", data={"username": username, "password": password})


async def csrf(client: httpx.AsyncClient, page: str = "/admin/dashboard") -> str:
    """The session's CSRF token, as the form on `page` carries it."""
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


def seeded_job(
    user: User, slug: str, status: str, *, created: datetime, run: float | None = None
) -> Job:
    """A job row as the dashboard reads it; `run` seconds of ComfyUI starting 2 s after creation."""
    started = created + timedelta(seconds=2) if run is not None else None
    return Job(
        user_id=user.id,
        preset_slug=slug,
        price=1,
        status=status,
        files=[
            JobFile(
                role="input",
                position=0,
                slot="photo",
                kind="image",
                mime="image/png",
                path="inputs/x.png",
            )
        ],
        created_at=created,
        started_at=started,
        finished_at=started + timedelta(seconds=run) if started else None,
    )


def seeded_payment(
    user: User,
    key: str,
    stars: int,
    credits: int,
    paid_at: datetime | None,
    package: str = "small",
) -> Payment:
    """A Stars payment row: paid at `paid_at`, or still pending when None."""
    return Payment(
        user_id=user.id,
        package=package,
        credits=credits,
        amount=stars,
        currency="XTR",
        status="paid" if paid_at else "pending",
        payload=f"p-{key}",
        telegram_payment_charge_id=f"c-{key}" if paid_at else None,
        paid_at=paid_at,
    )
