"""The shared Telegram plumbing: rate budget in the real Redis, sender against the double."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import weakref
from collections.abc import AsyncIterator
from itertools import pairwise

import pytest
from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest
from aiogram.methods import DeleteMessage, EditMessageText, GetMe, SendMediaGroup, SendMessage
from aiogram.methods.base import Response
from aiogram.types import BufferedInputFile, InputMediaPhoto, Message
from redis.asyncio import Redis

from comfygram.settings import ConfigError, Settings
from comfygram.telegram import (
    MessageGone,
    RateBudget,
    TelegramSender,
    TelegramUnavailable,
    UserBlocked,
    create_bot,
    message_weight,
)
from tests import images
from tests.conftest import REDIS_URL
from tests.doubles.telegram import TEST_BOT_TOKEN, TelegramDouble

CHAT = 5151
OTHER_CHAT = 6262
EDIT_INTERVAL = 0.2
# Lower bounds on measured gaps allow for timer and HTTP jitter; they never need an upper one.
SLACK = 0.06


@pytest.fixture
async def telegram() -> AsyncIterator[TelegramDouble]:
    async with TelegramDouble() as double:
        double.user(CHAT)
        double.user(OTHER_CHAT)
        yield double


async def close_bot(bot: Bot) -> None:
    # AiohttpSession.close() sleeps 250 ms for TLS shutdown; loopback HTTP needs none.
    session = bot.session._session  # type: ignore[attr-defined]
    if session is not None:
        await session.close()


@pytest.fixture
async def bots(telegram: TelegramDouble) -> AsyncIterator[list[Bot]]:
    """Two bots with the same token, as the bot process and a worker would have."""
    settings = Settings(_env_file=None, bot_token=TEST_BOT_TOKEN, telegram_api_url=telegram.url)
    made = [create_bot(settings), create_bot(settings)]
    yield made
    for bot in made:
        await close_bot(bot)


@pytest.fixture
async def other_redis() -> AsyncIterator[Redis]:
    """A second process's connection, with bytes replies this time."""
    client = Redis.from_url(REDIS_URL, decode_responses=False)
    yield client
    await client.aclose()


def budget(redis: Redis, prefix: str, **overrides: float) -> RateBudget:
    options = {"edit_interval": EDIT_INTERVAL, "chat_interval": 0.05, "global_rate": 25}
    options.update(overrides)
    return RateBudget(redis, prefix, **options)  # type: ignore[arg-type]


@pytest.fixture
def budgets(redis: Redis, other_redis: Redis, redis_prefix: str) -> list[RateBudget]:
    return [budget(redis, redis_prefix), budget(other_redis, redis_prefix)]


@pytest.fixture
def senders(bots: list[Bot], budgets: list[RateBudget]) -> list[TelegramSender]:
    return [TelegramSender(b, r, backoff=0.01) for b, r in zip(bots, budgets, strict=True)]


def gaps(times: list[float]) -> list[float]:
    ordered = sorted(times)
    return [b - a for a, b in pairwise(ordered)]


async def test_create_bot_needs_a_token_and_uses_the_api_url(telegram: TelegramDouble) -> None:
    with pytest.raises(ConfigError, match="BOT_TOKEN"):
        create_bot(Settings(_env_file=None, telegram_api_url=telegram.url))
    bot = create_bot(
        Settings(_env_file=None, bot_token=TEST_BOT_TOKEN, telegram_api_url=telegram.url + "/")
    )
    assert (await bot.get_me()).username == "comfygram_test_bot"
    assert bot.default.parse_mode == "HTML"
    await close_bot(bot)


