"""A user the operator blocked (admin panel) hears why the bot will not take their photo or
their payment; the bot polls the Telegram double and talks to the real backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import update

from comfygram.backend import db
from comfygram.backend.models import User
from comfygram.settings import Settings
from tests import images
from tests.bot_helpers import World, fast_chat_pace, polling_world  # noqa: F401
from tests.doubles.telegram import UserDriver

pytestmark = pytest.mark.usefixtures("fast_chat_pace")

BANNED_EN = "Your account is blocked"
BANNED_RU = "Ваш аккаунт заблокирован"


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    async with polling_world(settings) as running:
        yield running


async def _block(settings: Settings, telegram_id: int, banned: bool = True) -> None:
    engine = db.create_engine(settings.database_dsn)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                update(User).where(User.telegram_id == telegram_id).values(banned=banned)
            )
    finally:
        await engine.dispose()


async def _started(world: World, telegram_id: int, **kwargs) -> UserDriver:
    user = world.user(telegram_id, **kwargs)
    await user.send_command("start")
    await world.reply(user, containing="👋")
    return user


async def test_a_blocked_user_is_told_instead_of_charged(world: World, settings: Settings):
    user = await _started(world, 6001)
    await _block(settings, 6001)
    await user.send_photo(images.jpeg())
    keyboard = await world.reply(user, containing="Nice photo")
    await user.press(keyboard.result, "ps:bw")
    await world.reply(user, containing=BANNED_EN)
    assert await world.backend.jobs(6001) == []
    assert (await world.backend.user(6001)).balance == 3

    since = world.mark()
    await user.send_command("buy")
    offer = await world.reply(user, containing="Choose a package", since=since)
    await user.press(offer.result, "pkg:small")
    await world.reply(user, containing=BANNED_EN, since=since)
    assert not world.telegram.sent("sendInvoice", 6001)

    await _block(settings, 6001, banned=False)
    since = world.mark()
    await user.send_photo(images.jpeg())
    keyboard = await world.reply(user, containing="Nice photo", since=since)
    await user.press(keyboard.result, "ps:bw")
    await world.reply(user, containing="Queued: position", since=since)


async def test_the_blocked_text_is_in_russian_too(world: World, settings: Settings):
    user = await _started(world, 6002, language_code="ru")
    await _block(settings, 6002)
    await user.send_photo(images.jpeg())
    keyboard = await world.reply(user, containing="Отличное фото")
    await user.press(keyboard.result, "ps:bw")
    await world.reply(user, containing=BANNED_RU)


async def test_a_blocked_user_cannot_pay_an_older_invoice(world: World, settings: Settings):
    user = await _started(world, 6003)
    since = world.mark()
    await user.send_command("buy")
    offer = await world.reply(user, containing="Choose a package", since=since)
    await user.press(offer.result, "pkg:small")
    (invoice,) = await world.telegram.wait_for("sendInvoice", chat_id=user.chat_id, since=since)
    await _block(settings, 6003)
    query_id = await user.pre_checkout(invoice)
    answer = await user.pre_checkout_answer(query_id)
    assert answer["ok"] is False and BANNED_EN in answer["error_message"]
