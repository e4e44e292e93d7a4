"""Orders as a person places them: a new press after a job ended is a new order, a press Telegram
calls too old still does its work, the price is checked before the prompt is asked for, the
queue message says when no GPU serves the queue, an album gets one keyboard, and the photo is
downloaded once per order. The bot polls the Telegram double; real backend and Redis."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from comfygram.settings import Settings
from tests import images
from tests.bot_helpers import World, fast_chat_pace, polling_world  # noqa: F401
from tests.doubles.telegram import QUERY_TOO_OLD, Call, UserDriver

pytestmark = pytest.mark.usefixtures("fast_chat_pace")


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    async with polling_world(settings) as running:
        yield running


async def _started(world: World, telegram_id: int, credits: int = 0) -> UserDriver:
    user = world.user(telegram_id)
    await user.send_command("start")
    await world.reply(user, containing="👋")
    if credits:
        await world.backend.adjust_credits(
            telegram_id, credits, reason="tests", actor="tests", idempotency_key=f"t{telegram_id}"
        )
    return user


async def _second_page(world: World, user: UserDriver, keyboard: Call) -> None:
    """Turn the preset keyboard to its second page (the cheapest presets fill the first)."""
    since = world.mark()
    await user.press(keyboard.result, "pp:1")
    await world.reply(user, method="editMessageReplyMarkup", since=since)


def _queued_messages(world: World, chat_id: int) -> list[str]:
    return [
        c.params["text"]
        for c in world.telegram.sent("sendMessage", chat_id)
        if "Queued" in c.params["text"]
    ]


async def test_a_new_press_after_the_job_ended_is_a_new_order(world: World):
    user = await _started(world, 6001, credits=7)  # 10 credits
    await user.send_photo(images.jpeg())
    keyboard = await world.reply(user, containing="Nice photo")
    await user.press(keyboard.result, "ps:bw")
    await world.reply(user, containing="Queued: position")
    await world.settle()
    (first,) = await world.backend.jobs(6001)
    await world.backend.set_status(first.id, "cancelled")
    # The same button on the same keyboard: a deliberate new order, charged and announced.
    since = world.mark()
    await user.press(keyboard.result, "ps:bw")
    await world.reply(user, containing="Queued: position", since=since)
    await world.settle()
    jobs = await world.backend.jobs(6001)
    assert len(jobs) == 2
    second = next(j for j in jobs if j.id != first.id)
    assert second.status == "queued" and second.status_message_id is not None
    # A double tap while the second job is alive replays it: no third job, no second message.
    since = world.mark()
    await user.press(keyboard.result, "ps:bw")
    await user.press(keyboard.result, "ps:bw")
    await world.telegram.wait_for("answerCallbackQuery", count=2, since=since)
    await world.settle()
    assert len(await world.backend.jobs(6001)) == 2
    assert len(_queued_messages(world, 6001)) == 2
    # Ended again: the next press is a third order.
    await world.backend.set_status(second.id, "cancelled")
    since = world.mark()
    await user.press(keyboard.result, "ps:bw")
    await world.reply(user, containing="Queued: position", since=since)
    await world.settle()
    jobs = await world.backend.jobs(6001)
    assert len(jobs) == 3
    assert (await world.backend.user(6001)).balance == 10 - jobs[0].price


async def test_a_press_telegram_calls_too_old_still_places_the_order(world: World):
    user = await _started(world, 6002)
    await user.send_photo(images.jpeg())
    keyboard = await world.reply(user, containing="Nice photo")
    since = world.mark()
    await user.press(keyboard.result, "ps:bw", too_old=True)
    await world.reply(user, containing="Queued: position", since=since)
    await world.settle()
    answers = world.telegram.sent("answerCallbackQuery")
    assert answers[-1].status == 400 and answers[-1].response["description"] == QUERY_TOO_OLD
    (job,) = await world.backend.jobs(6002)
    assert job.status == "queued"
    texts = [c.params["text"] for c in world.telegram.sent("sendMessage", 6002)[-3:]]
    assert not [text for text in texts if "went wrong" in text or "Sorry" in text], texts


async def test_the_price_is_checked_before_asking_for_the_prompt(world: World):
    user = await _started(world, 6003)  # 3 credits; "edit" costs more
    await user.send_photo(images.png())
    keyboard = await world.reply(user, containing="Nice photo")
    await _second_page(world, user, keyboard)
    since = world.mark()
    await user.press(keyboard.result, "ps:edit")
    offer = await world.reply(user, containing="Not enough credits", since=since)
    assert "(you have 3)" in offer.params["text"]
    await world.settle()
    texts = [c.params["text"] for c in world.telegram.sent("sendMessage", 6003)]
    assert not [text for text in texts if "describe the edit" in text]
    # No prompt is awaited: text is just text.
    since = world.mark()
    await user.send_text("make it snowy")
    await world.reply(user, containing="Send me a photo", since=since)
    assert await world.backend.jobs(6003) == []


async def test_the_price_is_checked_before_asking_for_the_photo(world: World):
    user = await _started(world, 6004)  # 3 credits; "oil" costs 5
    await user.send_text("🎨 Presets")
    keyboard = await world.reply(user, containing="then send me the photo")
    await _second_page(world, user, keyboard)
    since = world.mark()
    await user.press(keyboard.result, "ps:oil")
    offer = await world.reply(user, containing="Not enough credits", since=since)
    assert "you need 2 more (you have 3)" in offer.params["text"]
    await world.settle()
    assert not [
        c for c in world.telegram.calls[since:] if "Now send me" in str(c.params.get("text"))
    ]


async def test_the_queue_message_says_when_no_gpu_serves_the_queue(world: World):
    user = await _started(world, 6005)
    await user.send_photo(images.jpeg())
    keyboard = await world.reply(user, containing="Nice photo")
    await user.press(keyboard.result, "ps:bw")
    status = await world.reply(user, containing="Queued: position 1")
    assert "No GPU is serving the queue right now" in status.params["text"]
    assert "about" not in status.params["text"]
    # A worker comes up: the estimate appears on the same message.
    since = world.mark()
    await world.backend.worker_heartbeat(
        "gpu-1",
        comfyui_url="http://127.0.0.1:1",
        healthy=True,
        runnable=["bw", "invert", "oil", "edit"],
        problems={},
        ttl_seconds=60,
    )
    edit = await world.reply(
        user, method="editMessageText", containing="about", since=since, timeout=15
    )
    assert edit.params["message_id"] == status.result["message_id"]
    assert edit.params["text"] == "⏳ Queued: position 1, about 30 s."


async def test_an_album_gets_one_keyboard_and_its_first_photo_is_the_order(world: World):
    user = await _started(world, 6006)
    since = world.mark()
    await user.send_album([images.jpeg(64, 48), images.jpeg(80, 60), images.jpeg(96, 72)])
    keyboard = await world.reply(user, containing="Nice photos", since=since)
    await world.settle()
    sent = [c.params["text"] for c in world.telegram.calls[since:] if c.method == "sendMessage"]
    assert len([text for text in sent if "Nice photo" in text]) == 1, sent
    assert not [text for text in sent if "a lot at once" in text], sent
    await user.press(keyboard.result, "ps:bw")
    await world.reply(user, containing="Queued", since=since)
    # A one-photo preset: the first photo is used, and the user is told so.
    sent = [c.params["text"] for c in world.telegram.calls[since:] if c.method == "sendMessage"]
    assert "📷 You sent 3 photos; I'll work with the first one." in sent[-2]
    (job,) = await world.backend.jobs(6006)
    data, _type = await world.backend.job_input(job.id)
    assert Image.open(io.BytesIO(data)).size == (64, 48)


async def test_an_album_after_choosing_a_preset_orders_its_first_photo_once(world: World):
    user = await _started(world, 6007, credits=7)
    await user.send_text("🎨 Presets")
    keyboard = await world.reply(user, containing="then send me the photo")
    await user.press(keyboard.result, "ps:invert")
    await world.reply(user, containing="Now send me the photo")
    since = world.mark()
    await user.send_album([images.jpeg(80, 60), images.jpeg(64, 48)])
    await world.reply(user, containing="Queued", since=since)
    await world.settle()
    (job,) = await world.backend.jobs(6007)
    data, _type = await world.backend.job_input(job.id)
    assert Image.open(io.BytesIO(data)).size == (80, 60)
    sent = [c.params["text"] for c in world.telegram.calls[since:] if c.method == "sendMessage"]
    assert not [text for text in sent if "Nice photo" in text], sent
    assert len([text for text in sent if "2 photos" in text]) == 1, sent


async def test_the_photo_is_fetched_from_telegram_once(world: World):
    user = await _started(world, 6008, credits=7)
    since = world.mark()
    await user.send_photo(images.jpeg())
    keyboard = await world.reply(user, containing="Nice photo")
    await user.press(keyboard.result, "ps:bw")
    await world.reply(user, containing="Queued", since=since)
    await world.settle()
    assert _fetches(world, since) == 1
    # A double tap (replays) and another preset on the same photo: no new download.
    await user.press(keyboard.result, "ps:bw")
    await user.press(keyboard.result, "ps:invert")
    await world.reply(user, containing="Queued", since=since, count=2)
    await world.settle()
    assert len(await world.backend.jobs(6008)) == 2
    assert _fetches(world, since) == 1


def _fetches(world: World, since: int) -> int:
    return len([c for c in world.telegram.calls[since:] if c.method == "getFile"])