async def test_edits_of_one_chat_are_spaced_across_processes(
    telegram: TelegramDouble, senders: list[TelegramSender]
) -> None:
    message = await senders[0].call(SendMessage(chat_id=CHAT, text="queued"), chat_id=CHAT)
    assert message is not None

    async def edit(sender: TelegramSender, label: str) -> None:
        for step in range(2):
            method = EditMessageText(
                chat_id=CHAT, message_id=message.message_id, text=f"{label} {step}"
            )
            await sender.call(method, chat_id=CHAT, edit=True)

    await asyncio.gather(edit(senders[0], "bot"), edit(senders[1], "worker"))
    edits = telegram.sent("editMessageText", chat_id=CHAT)
    assert len(edits) == 4 and all(c.ok for c in edits)
    assert min(gaps([c.at for c in edits])) >= EDIT_INTERVAL - SLACK


async def test_progress_edits_are_skipped_not_queued(
    telegram: TelegramDouble, senders: list[TelegramSender], budgets: list[RateBudget]
) -> None:
    message = await senders[0].call(SendMessage(chat_id=CHAT, text="0%"), chat_id=CHAT)
    assert message is not None
    await asyncio.sleep(0.06)  # past the chat interval of the send
    progress = EditMessageText(chat_id=CHAT, message_id=message.message_id, text="10%")
    assert await senders[0].edit_progress(progress, chat_id=CHAT) is not None

    later = EditMessageText(chat_id=CHAT, message_id=message.message_id, text="20%")
    assert await senders[1].edit_progress(later, chat_id=CHAT) is None
    assert await budgets[0].try_acquire_edit(CHAT) is False
    assert len(telegram.sent("editMessageText")) == 1  # the skipped edit never went out
    assert await budgets[1].try_acquire_edit(OTHER_CHAT) is True  # other chats are free

    await asyncio.sleep(EDIT_INTERVAL)
    assert await senders[1].edit_progress(later, chat_id=CHAT) is not None
    assert [c.params["text"] for c in telegram.sent("editMessageText")] == ["10%", "20%"]


async def test_pause_is_honoured_by_another_process(budgets: list[RateBudget]) -> None:
    first, second = budgets
    await first.pause(0.4, CHAT)
    started = time.monotonic()
    await second.acquire(OTHER_CHAT)
    assert time.monotonic() - started < 0.3  # a chat's pause holds only that chat
    await second.acquire(CHAT)
    assert time.monotonic() - started >= 0.4 - SLACK

    await first.pause(0.3)
    started = time.monotonic()
    await second.acquire(None)
    assert time.monotonic() - started >= 0.3 - SLACK


async def test_chat_interval_and_global_rate(redis: Redis, redis_prefix: str) -> None:
    strict = budget(redis, redis_prefix, chat_interval=0.15, global_rate=20)
    times: list[float] = []
    for _ in range(3):
        await strict.acquire(CHAT)
        times.append(time.monotonic())
    assert min(gaps(times)) >= 0.15 - SLACK

    times = []
    for chat in range(1, 6):  # five chats: only the global rate (one call per 50 ms) applies
        await strict.acquire(chat)
        times.append(time.monotonic())
    assert times[-1] - times[0] >= 4 * 0.05 - SLACK
    assert times[-1] - times[0] < 1


async def test_a_rate_that_does_not_divide_a_second_keeps_the_budget_working(
    redis: Redis, redis_prefix: str
) -> None:
    """At 30 calls a second a slot is 33.3 ms: calls queued for later slots still run."""
    thirty = budget(redis, redis_prefix, global_rate=30)
    times = []
    for chat in range(1, 8):  # seven chats at once: each waits for the next free slot
        await thirty.acquire(chat, edit=chat % 2 == 0)
        times.append(time.monotonic())
    assert times[-1] - times[0] >= 6 * 1 / 30 - SLACK


