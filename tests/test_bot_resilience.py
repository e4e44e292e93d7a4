"""The bot when the backend is away or slow: the user hears "try again in a minute", nothing is
charged twice when they do, and a payment Telegram took is credited once the backend is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from comfygram.bot import BotRuntime
from comfygram.settings import Settings
from tests import images
from tests.bot_helpers import (  # noqa: F401
    FlakyBackend,
    World,
    bot_settings,
    fast_chat_pace,
    polling_world,
)
from tests.doubles.telegram import TelegramDouble
from tests.redis_server import RedisServer

pytestmark = pytest.mark.usefixtures("fast_chat_pace")


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@pytest.fixture
def flaky() -> FlakyBackend:
    return FlakyBackend()


@pytest.fixture
async def world(settings: Settings, flaky: FlakyBackend) -> AsyncIterator[World]:
    async with polling_world(settings, transport=flaky) as running:
        yield running


async def test_backend_down_means_try_again_in_a_minute(world: World, flaky: FlakyBackend):
    user = world.user(7001)
    await user.send_command("start")
    await world.reply(user, containing="👋")
    flaky.down("/api/users/register")
    await user.send_command("balance")
    await world.reply(user, containing="try again in a minute")
    await user.send_command("balance")
    await world.reply(user, containing="Credits on your balance")


async def test_a_lost_answer_then_a_retry_charges_once(world: World, flaky: FlakyBackend):
    user = world.user(7002)
    await user.send_command("start")
    await world.reply(user, containing="👋")
    await user.send_photo(images.jpeg())
    keyboard = await world.reply(user, containing="Nice photo")
    # The backend creates and charges the job, but its answer never reaches the bot.
    flaky.lose_answer("/api/jobs/create")
    await user.press(keyboard.result, "ps:bw")
    await world.reply(user, containing="try again in a minute")
    (job,) = await world.backend.jobs(7002)
    assert (await world.backend.user(7002)).balance == 3 - job.price
    # The user presses the same button again: the same job, no second charge.
    await user.press(keyboard.result, "ps:bw")
    await world.reply(user, containing="Queued: position")
    await world.settle()
    assert [j.id for j in await world.backend.jobs(7002)] == [job.id]
    assert (await world.backend.user(7002)).balance == 3 - job.price
    assert (await world.backend.job(job.id)).status_message_id is not None


async def test_a_payment_is_credited_when_the_backend_comes_back(world: World, flaky: FlakyBackend):
    user = world.user(7003)
    await user.send_command("start")
    await world.reply(user, containing="👋")
    await user.send_command("buy")
    offer = await world.reply(user, containing="Choose a package")
    await user.press(offer.result, "pkg:medium")
    (invoice,) = await world.telegram.wait_for("sendInvoice", chat_id=7003)
    query = await user.pre_checkout(invoice)
    assert (await user.pre_checkout_answer(query))["ok"] is True
    flaky.down("/api/payments/confirm", times=3)
    await user.successful_payment(invoice, "charge-7003")
    await world.reply(user, containing="Payment received")
    thanks = await world.reply(user, containing="Thank you", timeout=15)
    assert "50 credits added. Balance: <b>53</b>" in thanks.params["text"]
    assert (await world.backend.user(7003)).balance == 53


async def test_pre_checkout_is_refused_when_the_backend_is_down(world: World, flaky: FlakyBackend):
    user = world.user(7004)
    await user.send_command("start")
    await world.reply(user, containing="👋")
    await user.send_command("buy")
    offer = await world.reply(user, containing="Choose a package")
    await user.press(offer.result, "pkg:small")
    (invoice,) = await world.telegram.wait_for("sendInvoice", chat_id=7004)
    flaky.down("/api/payments/precheck")
    query = await user.pre_checkout(invoice)
    answer = await user.pre_checkout_answer(query)
    assert answer["ok"] is False and "Nothing was charged" in answer["error_message"]


async def test_redis_down_is_a_warning_per_update_and_the_bot_carries_on(
    settings: Settings, tmp_path, caplog: pytest.LogCaptureFixture
):
    server = RedisServer(tmp_path)
    server.start()
    try:
        async with polling_world(settings, redis_url=server.url) as world:
            user = world.user(7005)
            await user.send_command("start")
            await world.reply(user, containing="👋")
            server.stop()
            caplog.clear()
            await user.send_command("balance")
            deadline = asyncio.get_running_loop().time() + 15
            while not [r for r in caplog.records if "Redis unavailable" in r.getMessage()]:
                assert asyncio.get_running_loop().time() < deadline, caplog.text
                await asyncio.sleep(0.1)
            (warning,) = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
            assert warning.levelname == "WARNING" and warning.exc_info is None
            assert "REDIS_URL" in warning.getMessage()
            assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
            server.start()  # back: the next message is answered
            since = world.mark()
            await user.send_command("balance")
            await world.reply(user, containing="Credits on your balance", since=since, timeout=20)
    finally:
        server.stop()


async def test_a_stop_that_comes_before_polling_still_ends_it(settings: Settings) -> None:
    """`comfygram run` may be told to stop before the bot's task has had its first turn."""
    async with TelegramDouble() as telegram:
        runtime = BotRuntime(bot_settings(settings, telegram, "http://127.0.0.1:9"))
        await runtime.stop()
        await asyncio.wait_for(runtime.run_polling(handle_signals=False), 5)
    assert not telegram.sent("getMe")
