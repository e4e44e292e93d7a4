"""`kill -9` of a real `comfygram worker` process at each stage of a job.

Whatever the moment, the job ends succeeded once (charged once, never refunded), and the user
gets at most one result message. The next worker takes over after the lease and re-attaches
to the prompt in ComfyUI instead of running it again where it can.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

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


async def _healthy_worker(stack: Stack, name: str):
    process = stack.spawn_worker(name)

    async def reported() -> bool:
        return any(w for w in await stack.backend.workers() if w["name"] == name)

    await eventually(reported, timeout=20)
    return process


async def _processing(stack: Stack, job_id: str) -> bool:
    return (await stack.backend.job(job_id)).status == "processing"


async def _crash_and_recover(
    stack: Stack,
    arrange: Callable[[], None],
    reached: Callable[[str], Awaitable[bool]],
    restore: Callable[[], None],
) -> None:
    first = await _healthy_worker(stack, "doomed")
    arrange()
    job, _ = await stack.backend.create_job(USER, "invert", images.png(), "p.png")
    await eventually(lambda: reached(job.id), timeout=20)
    stack.kill(first)
    restore()
    await _healthy_worker(stack, "heir")
    final = await stack.settled(job.id, timeout=30)
    assert final.status == "succeeded"
    assert final.attempts == 0
    assert (await stack.backend.user(USER)).balance == 12  # charged once, never refunded
    photos = stack.telegram.sent("sendPhoto", chat_id=USER)
    assert len(photos) <= 1
    if final.delivery_status == "delivered":
        assert len(photos) == 1
    else:  # killed between sending and recording it: not sent a second time
        assert final.delivery_status == "failed" and len(photos) == 1


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
    def arrange() -> None:
        stack.telegram.fail("sendPhoto", 500, "Internal Server Error", times=1000)

    async def stored(job_id: str) -> bool:
        return (await stack.backend.job(job_id)).has_result

    def restore() -> None:
        stack.telegram.fail("sendPhoto", 500, "Internal Server Error", times=0)

    await _crash_and_recover(stack, arrange, stored, restore)


async def test_killed_right_after_delivery(stack: Stack):
    async def delivered(_job_id: str) -> bool:
        return bool(stack.telegram.sent("sendPhoto", chat_id=USER))

    await _crash_and_recover(stack, lambda: None, delivered, lambda: None)


async def test_flushed_redis_and_a_dead_worker_lose_no_job(settings, tmp_path):
    server = RedisServer(tmp_path / "redis")  # a private server: this test flushes it
    server.start()
    try:
        async with running_stack(
            settings, tmp_path, redis_url=server.url, stale_processing_seconds=1.0
        ) as stack:
            await stack.new_user(USER, credits=10)
            stack.comfyui.execution_delay = 1.0
            first = await _healthy_worker(stack, "doomed")
            job, _ = await stack.backend.create_job(USER, "invert", images.png(), "p.png")
            await eventually(lambda: _processing(stack, job.id), timeout=20)
            stack.kill(first)
            redis = Redis.from_url(server.url)
            await redis.flushall()
            await redis.aclose()
            await _healthy_worker(stack, "heir")
            final = await stack.settled(job.id, timeout=30)
            assert final.status == "succeeded"
            assert len(stack.telegram.sent("sendPhoto", chat_id=USER)) == 1
    finally:
        server.stop()
