"""Webhook mode: Telegram (the double) posts updates to the backend's POST /webhook with the
secret header; the backend answers at once and runs the bot's dispatcher in the background."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from comfygram.settings import Settings
from tests import images
from tests.bot_helpers import World, fast_chat_pace, webhook_world  # noqa: F401
from tests.conftest import WEBHOOK_SECRET

pytestmark = pytest.mark.usefixtures("fast_chat_pace")


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    async with webhook_world(settings) as running:
        yield running


async def test_webhook_is_set_with_the_secret_and_only_the_updates_used(world: World):
    webhook = world.telegram.webhook
    assert webhook is not None
    assert webhook["url"] == f"{world.settings.backend_url}/webhook"
    assert webhook["secret_token"] == WEBHOOK_SECRET
    assert sorted(webhook["allowed_updates"]) == [
        "callback_query",
        "message",
        "my_chat_member",
        "pre_checkout_query",
    ]
    await world.telegram.wait_for(
        "setMyCommands", predicate=lambda c: c.params.get("language_code") == "ru"
    )
    assert {c["command"] for c in world.telegram.commands(language_code="ru")} >= {"buy", "lang"}


async def test_the_journey_through_the_webhook(world: World):
    user = world.user(6001)
    await user.send_command("start")
    await world.reply(user, containing="👋")
    await user.send_photo(images.jpeg())
    keyboard = await world.reply(user, containing="Nice photo")
    await user.press(keyboard.result, "ps:bw")
    status = await world.reply(user, containing="Queued: position 1")
    await world.settle()
    (job,) = await world.backend.jobs(6001)
    assert job.status_message_id == status.result["message_id"]
    assert (await world.backend.user(6001)).balance == 3 - job.price
    # Every delivery got its 200 at the first attempt.
    assert {d.status for d in world.telegram.webhook_deliveries} == {200}


async def test_a_retried_update_is_handled_once(world: World):
    user = world.user(6002)
    await user.send_command("start")
    await world.reply(user, containing="👋")
    await user.send_photo(images.png())
    keyboard = await world.reply(user, containing="Nice photo")
    await user.press(keyboard.result, "ps:bw")
    await world.reply(user, containing="Queued")
    await user.resend()  # Telegram delivers the same button press again
    await user.resend()
    await world.settle()
    assert len(await world.backend.jobs(6002)) == 1
    replies = world.telegram.sent("sendMessage", 6002)
    assert len([c for c in replies if "Queued" in c.params["text"]]) == 1
    assert len(world.telegram.sent("answerCallbackQuery")) == 1


async def test_wrong_or_missing_secret_is_refused(world: World):
    update = {"update_id": 1, "message": {"message_id": 1, "date": 0, "chat": {"id": 1}}}
    async with httpx.AsyncClient(base_url=world.settings.backend_url) as client:
        for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
            response = await client.post("/webhook", json=update, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"
        right = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
        for body in (b"not json", b"[1]", b'{"update_id": "x"}', b'{"message": {}}'):
            response = await client.post("/webhook", content=body, headers=right)
            assert response.status_code == 400, body
            assert response.json()["error"]["code"] == "bad_update"
    assert world.telegram.sent("sendMessage") == []
