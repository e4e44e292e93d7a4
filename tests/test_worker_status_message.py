"""A job's status message never outlives the job, whichever of the bot's record and the
worker's delivery comes first: the bot polling the Telegram double, the real backend, a worker
in-process and the ComfyUI double."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from comfygram.worker.main import run_worker
from tests import images
from tests.bot_helpers import World, fast_chat_pace, polling_world  # noqa: F401
from tests.doubles.comfyui import ComfyUIDouble

pytestmark = pytest.mark.usefixtures("fast_chat_pace")

USER = 7171


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


class HeldStatusMessages(httpx.AsyncHTTPTransport):
    """The bot's way to the backend, where recording a status message waits for ``release``:
    the job can end in between, as it does on an idle GPU with a fast preset."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.held = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status-message"):
            self.held.set()
            await self.release.wait()
        return await super().handle_async_request(request)


@contextlib.asynccontextmanager
async def worker(world: World, root) -> AsyncIterator[ComfyUIDouble]:
    async with ComfyUIDouble(root / "comfyui") as comfyui:
        settings = world.settings.model_copy(
            update={"comfyui_url": comfyui.url, "worker_name": "w1", "worker_lease_seconds": 1.5}
        )
        stop = asyncio.Event()
        task = asyncio.create_task(run_worker(settings, stop))
        try:
            yield comfyui
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)


async def order(world: World, user) -> None:
    await user.send_command("start")
    await world.reply(user, containing="Hi")
    await user.send_photo(images.jpeg())
    keyboard = await world.reply(user, containing="Nice photo")
    await user.press(keyboard.result, "ps:invert")


def queued_messages_left(world: World) -> list:
    return [
        m
        for m in world.telegram.messages(USER)
        if m.from_bot and not m.deleted and "Queued" in (m.text or "")
    ]


async def settled(world: World) -> None:
    async def done() -> bool:
        jobs = await world.backend.jobs(USER)
        # A still's photo can leave a moment before its result is stored: wait for both.
        return bool(jobs) and all(
            j.delivery_status == "delivered" and j.status == "succeeded" for j in jobs
        )

    for _ in range(400):
        if await done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not delivered: {await world.backend.jobs(USER)}")


async def test_a_job_that_ends_before_its_status_message_is_recorded_leaves_no_status(
    settings, tmp_path, redis
):
    held = HeldStatusMessages()
    async with polling_world(settings, transport=held) as world, worker(world, tmp_path):
        user = world.user(USER)
        await order(world, user)
        await asyncio.wait_for(held.held.wait(), 10)
        await settled(world)  # the result is in the chat before the record goes through
        (job,) = await world.backend.jobs(USER)
        assert job.status == "succeeded" and job.status_message_id is None
        assert [m for m in world.telegram.messages(USER) if m.from_bot and m.photo]
        held.release.set()

        async def cleared() -> bool:
            return not queued_messages_left(world)

        for _ in range(200):
            if await cleared():
                break
            await asyncio.sleep(0.05)
        assert not queued_messages_left(world)
        assert (await world.backend.job(job.id)).status_message_id is None


async def test_the_normal_order_deletes_the_status_message_once_the_result_is_there(
    settings, tmp_path, redis
):
    async with polling_world(settings) as world:
        user = world.user(USER)
        await order(world, user)
        await world.reply(user, containing="Queued")
        await world.settle()
        (job,) = await world.backend.jobs(USER)
        assert job.status_message_id is not None  # recorded while queued
        async with worker(world, tmp_path):
            await settled(world)
        assert not queued_messages_left(world)
        status = world.telegram.message(USER, job.status_message_id)
        assert status.deleted


async def test_a_status_message_recorded_while_the_job_runs_is_removed_by_the_worker(
    settings, tmp_path, redis
):
    held = HeldStatusMessages()
    async with polling_world(settings, transport=held) as world, worker(world, tmp_path) as comfy:
        comfy.execution_delay = 1.5
        user = world.user(USER)
        await order(world, user)
        await asyncio.wait_for(held.held.wait(), 10)
        for _ in range(200):  # the worker has read the job, with no status message yet
            if comfy.running is not None:
                break
            await asyncio.sleep(0.05)
        assert comfy.running is not None
        held.release.set()
        await settled(world)
        (job,) = await world.backend.jobs(USER)
        assert job.status_message_id is not None  # recorded: the delivery claim returned it
        assert world.telegram.message(USER, job.status_message_id).deleted
        assert not queued_messages_left(world)
