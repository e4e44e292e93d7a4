"""MEDIA_RETENTION_DAYS: the photos of long-ended jobs are deleted, their rows kept."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from comfygram.backend import retention
from comfygram.backend.app import create_app
from comfygram.backend.models import Job
from comfygram.settings import Settings
from tests import images
from tests.helpers import create_job, grant, register

DAY = timedelta(days=1)


async def status(api: httpx.AsyncClient, job_id: str, target: str) -> None:
    response = await api.post(f"/api/jobs/{job_id}/status", json={"status": target})
    assert response.status_code == 200, response.text


async def make_job(
    api: httpx.AsyncClient, app: FastAPI, user: int, end: str, age: timedelta
) -> str:
    """A job of `user` brought to `end` (with a result when it succeeded), `age` old."""
    response = await create_job(api, user)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    if end in ("processing", "succeeded", "failed"):
        await status(api, job_id, "processing")
    if end == "succeeded":
        result = images.png(32, 32)
        uploaded = await api.put(
            f"/api/jobs/{job_id}/result", files={"image": ("r.png", result, "image/png")}
        )
        assert uploaded.status_code == 200, uploaded.text
    if end in ("succeeded", "failed", "cancelled"):
        await status(api, job_id, end)
    then = datetime.now(UTC) - age
    values = {"created_at": then, "updated_at": then}
    if end == "processing":
        values["started_at"] = then
    if end in ("succeeded", "failed", "cancelled"):
        values["finished_at"] = then
    async with app.state.sessions() as session:
        await session.execute(update(Job).where(Job.id == job_id).values(**values))
        await session.commit()
    return job_id


async def jobs_by_id(app: FastAPI) -> dict[str, Job]:
    async with app.state.sessions() as session:
        return {job.id: job for job in await session.scalars(select(Job))}


def files_of(app: FastAPI, job: Job) -> list[bool]:
    store = app.state.store
    return [store.path(f.path).is_file() for f in job.files]


@pytest.fixture
async def scene(api: httpx.AsyncClient, app: FastAPI) -> dict[str, str]:
    for user in (1001, 1002, 1003):
        await register(api, user)
        await grant(api, user, 10, f"top-up-{user}")
    return {
        "old-succeeded": await make_job(api, app, 1001, "succeeded", 40 * DAY),
        "old-failed": await make_job(api, app, 1001, "failed", 31 * DAY),
        "old-cancelled": await make_job(api, app, 1001, "cancelled", 90 * DAY),
        "recent-succeeded": await make_job(api, app, 1002, "succeeded", 29 * DAY),
        "old-queued": await make_job(api, app, 1002, "queued", 40 * DAY),
        "old-processing": await make_job(api, app, 1003, "processing", 40 * DAY),
    }


OLD_ENDED = {"old-succeeded", "old-failed", "old-cancelled"}


async def test_old_ended_jobs_lose_their_media_and_keep_their_rows(
    api: httpx.AsyncClient, app: FastAPI, scene: dict[str, str]
) -> None:
    before = await jobs_by_id(app)
    assert all(all(files_of(app, job)) for job in before.values())

    swept = await retention.sweep_once(app.state.sessions, app.state.store, 30)
    assert swept == len(OLD_ENDED)

    after = await jobs_by_id(app)
    assert after.keys() == before.keys()  # no row is deleted
    for name, job_id in scene.items():
        job = after[job_id]
        if name in OLD_ENDED:
            assert job.media_deleted_at is not None, name
            assert not any(files_of(app, job)), name
            assert job.status == before[job_id].status and job.price == before[job_id].price
        else:
            assert job.media_deleted_at is None, name
            assert all(files_of(app, job)), name

    # Every file of every old ended job is gone, and their folders with them.
    media = app.state.settings.media_dir
    for name in OLD_ENDED:
        assert not list(media.rglob(f"*{scene[name]}*")), name

    # The downloads say what happened, with 410 Gone.
    for route in ("input", "result", "inputs/0", "outputs/0"):
        gone = await api.get(f"/api/jobs/{scene['old-succeeded']}/{route}")
        assert gone.status_code == 410, gone.text
        error = gone.json()["error"]
        assert error["code"] == "media_deleted" and "MEDIA_RETENTION_DAYS" in error["message"]
    assert (await api.get(f"/api/jobs/{scene['old-failed']}/input")).status_code == 410
    kept = await api.get(f"/api/jobs/{scene['recent-succeeded']}/result")
    assert kept.status_code == 200 and kept.content
    assert (await api.get(f"/api/jobs/{scene['old-queued']}/input")).status_code == 200

    # A second sweep finds nothing more to do.
    assert await retention.sweep_once(app.state.sessions, app.state.store, 30) == 0


async def test_several_backends_sweeping_at_once_mark_each_job_once(
    app: FastAPI, scene: dict[str, str]
) -> None:
    counts = await asyncio.gather(
        *(retention.sweep_once(app.state.sessions, app.state.store, 30) for _ in range(4))
    )
    assert sum(counts) == len(OLD_ENDED)
    after = await jobs_by_id(app)
    assert {n for n, i in scene.items() if after[i].media_deleted_at} == OLD_ENDED


async def test_zero_days_keeps_media_forever(app: FastAPI, scene: dict[str, str]) -> None:
    assert await retention.sweep_once(app.state.sessions, app.state.store, 0) == 0
    assert (
        await retention.sweep_once(
            app.state.sessions, app.state.store, 0, now=datetime.now(UTC) + 10_000 * DAY
        )
        == 0
    )
    assert all(job.media_deleted_at is None for job in (await jobs_by_id(app)).values())


async def test_a_file_already_gone_is_still_marked(app: FastAPI, scene: dict[str, str]) -> None:
    """A sweep cut short after deleting files: the next one marks the job all the same."""
    job = (await jobs_by_id(app))[scene["old-succeeded"]]
    app.state.store.path(job.inputs[0].path).unlink()
    await retention.sweep_once(app.state.sessions, app.state.store, 30)
    assert (await jobs_by_id(app))[job.id].media_deleted_at is not None


async def test_the_backend_sweeps_on_its_own(app: FastAPI, scene: dict[str, str]) -> None:
    """The periodic sweep (the one the backend runs from its start) does the work."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        retention.sweep_forever(app.state.sessions, app.state.store, 30, 3600, stop)
    )
    try:
        for _ in range(200):
            async with app.state.sessions() as session:
                marked = await session.scalar(
                    select(func.count()).select_from(Job).where(Job.media_deleted_at.is_not(None))
                )
            if marked == len(OLD_ENDED):
                break
            await asyncio.sleep(0.05)
        assert marked == len(OLD_ENDED)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_starting_backend_sweeps(
    settings: Settings, app: FastAPI, scene: dict[str, str]
) -> None:
    """A backend sweeps as it starts (then hourly): a second one started now does the work."""
    assert settings.media_retention_days == 30  # the default
    second = create_app(settings)
    async with second.router.lifespan_context(second):
        for _ in range(200):
            marked = [n for n, i in scene.items() if (await jobs_by_id(app))[i].media_deleted_at]
            if len(marked) == len(OLD_ENDED):
                break
            await asyncio.sleep(0.05)
    assert set(marked) == OLD_ENDED
