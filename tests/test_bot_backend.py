"""The backend routes the bot needs: the /lang choice and the blocked flag, operator numbers,
measured run times and the queue with positions. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from comfygram.backend.models import Job
from tests import images
from tests.helpers import create_job, grant, register


async def _finish(api: httpx.AsyncClient, app: FastAPI, job_id: str, seconds: float) -> None:
    """Run the job to success, as a worker would, taking `seconds`."""
    assert (await api.post(f"/api/jobs/{job_id}/status", json={"status": "processing"})).is_success
    files = {"image": ("out.png", images.png(), "image/png")}
    assert (await api.put(f"/api/jobs/{job_id}/result", files=files)).is_success
    assert (await api.post(f"/api/jobs/{job_id}/status", json={"status": "succeeded"})).is_success
    async with app.state.sessions() as session:
        job = await session.get(Job, job_id)
        await session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(finished_at=job.started_at + timedelta(seconds=seconds))
        )
        await session.commit()


async def test_patch_user_stores_language_and_blocked(api: httpx.AsyncClient):
    await register(api, 1001, language_code="en-US")
    response = await api.patch("/api/users/by-telegram-id/1001", json={"language_code": "ru"})
    assert response.status_code == 200 and response.json()["language_code"] == "ru"
    response = await api.patch("/api/users/by-telegram-id/1001", json={"blocked_bot": True})
    assert response.json()["blocked_bot"] is True and response.json()["language_code"] == "ru"
    job = (await create_job(api, 1001)).json()
    assert job["language"] == "ru"  # the worker speaks the chosen language too


async def test_stats_run_times_and_queue(api: httpx.AsyncClient, app: FastAPI):
    for telegram_id in (1001, 1002):
        await register(api, telegram_id)
        await grant(api, telegram_id, 20, f"g{telegram_id}")
    jobs = [(await create_job(api, 1001, "bw")).json() for _ in range(3)]
    later = (await create_job(api, 1002, "invert")).json()
    await _finish(api, app, jobs[0]["id"], 4)
    await _finish(api, app, jobs[1]["id"], 10)
    await api.post(f"/api/jobs/{jobs[2]['id']}/status", json={"status": "cancelled"})
    invoice = (
        await api.post("/api/payments/create", json={"telegram_id": 1002, "package": "small"})
    ).json()
    confirm = {
        "payload": invoice["payload"],
        "total_amount": invoice["amount"],
        "currency": "XTR",
        "telegram_payment_charge_id": "c1",
    }
    assert (await api.post("/api/payments/confirm", json=confirm)).json()["credited"]

    stats = (await api.get("/api/stats")).json()
    assert stats["users"] == 2 and stats["users_today"] == 2
    assert stats["jobs_today"] == {
        "queued": 1,
        "processing": 0,
        "succeeded": 2,
        "failed": 0,
        "cancelled": 1,
    }
    assert (stats["queued"], stats["processing"]) == (1, 0)
    assert (stats["revenue_today"], stats["revenue_total"], stats["credits_sold_total"]) == (
        50,
        50,
        10,
    )
    assert stats["currency"] == "XTR"

    run_times = (await api.get("/api/stats/run-times")).json()
    assert run_times["median_seconds"] == 7.0
    assert run_times["presets"] == {"bw": 7.0}
    assert run_times["workers"] == 0

    queue = (await api.get("/api/stats/queue")).json()
    assert queue == {"jobs": [{"id": later["id"], "preset": "invert", "position": 1}]}
