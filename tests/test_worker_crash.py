"""`kill -9` of a real `comfygram worker` process at each stage of a job.

Whatever the moment, the job ends succeeded once (charged once, never refunded), and the user
gets at most one result message. The next worker takes over after the lease and re-attaches
to the prompt in ComfyUI instead of running it again where it can.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from comfygram.backend import jobs
from comfygram.queue import connect_redis
from comfygram.worker.gpu_lock import GpuLock
from tests import images
from tests.redis_server import RedisServer
from tests.stack import Stack, eventually, running_stack

USER = 5151


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@pytest.fixture
async def stack(settings, tmp_path, redis):
    async with running_stack(settings, tmp_path) as running:
        await running.new_user(USER, credits=10)
        yield running


async def _workers(stack: Stack, *names: str) -> dict[str, subprocess.Popen[bytes]]:
    """Start worker processes side by side; return once every one has reported in."""
    processes = {name: stack.spawn_worker(name) for name in names}

    async def reported() -> bool:
        seen = {w["name"] for w in await stack.backend.workers()}
        return seen >= set(names)

    # Importing aiogram alone takes seconds on a loaded machine (two processes start at once).
    await eventually(reported, timeout=60)
    return processes


async def _gpu_holder(stack: Stack) -> str:
    redis = connect_redis(stack.settings)
    try:
        lock = GpuLock(redis, stack.settings.redis_prefix, stack.settings.comfyui_url, "", 1)
        holder = await lock.holder()
    finally:
        await redis.aclose()
    assert holder is not None, "no worker holds the GPU lock"
    return holder.split(":", 1)[1]


async def _processing(stack: Stack, job_id: str) -> bool:
    return (await stack.backend.job(job_id)).status == "processing"


async def _crash_and_recover(
    stack: Stack,
    arrange: Callable[[], None],
    reached: Callable[[str], Awaitable[bool]],
    restore: Callable[[], None],
) -> None:
    """Two workers share the ComfyUI; the one holding the GPU is killed at a stage, and the
    other (waiting for the lock all along) must take the job over."""
    processes = await _workers(stack, "a", "b")
    arrange()
    job, _ = await stack.backend.create_job(USER, "invert", [(images.png(), "p.png")])
    await eventually(lambda: reached(job.id), timeout=20)
    stack.kill(processes[await _gpu_holder(stack)])
    restore()
    final = await stack.settled(job.id, timeout=60)
    assert final.status == "succeeded"
    assert final.attempts == 0
    assert (await stack.backend.user(USER)).balance == 12  # charged once, never refunded
    photos = [c for c in stack.telegram.sent("sendPhoto", chat_id=USER) if c.ok]
    assert len(photos) <= 1
    if final.delivery_status == "delivered":
        assert len(photos) == 1
    else:  # killed between claiming the message and recording it: not sent a second time
        assert final.delivery_status == "failed" and "not sent again" in final.delivery_error


async def test_killed_after_dequeue(stack: Stack):
    def arrange() -> None:
        stack.comfyui.http_delay = 3.0  # the upload hangs: the job is taken, not submitted

    def restore() -> None:
        stack.comfyui.http_delay = 0.0

    await _crash_and_recover(stack, arrange, lambda j: _processing(stack, j), restore)


async def test_killed_after_submit(stack: Stack):
    async def submitted(_job_id: str) -> bool:
        return bool(stack.comfyui.prompts_received)

    await _crash_and_recover(stack, stack.comfyui.pause, submitted, stack.comfyui.resume)
    assert len(stack.comfyui.prompts_received) == 1  # re-attached, not submitted again


async def test_killed_during_execution(stack: Stack):
    def arrange() -> None:
        stack.comfyui.execution_delay = 1.0

    async def running(_job_id: str) -> bool:
        return stack.comfyui.running is not None

    await _crash_and_recover(stack, arrange, running, lambda: None)
    assert len(stack.comfyui.prompts_received) == 1


async def test_killed_after_the_result_is_stored(stack: Stack):
    """Stored, succeeded and its message claimed in one step, then killed while Telegram
    refuses the photo: the successor never sends it (it cannot know whether Telegram took one)."""

    def arrange() -> None:
        stack.telegram.fail("sendPhoto", 500, "Internal Server Error", times=1000)

    async def stored(job_id: str) -> bool:
        job = await stack.backend.job(job_id)
        return job.has_result and bool(stack.telegram.sent("sendPhoto", chat_id=USER))

    def restore() -> None:
        stack.telegram._faults.clear()  # Telegram is healthy again

    await _crash_and_recover(stack, arrange, stored, restore)
    job = await stack.backend.job((await stack.backend.jobs(USER))[0].id)
    assert job.delivery_status == "failed"
    assert not [c for c in stack.telegram.sent("sendPhoto", chat_id=USER) if c.ok]


def _hold_the_first_store(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """The backend takes the first upload of outputs only once released: (held, release)."""
    held, release = asyncio.Event(), asyncio.Event()
    store = jobs.attach_outputs

    async def held_store(*args, **kwargs):
        if not held.is_set():
            held.set()
            await release.wait()
        return await store(*args, **kwargs)

    monkeypatch.setattr(jobs, "attach_outputs", held_store)
    return held, release


async def test_killed_after_the_photo_left_while_the_result_was_stored(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    """The photo leaves while the backend stores the result; killed once it has arrived and
    before the store answered: the successor stores the result and sends nothing more."""
    held, release = _hold_the_first_store(monkeypatch)

    async def sent_while_storing(job_id: str) -> bool:
        job = await stack.backend.job(job_id)
        return held.is_set() and job.delivery_status == "delivered"

    await _crash_and_recover(stack, lambda: None, sent_while_storing, release.set)
    assert (await stack.backend.jobs(USER))[0].delivery_status == "delivered"


async def test_killed_sending_the_photo_while_the_result_was_stored(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    """Killed with the message claimed, the photo refused by Telegram and the store not yet
    answered: the successor stores the result and never sends the photo (it cannot know
    whether Telegram took one)."""
    held, release = _hold_the_first_store(monkeypatch)
    stack.telegram.fail("sendPhoto", 500, "Internal Server Error", times=1000)

    async def sending(job_id: str) -> bool:
        job = await stack.backend.job(job_id)
        tried = bool(stack.telegram.sent("sendPhoto", chat_id=USER))
        return held.is_set() and tried and job.delivery_status == "sending"

    def restore() -> None:
        stack.telegram._faults.clear()
        release.set()

    await _crash_and_recover(stack, lambda: None, sending, restore)
    assert (await stack.backend.jobs(USER))[0].delivery_status == "failed"
    assert not [c for c in stack.telegram.sent("sendPhoto", chat_id=USER) if c.ok]


async def test_killed_right_after_delivery(stack: Stack):
    async def delivered(_job_id: str) -> bool:
        return bool(stack.telegram.sent("sendPhoto", chat_id=USER))

    await _crash_and_recover(stack, lambda: None, delivered, lambda: None)


async def test_flushed_redis_and_a_dead_worker_lose_no_job(settings, tmp_path):
    server = RedisServer(tmp_path)  # a private server: this test flushes it
    server.start()
    try:
        async with running_stack(
            settings, tmp_path, redis_url=server.url, stale_processing_seconds=1.0
        ) as stack:
            await stack.new_user(USER, credits=10)
            stack.comfyui.execution_delay = 1.0
            processes = await _workers(stack, "a", "b")
            job, _ = await stack.backend.create_job(USER, "invert", [(images.png(), "p.png")])
            await eventually(lambda: _processing(stack, job.id), timeout=20)
            stack.kill(processes[await _gpu_holder(stack)])
            redis = Redis.from_url(server.url)
            await redis.flushall()
            await redis.aclose()
            final = await stack.settled(job.id, timeout=60)
            assert final.status == "succeeded"
            assert len([c for c in stack.telegram.sent("sendPhoto") if c.ok]) == 1
    finally:
        server.stop()


async def test_sigterm_finishes_the_current_job_then_releases_the_gpu(stack: Stack):
    stack.comfyui.execution_delay = 0.5
    process = (await _workers(stack, "a"))["a"]
    job, _ = await stack.backend.create_job(USER, "invert", [(images.png(), "p.png")])
    await eventually(lambda: _processing(stack, job.id), timeout=20)
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 15) == 0
    final = await stack.backend.job(job.id)
    assert (final.status, final.delivery_status) == ("succeeded", "delivered")
    redis = connect_redis(stack.settings)
    try:
        lock = GpuLock(redis, stack.settings.redis_prefix, stack.settings.comfyui_url, "", 1)
        assert await lock.holder() is None
    finally:
        await redis.aclose()