async def test_an_edit_waits_for_its_chats_turn_but_does_not_take_it(
    redis: Redis, redis_prefix: str
) -> None:
    """A progress edit just before the result must not hold the result up a chat interval.
    (At 30 calls a second a slot is 33.3 ms: every time the budget sets stays whole ms.)"""
    paced = budget(redis, redis_prefix, chat_interval=1.0, global_rate=30)
    await paced.acquire(CHAT, edit=True)
    started = time.monotonic()
    await paced.acquire(CHAT)  # the result: at once, not a chat interval later
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    await paced.acquire(CHAT, edit=True)  # after a message, an edit waits for the chat's turn
    assert time.monotonic() - started >= 1.0 - SLACK


async def test_retry_after_waits_then_succeeds(
    telegram: TelegramDouble, senders: list[TelegramSender]
) -> None:
    telegram.fail("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1)
    message = await senders[0].call(SendMessage(chat_id=CHAT, text="hi"), chat_id=CHAT)
    assert message is not None and message.text == "hi"
    first, second = telegram.sent("sendMessage")
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 1 - SLACK


async def test_edit_errors_become_decisions(
    telegram: TelegramDouble, senders: list[TelegramSender]
) -> None:
    sender = senders[0]
    sent = await sender.call(SendMessage(chat_id=CHAT, text="same"), chat_id=CHAT)
    assert sent is not None
    unchanged = EditMessageText(chat_id=CHAT, message_id=sent.message_id, text="same")
    assert await sender.call(unchanged, chat_id=CHAT, edit=True) is None

    await sender.call(DeleteMessage(chat_id=CHAT, message_id=sent.message_id), chat_id=CHAT)
    with pytest.raises(MessageGone):
        await sender.call(unchanged, chat_id=CHAT, edit=True)
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await sender.call(SendMessage(chat_id=CHAT, text="<b>oops"), chat_id=CHAT)

    telegram.block(CHAT)
    with pytest.raises(UserBlocked, match="blocked"):
        await sender.call(SendMessage(chat_id=CHAT, text="hello?"), chat_id=CHAT)
    with pytest.raises(UserBlocked, match="chat not found"):
        await sender.call(SendMessage(chat_id=999, text="hello?"), chat_id=999)


async def test_server_errors_and_dropped_connections_are_retried(
    telegram: TelegramDouble, senders: list[TelegramSender], caplog: pytest.LogCaptureFixture
) -> None:
    sender = senders[0]
    caplog.set_level(logging.DEBUG)
    telegram.fail("sendMessage", 500, "Internal Server Error", times=2)
    assert await sender.call(SendMessage(chat_id=CHAT, text="a"), chat_id=CHAT) is not None
    assert [c.status for c in telegram.sent("sendMessage")] == [500, 500, 200]

    telegram.drop_connections("sendMessage")
    assert await sender.call(SendMessage(chat_id=CHAT, text="b"), chat_id=CHAT) is not None
    assert [c.dropped for c in telegram.sent("sendMessage")[3:]] == [True, False]

    telegram.fail("getMe", 502, "Bad Gateway", times=10)
    with pytest.raises(TelegramUnavailable, match="getMe failed 5 times") as gave_up:
        await sender.call(GetMe(), chat_id=None)
    assert len(telegram.sent("getMe")) == 5
    assert TEST_BOT_TOKEN not in str(gave_up.value)
    assert TEST_BOT_TOKEN not in caplog.text


async def test_flood_on_a_progress_edit_pauses_the_chat(
    telegram: TelegramDouble, senders: list[TelegramSender], budgets: list[RateBudget]
) -> None:
    sent = await senders[0].call(SendMessage(chat_id=CHAT, text="0%"), chat_id=CHAT)
    assert sent is not None
    await asyncio.sleep(0.06)
    telegram.fail("editMessageText", 429, "Too Many Requests: retry after 5", retry_after=5)
    edit = EditMessageText(chat_id=CHAT, message_id=sent.message_id, text="5%")
    started = time.monotonic()
    assert await senders[0].edit_progress(edit, chat_id=CHAT) is None
    assert time.monotonic() - started < 0.5  # skipped, not waited out
    # Past the edit interval, the other process still may not touch the chat: it is paused.
    await asyncio.sleep(EDIT_INTERVAL)
    assert await budgets[1].try_acquire_edit(CHAT) is False
    assert await budgets[1].try_acquire_edit(OTHER_CHAT) is True


async def test_the_worker_takes_a_status_message_after_the_bots_edit_in_flight(
    telegram: TelegramDouble, senders: list[TelegramSender]
) -> None:
    bot, worker = senders  # two processes: their own connections, one Redis
    status = await bot.call(SendMessage(chat_id=CHAT, text="Queued: position 2"), chat_id=CHAT)
    assert status is not None
    message_id = status.message_id

    def edit(text: str) -> EditMessageText:
        return EditMessageText(chat_id=CHAT, message_id=message_id, text=text)

    async with bot.handover.bot_edit(CHAT, message_id) as ours:
        assert ours
        # The job starts running while the bot's "queued" edit is still on its way.
        taking = asyncio.create_task(worker.handover.take(CHAT, message_id))
        await asyncio.sleep(0.3)
        assert not taking.done()  # the worker waits the bot's edit out
        await bot.call(edit("Queued: position 1"), chat_id=CHAT, edit=True)
    await asyncio.wait_for(taking, 5)
    await worker.call(edit("Processing 10%"), chat_id=CHAT, edit=True)

    # From now on the bot leaves the message alone.
    async with bot.handover.bot_edit(CHAT, message_id) as ours:
        assert not ours
    assert telegram.message(CHAT, message_id).text == "Processing 10%"
    # Taking it again (a retry, another worker) does not wait for anything.
    await asyncio.wait_for(worker.handover.take(CHAT, message_id), 0.5)


async def test_two_bot_processes_never_edit_one_status_message_at_once(
    senders: list[TelegramSender],
) -> None:
    first, second = senders
    async with first.handover.bot_edit(CHAT, 77) as ours:
        assert ours
        async with second.handover.bot_edit(CHAT, 77) as theirs:
            assert not theirs  # skipped this round; the next refresh tries again
    async with second.handover.bot_edit(CHAT, 77) as theirs:
        assert theirs


async def test_an_album_weighs_its_items_in_the_budget(
    telegram: TelegramDouble, redis: Redis, redis_prefix: str, bots: list[Bot]
) -> None:
    """Telegram's flood control counts an album as its items (the double does too): after an
    album of 3, the chat's next message waits 3 chat intervals, and no 429 comes back."""
    interval = 0.3
    telegram.flood_limit(messages=3, per_seconds=3 * interval - SLACK, retry_after=5)
    sender = TelegramSender(bots[0], budget(redis, redis_prefix, chat_interval=interval))
    photo = images.jpeg(32, 24)
    album = SendMediaGroup(
        chat_id=CHAT,
        media=[InputMediaPhoto(media=BufferedInputFile(photo, f"{n}.jpg")) for n in range(3)],
    )
    assert message_weight(album) == 3
    assert message_weight(SendMessage(chat_id=CHAT, text="x")) == 1
    sent = await sender.call(album, chat_id=CHAT)
    assert sent is not None and len(sent) == 3
    await sender.call(SendMessage(chat_id=CHAT, text="buttons"), chat_id=CHAT)
    first, second = telegram.sent(chat_id=CHAT)
    assert (first.status, second.status) == (200, 200)  # never flood-limited
    assert second.at - first.at >= 3 * interval - SLACK


async def test_the_class_an_answer_is_read_into_outlives_garbage_collection(
    bots: list[Bot],
) -> None:
    """aiogram reads each answer into Response[T], which pydantic caches weakly: without a
    reference kept, every collection dropped it and the next answer built it again."""
    await bots[0](SendMessage(chat_id=CHAT, text="hello"))
    answer_class = weakref.ref(Response[Message])
    gc.collect()
    assert answer_class() is not None
    assert Response[Message] is answer_class()
