"""The bot's user journey, end to end: the bot polls the Telegram double and talks to the real
backend (uvicorn on loopback) over HTTP; real Redis. No worker runs, so jobs stay queued."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from comfygram.api import Job
from comfygram.logs import _JobIdFilter
from comfygram.settings import Settings
from comfygram.telegram import create_bot
from tests import images
from tests.bot_helpers import ADMIN_ID, World, fast_chat_pace, polling_world  # noqa: F401
from tests.doubles.telegram import Call, UserDriver

pytestmark = pytest.mark.usefixtures("fast_chat_pace")


@pytest.fixture
def database_url(tmp_path) -> str:
    """The bot's tests run on SQLite only: the backend's own tests cover both databases."""
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    async with polling_world(settings) as running:
        yield running


async def test_start_registers_and_greets(world: World):
    user = world.user(5001, first_name="Ann <3")
    await user.send_command("start", "ref_campaign1")
    greeting = await world.reply(user, containing="Ann &lt;3")
    assert "3" in greeting.params["text"]  # the signup bonus
    menu = greeting.params["reply_markup"]["keyboard"]
    assert [b["text"] for row in menu for b in row] == [
        "🎨 Presets",
        "💎 Balance",
        "💳 Top up",
        "❓ Help",
    ]
    account = await world.backend.user(5001)
    assert account.balance == 3 and account.first_name == "Ann <3"


async def test_photo_then_preset_creates_the_job(world: World):
    user = world.user(5002)
    await user.send_command("start")
    await world.reply(user, containing="Hi")
    await user.send_photo(images.jpeg())
    keyboard = await world.reply(user, containing="Nice photo")
    buttons = [b for row in keyboard.params["reply_markup"]["inline_keyboard"] for b in row]
    # Only available presets, cheapest first, each with its price; paged six at a time.
    assert buttons[0]["callback_data"].startswith("ps:") and buttons[0]["text"].endswith("1 💎")
    assert "ps:kontext" not in [b["callback_data"] for b in buttons]  # disabled preset
    await user.press(keyboard.result, "ps:bw")
    status = await world.reply(user, containing="Queued: position")
    await world.settle()
    jobs = await world.backend.jobs(5002)
    assert len(jobs) == 1
    job = jobs[0]
    assert job.preset == "bw" and job.status == "queued"
    assert job.status_chat_id == 5002
    assert job.status_message_id == status.result["message_id"]
    assert (await world.backend.user(5002)).balance == 3 - job.price


async def _started(world: World, telegram_id: int, **kwargs) -> UserDriver:
    user = world.user(telegram_id, **kwargs)
    await user.send_command("start")
    await world.reply(user, containing="👋")
    return user


async def _grant(world: World, telegram_id: int, credits: int) -> None:
    await world.backend.adjust_credits(
        telegram_id, credits, reason="tests", actor="tests", idempotency_key=f"t{telegram_id}"
    )


async def _second_page(world: World, user: UserDriver, keyboard: Call) -> None:
    """Turn the preset keyboard to its second page (the cheapest presets fill the first)."""
    since = world.mark()
    await user.press(keyboard.result, "pp:1")
    await world.reply(user, method="editMessageReplyMarkup", since=since)


async def test_prompt_preset_asks_for_the_text_first(world: World):
    user = await _started(world, 5003)
    await _grant(world, 5003, 20)
    await user.send_photo(images.png())
    keyboard = await world.reply(user, containing="Nice photo")
    await _second_page(world, user, keyboard)
    await user.press(keyboard.result, "ps:edit")
    await world.reply(user, containing="describe the edit")
    assert await world.backend.jobs(5003) == []
    await user.send_text("make it snowy")
    await world.reply(user, containing="Queued: position")
    (job,) = await world.backend.jobs(5003)
    assert (job.preset, job.prompt) == ("edit", "make it snowy")
    assert (await world.backend.user(5003)).balance == 23 - job.price


async def test_preset_first_then_photo(world: World):
    user = await _started(world, 5004)
    await user.send_text("🎨 Presets")  # the menu button
    keyboard = await world.reply(user, containing="then send me the photo")
    await user.press(keyboard.result, "ps:invert")
    await world.reply(user, containing="Now send me the photo")
    await user.send_document(images.png(), "picture.png", "image/png")
    await world.reply(user, containing="Queued: position")
    await world.settle()
    (job,) = await world.backend.jobs(5004)
    assert job.preset == "invert" and job.status_message_id is not None


async def test_not_enough_credits_says_how_many_and_offers_packages(world: World):
    user = await _started(world, 5005)  # 3 credits; "oil" costs 5
    await user.send_photo(images.jpeg())
    keyboard = await world.reply(user, containing="Nice photo")
    await _second_page(world, user, keyboard)
    await user.press(keyboard.result, "ps:oil")
    offer = await world.reply(user, containing="Not enough credits")
    assert "you need 2 more (you have 3)" in offer.params["text"]
    packages = [
        b["callback_data"] for row in offer.params["reply_markup"]["inline_keyboard"] for b in row
    ]
    assert packages == ["pkg:small", "pkg:medium", "pkg:large"]
    assert await world.backend.jobs(5005) == []
    assert (await world.backend.user(5005)).balance == 3


async def test_double_tap_on_a_preset_charges_once(world: World):
    user = await _started(world, 5006)
    await user.send_photo(images.jpeg())
    keyboard = await world.reply(user, containing="Nice photo")
    await user.press(keyboard.result, "ps:bw")
    await user.press(keyboard.result, "ps:bw")
    await world.reply(user, containing="Queued: position")
    await world.telegram.wait_for("answerCallbackQuery", count=2)
    (job,) = await world.backend.jobs(5006)
    assert (await world.backend.user(5006)).balance == 3 - job.price
    statuses = [c for c in world.telegram.sent("sendMessage", 5006) if "Queued" in c.params["text"]]
    assert len(statuses) == 1


async def _invoice(world: World, user: UserDriver, package: str = "small") -> Call:
    since = world.mark()
    await user.send_command("buy")
    offer = await world.reply(user, containing="Choose a package", since=since)
    await user.press(offer.result, f"pkg:{package}")
    (invoice,) = await world.telegram.wait_for("sendInvoice", chat_id=user.chat_id, since=since)
    return invoice


async def test_stars_top_up_credits_once_and_thanks_once(world: World):
    user = await _started(world, 5007)
    invoice = await _invoice(world, user)
    assert invoice.ok
    assert invoice.params["currency"] == "XTR"
    assert invoice.params["prices"] == [{"label": "10 credits", "amount": 50}]
    assert not invoice.params.get("provider_token")

    query_id = await user.pre_checkout(invoice)
    assert await user.pre_checkout_answer(query_id) == {"ok": True, "error_message": None}

    await user.successful_payment(invoice, "charge-5007")
    await world.reply(user, containing="Thank you")
    await user.resend()  # the very same update again (same update_id)
    await user.successful_payment(invoice, "charge-5007")  # redelivered as a new update
    await world.settle()
    assert (await world.backend.user(5007)).balance == 3 + 10
    thanks = [
        c for c in world.telegram.sent("sendMessage", 5007) if "Thank you" in c.params["text"]
    ]
    assert len(thanks) == 1
    assert "Balance: <b>13</b>" in thanks[0].params["text"]


async def test_tampered_pre_checkout_is_refused_with_a_reason(world: World):
    user = await _started(world, 5008)
    invoice = await _invoice(world, user)
    tampered = replace(invoice, params={**invoice.params, "prices": [{"label": "x", "amount": 1}]})
    query_id = await user.pre_checkout(tampered)
    answer = await user.pre_checkout_answer(query_id)
    assert answer["ok"] is False
    assert "out of date" in answer["error_message"]
    # Paid already: a second pre-checkout for the same invoice is refused too.
    await user.successful_payment(invoice, "charge-5008")
    await world.reply(user, containing="Thank you")
    again = await user.pre_checkout(invoice)
    assert "already been paid" in (await user.pre_checkout_answer(again))["error_message"]


async def test_a_flood_of_photos_is_throttled_and_never_double_charged(world: World):
    user = await _started(world, 5009)
    await _grant(world, 5009, 7)  # 10 credits: the limit is the 3 active jobs per user
    since = world.mark()
    for _ in range(30):
        await user.send_photo(images.png())
    await world.settle()
    sent = world.telegram.sent("sendMessage", 5009)[-12:]
    keyboards = [c for c in sent if "Nice photo" in c.params["text"]]
    notices = [c for c in sent if "a lot at once" in c.params["text"]]
    assert 1 <= len(keyboards) <= 7, len(keyboards)  # a burst of 5, refilled at 1 per second
    assert len(notices) == 1
    assert all(c.ok for c in world.telegram.calls[since:] if c.done)
    # The user presses a preset on every keyboard they got, twice.
    for keyboard in keyboards:
        await user.press(keyboard.result, "ps:bw")
        await user.press(keyboard.result, "ps:bw")
    await world.settle()
    jobs = await world.backend.jobs(5009)
    assert len(jobs) == min(3, len(keyboards))
    assert (await world.backend.user(5009)).balance == 10 - sum(j.price for j in jobs)
    statuses = [c for c in world.telegram.sent("sendMessage", 5009) if "Queued" in c.params["text"]]
    assert len(statuses) == len(jobs)
    if len(keyboards) > 3:
        await world.reply(user, containing="already have photos in progress")


async def test_every_kind_of_message_gets_an_answer(world: World):
    senders = {
        "sticker": lambda u: u.send_sticker(),
        "voice": lambda u: u.send_voice(),
        "location": lambda u: u.send_location(),
        "video": lambda u: u._extra(
            {
                "video": {
                    "file_id": "v1",
                    "file_unique_id": "v1u",
                    "width": 1,
                    "height": 1,
                    "duration": 1,
                }
            }
        ),
        "pdf": lambda u: u.send_document(b"%PDF-1.4 hello", "doc.pdf", "application/pdf"),
        "gif": lambda u: u.send_document(images.gif(), "anim.gif", "image/gif"),
        "huge image": lambda u: u.send_document(
            b"0" * (world.settings.max_upload_bytes + 1), "big.png", "image/png"
        ),
        "text": lambda u: u.send_text("hello there"),
        "unknown command": lambda u: u.send_command("frobnicate"),
        "admin command": lambda u: u.send_command("stats"),
    }
    expected = {
        "sticker": "Nice sticker",
        "voice": "can't listen",
        "location": "can't do anything with that",
        "video": "Videos are beyond me",
        "pdf": "only work with images",
        "gif": "only work with images",
        "huge image": "too big",
        "text": "Send me a photo",
        "unknown command": "don't know that command",
        "admin command": "don't know that command",
    }
    users = {}
    for number, (kind, send) in enumerate(senders.items()):
        users[kind] = world.user(5100 + number)
        await send(users[kind])
    for kind, user in users.items():
        reply = await world.reply(user)
        assert expected[kind] in reply.params["text"], (kind, reply.params["text"])


async def _queued_job(world: World, user: UserDriver, preset: str = "bw") -> tuple[Job, Call]:
    since = world.mark()
    await user.send_photo(images.jpeg())
    keyboard = await world.reply(user, containing="Nice photo", since=since)
    await user.press(keyboard.result, f"ps:{preset}")
    status = await world.reply(user, containing="Queued", since=since)
    await world.settle()
    jobs = [j for j in await world.backend.jobs(user.id) if j.status == "queued"]
    return jobs[0], status


async def test_cancel_refunds_a_queued_job(world: World):
    user = await _started(world, 5010)
    job, status = await _queued_job(world, user)
    assert (await world.backend.user(5010)).balance == 3 - job.price
    await user.send_command("cancel")
    done = await world.reply(user, containing="Cancelled.")
    assert job.price == 1
    assert "Cancelled. 1 credit is back. Balance: <b>3</b>" in done.params["text"]
    assert (await world.backend.job(job.id)).status == "cancelled"
    assert (await world.backend.user(5010)).balance == 3
    edited = await world.reply(user, method="editMessageText", containing="Cancelled")
    assert edited.params["message_id"] == status.result["message_id"]
    await user.send_command("cancel")
    await world.reply(user, containing="Nothing to cancel")


async def test_status_message_follows_the_queue_and_waits_out_429s(world: World):
    first = await _started(world, 5011)
    second = await _started(world, 5012)
    job1, _ = await _queued_job(world, first)
    _, status2 = await _queued_job(world, second)
    assert "position 2" in status2.params["text"]
    # Telegram floods the second chat's edits with 429 retry_after=1, twice.
    world.telegram.fail(
        "editMessageText",
        429,
        "Too Many Requests: retry after 1",
        retry_after=1,
        times=2,
        chat_id=5012,
    )
    since = world.mark()
    await world.backend.set_status(job1.id, "cancelled")  # job 2 moves up
    edits = await world.telegram.wait_for(
        "editMessageText", chat_id=5012, count=3, since=since, timeout=15
    )
    assert [c.status for c in edits[:3]] == [429, 429, 200]
    assert "position 1" in edits[2].params["text"]
    assert edits[2].params["message_id"] == status2.result["message_id"]
    # Each retry came after Telegram's retry_after, not at once.
    assert edits[1].at - edits[0].at >= 0.95 and edits[2].at - edits[1].at >= 0.95
    await world.settle()
    assert len(world.telegram.sent("editMessageText", 5012)) == 3  # no hammering afterwards


async def test_language_switch(world: World):
    user = await _started(world, 5013)
    await user.send_command("lang")
    choice = await world.reply(user, containing="Choose your language")
    await user.press(choice.result, "lang:ru")
    menu = await world.reply(user, containing="Вот меню")
    labels = [b["text"] for row in menu.params["reply_markup"]["keyboard"] for b in row]
    assert labels[0] == "🎨 Пресеты"
    assert (await world.backend.user(5013)).language_code == "ru"
    await user.send_text("💎 Баланс")
    await world.reply(user, containing="Кредитов на балансе")
    await user.send_command("help")
    await world.reply(user, containing="Как это работает")


async def test_admin_commands_for_admins_only(world: World):
    admin = await _started(world, ADMIN_ID)
    other = await _started(world, 5014)
    await admin.send_command("stats")
    stats = await world.reply(admin, containing="Stats")
    assert "Users: 2" in stats.params["text"]
    since = world.mark()
    await admin.send_command("grant", "5014 5 goodwill gesture")
    await world.reply(admin, containing="5 credits for 5014. Balance: 8", since=since)
    await admin.resend()  # the same update again: one ledger entry
    await world.settle()
    assert (await world.backend.user(5014)).balance == 8
    await admin.send_command("user", "5014")
    await world.reply(admin, containing="User 5014")
    await admin.send_command("grant", "5014 lots")
    await world.reply(admin, containing="Usage: /grant")

    for command, args in (("stats", ""), ("grant", "5014 100 please"), ("user", "5014")):
        since = world.mark()
        await other.send_command(command, args)
        reply = await world.reply(other, since=since)
        assert "don't know that command" in reply.params["text"]
    assert (await world.backend.user(5014)).balance == 8
    commands = {c["command"] for c in world.telegram.commands()}
    assert "stats" not in commands and {"start", "buy", "paysupport", "terms"} <= commands
    ru = {c["command"]: c["description"] for c in world.telegram.commands(language_code="ru")}
    assert ru["balance"] == "Ваши кредиты"


async def test_result_buttons_another_preset_and_top_up(world: World):
    user = await _started(world, 5015)
    job, _ = await _queued_job(world, user, "invert")
    # What the worker sends with the result: a message with these two buttons.
    bot = create_bot(world.settings)
    try:
        markup = InlineKeyboardMarkup(
            inline_keyboard=[
                [InlineKeyboardButton(text="again", callback_data=f"again:{job.id}")],
                [InlineKeyboardButton(text="top up", callback_data="buy")],
            ]
        )
        result = await bot.send_message(5015, "result", reply_markup=markup)
    finally:
        await bot.session.close()
    await world.backend.set_status(job.id, "cancelled")
    since = world.mark()
    await user.press(result.model_dump(), "buy")
    await world.reply(user, containing="Choose a package", since=since)
    await user.press(result.model_dump(), f"again:{job.id}")
    keyboard = await world.reply(user, containing="Nice photo", since=since)
    await user.press(keyboard.result, "ps:bw")
    await world.reply(user, containing="Queued", since=since)
    new = [j for j in await world.backend.jobs(5015) if j.id != job.id]
    assert [j.preset for j in new] == ["bw"]


async def test_a_user_who_blocked_the_bot_is_marked(world: World):
    user = await _started(world, 5016)
    world.telegram.block(5016)
    await user.send_command("balance")
    await world.telegram.wait_for("sendMessage", chat_id=5016, predicate=lambda c: c.status == 403)
    await world.settle()
    assert (await world.backend.user(5016)).blocked_bot is True
    world.telegram.unblock(5016)
    await user.send_command("start")
    await world.reply(user, containing="👋", since=world.mark() - 5)
    await world.settle()
    assert (await world.backend.user(5016)).blocked_bot is False


async def test_the_bots_log_lines_about_a_job_carry_its_id(
    world: World, caplog: pytest.LogCaptureFixture
):
    caplog.handler.addFilter(_JobIdFilter())
    caplog.set_level(logging.INFO, logger="comfygram.bot")
    user = await _started(world, 5090)
    await user.send_photo(images.jpeg())
    keyboard = await world.reply(user, containing="Nice photo")
    await user.press(keyboard.result, "ps:invert")
    await world.reply(user, containing="Queued: position")
    (job,) = await world.backend.jobs(5090)
    tagged = [r for r in caplog.records if getattr(r, "job_id", None) == job.id]
    assert any(r.getMessage().endswith("created for user 5090, preset invert") for r in tagged)


async def test_any_message_from_a_user_marked_blocked_clears_the_mark(world: World):
    user = await _started(world, 5017)
    world.telegram.block(5017)
    await user.send_command("balance")
    await world.telegram.wait_for("sendMessage", chat_id=5017, predicate=lambda c: c.status == 403)
    await world.settle()
    assert (await world.backend.user(5017)).blocked_bot is True
    # One failed send, and then the user keeps chatting (not /start): they are reachable.
    world.telegram.unblock(5017)
    since = world.mark()
    await user.send_text("hello?")
    await world.reply(user, containing="Send me a photo", since=since)
    await world.settle()
    assert (await world.backend.user(5017)).blocked_bot is False


async def test_blocking_and_unblocking_the_bot_is_heard(world: World):
    user = await _started(world, 5018)
    assert await user.block_bot() is not None  # the bot subscribed to my_chat_member
    await world.settle()
    assert (await world.backend.user(5018)).blocked_bot is True
    assert not world.telegram.sent("sendMessage", 5018)[1:]  # nothing sent to a blocked chat
    await user.unblock_bot()
    await world.settle()
    assert (await world.backend.user(5018)).blocked_bot is False
