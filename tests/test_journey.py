"""A user's whole journey with every part running: the bot (polling, then webhook), the real
backend over HTTP, real Redis, a worker and the ComfyUI and Telegram doubles."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from comfygram.settings import Settings
from comfygram.worker.main import run_worker
from tests import images
from tests.bot_helpers import World, fast_chat_pace, polling_world, webhook_world  # noqa: F401
from tests.doubles.comfyui import ComfyUIDouble

pytestmark = pytest.mark.usefixtures("fast_chat_pace")


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@contextlib.asynccontextmanager
async def worker_for(world: World, comfyui: ComfyUIDouble) -> AsyncIterator[None]:
    settings = world.settings.model_copy(
        update={"comfyui_url": comfyui.url, "worker_name": "gpu-1", "worker_lease_seconds": 2.0}
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def journey(world: World, comfyui: ComfyUIDouble, telegram_id: int) -> None:
    comfyui.execution_delay = 0.6  # long enough for progress edits to show
    user = world.user(telegram_id, first_name="Lena", language_code="ru")
    await user.send_command("start")
    await world.reply(user, containing="Lena")
    await user.send_photo(images.jpeg(160, 120))
    await world.telegram.wait_for(
        "sendMessage",
        chat_id=telegram_id,
        predicate=lambda c: "ps:invert" in str(c.params.get("reply_markup")),
    )
    menu = next(
        c
        for c in world.telegram.sent("sendMessage", chat_id=telegram_id)
        if "ps:invert" in str(c.params.get("reply_markup"))
    )
    await user.press(menu.result, "ps:invert")

    [result] = await world.telegram.wait_for("sendPhoto", chat_id=telegram_id, timeout=30)
    assert result.ok and "Негатив" in result.params["caption"]  # the user's language
    job = await world.ended_job(telegram_id)
    assert (job.preset, job.status) == ("invert", "succeeded")
    texts = [
        c.params["text"]
        for c in world.telegram.sent(chat_id=telegram_id)
        if c.method in ("sendMessage", "editMessageText")
        and c.params.get("message_id", c.result and c.result.get("message_id"))
        == job.status_message_id
    ]
    # One status message: queued first, then processing with a progress bar.
    assert texts and any("%" in text for text in texts)
    # The result replaces the status message.
    deleted = await world.telegram.wait_for("deleteMessage", chat_id=telegram_id)
    assert [d.params["message_id"] for d in deleted] == [job.status_message_id]
    assert (await world.backend.user(telegram_id)).balance == 3 - 1
    assert len([c for c in world.telegram.sent("sendPhoto", chat_id=telegram_id) if c.ok]) == 1

    # "Another preset" on the result shows the presets again for the same photo.
    mark = world.mark()
    await user.press(result.result, f"again:{job.id}")
    again = await world.telegram.wait_for(
        "sendMessage",
        chat_id=telegram_id,
        since=mark,
        predicate=lambda c: "ps:" in str(c.params.get("reply_markup")),
    )
    assert again


async def test_journey_by_polling(settings: Settings, tmp_path):
    async with (
        ComfyUIDouble(tmp_path / "comfyui") as comfyui,
        polling_world(settings) as world,
        worker_for(world, comfyui),
    ):
        await journey(world, comfyui, 7001)


async def test_journey_by_webhook(settings: Settings, tmp_path):
    async with (
        ComfyUIDouble(tmp_path / "comfyui") as comfyui,
        webhook_world(settings) as world,
        worker_for(world, comfyui),
    ):
        assert world.telegram.webhook is not None
        await journey(world, comfyui, 7002)
