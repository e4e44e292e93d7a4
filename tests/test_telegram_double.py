"""The Telegram double speaks the Bot API: driven here by aiogram's real Bot and Dispatcher."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from aiogram import Bot, Dispatcher
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import (
    BotCommand,
    BotCommandScopeAllPrivateChats,
    BufferedInputFile,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaDocument,
    InputMediaPhoto,
    InputMediaVideo,
    LabeledPrice,
    Message,
)
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from comfygram.settings import Settings
from comfygram.telegram import create_bot
from tests import images
from tests.doubles.telegram import TEST_BOT_TOKEN, TelegramDouble

USER_ID = 4242


@pytest.fixture
async def telegram() -> AsyncIterator[TelegramDouble]:
    async with TelegramDouble() as double:
        yield double


def make_bot(double: TelegramDouble, token: str = TEST_BOT_TOKEN) -> Bot:
    return create_bot(Settings(_env_file=None, bot_token=token, telegram_api_url=double.url))


async def close_bot(bot: Bot) -> None:
    # AiohttpSession.close() sleeps 250 ms for TLS shutdown; loopback HTTP needs none.
    session = bot.session._session  # type: ignore[attr-defined]
    if session is not None:
        await session.close()


@pytest.fixture
async def bot(telegram: TelegramDouble) -> AsyncIterator[Bot]:
    instance = make_bot(telegram)
    yield instance
    await close_bot(instance)


def keyboard(*data: str) -> InlineKeyboardMarkup:
    buttons = [InlineKeyboardButton(text=d.title(), callback_data=d) for d in data]
    return InlineKeyboardMarkup(inline_keyboard=[buttons])


class Receiver:
    """A tiny webhook endpoint on 127.0.0.1 that answers the statuses it is told to."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, Any], str | None]] = []
        self.port = 0

    async def _handle(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.received.append((body, request.headers.get("x-telegram-bot-api-secret-token")))
        return Response(status_code=self.statuses.pop(0) if self.statuses else 200)

    async def __aenter__(self) -> Receiver:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/webhook", self._handle, methods=["POST"])])
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server._serve([sock]))
        while not self.server.started:
            await asyncio.sleep(0.005)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        await self.task


async def test_get_me_wrong_token_and_unknown_method(telegram: TelegramDouble, bot: Bot) -> None:
    me = await bot.get_me()
    assert me.is_bot and me.id == 123456 and me.username == "comfygram_test_bot"

    stranger = make_bot(telegram, "654321:not-the-token")
    with pytest.raises(TelegramUnauthorizedError, match="Unauthorized"):
        await stranger.get_me()
    await close_bot(stranger)

    async with httpx.AsyncClient(base_url=telegram.url) as client:
        missing = await client.get(f"/bot{TEST_BOT_TOKEN}/sendTelepathy")
        case_insensitive = await client.get(f"/bot{TEST_BOT_TOKEN}/GETME")
    assert missing.status_code == 404
    assert missing.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
    assert case_insensitive.json()["result"]["id"] == 123456
    assert [c.status for c in telegram.calls] == [200, 401, 404, 200]


async def test_every_encoding_of_parameters(telegram: TelegramDouble) -> None:
    telegram.user(USER_ID)
    markup = {"inline_keyboard": [[{"text": "Go", "callback_data": "go"}]]}
    base = f"/bot{TEST_BOT_TOKEN}/sendMessage"
    async with httpx.AsyncClient(base_url=telegram.url) as client:
        as_query = await client.get(base, params={"chat_id": USER_ID, "text": "q"})
        as_json = await client.post(
            base, json={"chat_id": str(USER_ID), "text": "j", "reply_markup": markup}
        )
        as_form = await client.post(
            base, data={"chat_id": USER_ID, "text": "f", "reply_markup": json.dumps(markup)}
        )
        bad_json = await client.post(
            base, data={"chat_id": USER_ID, "text": "x", "reply_markup": "{nope"}
        )
    assert [r.status_code for r in (as_query, as_json, as_form)] == [200, 200, 200]
    assert bad_json.status_code == 400
    assert as_form.json()["result"]["reply_markup"] == markup
    calls = telegram.sent("sendMessage", chat_id=USER_ID)
    assert [c.params["text"] for c in calls] == ["q", "j", "f"]
    assert calls[2].params["reply_markup"] == markup  # decoded from the form field


async def test_send_edit_not_modified_and_delete(telegram: TelegramDouble, bot: Bot) -> None:
    telegram.user(USER_ID)
    sent = await bot.send_message(
        USER_ID, "<b>Queued</b> &amp; waiting", reply_markup=keyboard("x")
    )
    assert sent.text == "Queued & waiting"
    assert sent.entities is not None and sent.entities[0].type == "bold"
    assert sent.reply_markup is not None and sent.from_user is not None

    edited = await bot.edit_message_text(
        "<b>Running</b>", chat_id=USER_ID, message_id=sent.message_id, reply_markup=keyboard("x")
    )
    assert isinstance(edited, Message) and edited.edit_date is not None
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text(
            "<b>Running</b>",
            chat_id=USER_ID,
            message_id=sent.message_id,
            reply_markup=keyboard("x"),
        )
    await bot.edit_message_reply_markup(
        chat_id=USER_ID, message_id=sent.message_id, reply_markup=keyboard("x", "y")
    )
    assert telegram.message(USER_ID, sent.message_id).callback_data == ["x", "y"]
    # An edit without reply_markup drops the keyboard, as Telegram does.
    await bot.edit_message_text("<b>Running</b>", chat_id=USER_ID, message_id=sent.message_id)
    state = telegram.message(USER_ID, sent.message_id)
    assert (state.text, state.reply_markup, state.edits) == ("Running", None, 3)

    assert await bot.delete_message(USER_ID, sent.message_id) is True
    assert telegram.messages(USER_ID)[0].deleted
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("again", chat_id=USER_ID, message_id=sent.message_id)
    with pytest.raises(TelegramBadRequest, match="message to delete not found"):
        await bot.delete_message(USER_ID, sent.message_id)
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.send_message(USER_ID, "<b>unclosed")
    with pytest.raises(TelegramBadRequest, match='Unsupported start tag "br"'):
        await bot.send_message(USER_ID, "line<br>line")
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(777, "nobody there")


async def test_send_photo_uploads_bytes_and_download_round_trip(
    telegram: TelegramDouble, bot: Bot
) -> None:
    telegram.user(USER_ID)
    png = images.png(1000, 700)
    message = await bot.send_photo(
        USER_ID, BufferedInputFile(png, "result.png"), caption="<i>Done</i>"
    )
    call = telegram.sent("sendPhoto")[0]
    assert call.files["photo"] == png and call.params["photo"].startswith("attach://")
    assert message.caption == "Done" and message.photo is not None
    assert [(p.width, p.height) for p in message.photo][-1] == (1000, 700)
    assert len(message.photo) == 4  # 90, 320 and 800 px thumbnails, then the full size
    assert telegram.messages(USER_ID)[0].photo == png

    largest = await bot.get_file(message.photo[-1].file_id)
    assert largest.file_path is not None
    downloaded = await bot.download_file(largest.file_path)
    assert downloaded is not None
    with Image.open(io.BytesIO(downloaded.getvalue())) as image:
        assert (image.format, image.size) == ("JPEG", (1000, 700))  # recompressed

    recaptioned = await bot.edit_message_caption(
        chat_id=USER_ID,
        message_id=message.message_id,
        caption="Done!",
        reply_markup=keyboard("more"),
    )
    assert isinstance(recaptioned, Message) and recaptioned.caption == "Done!"
    assert telegram.messages(USER_ID)[0].callback_data == ["more"]
    with pytest.raises(TelegramBadRequest, match="there is no text in the message to edit"):
        await bot.edit_message_text("text", chat_id=USER_ID, message_id=message.message_id)

    again = await bot.send_photo(USER_ID, message.photo[-1].file_id)  # resend by file_id
    assert again.photo is not None and again.photo[-1].file_id == message.photo[-1].file_id
    with pytest.raises(TelegramBadRequest, match="IMAGE_PROCESS_FAILED"):
        await bot.send_photo(USER_ID, BufferedInputFile(b"not an image", "x.png"))

    document = await bot.send_document(USER_ID, BufferedInputFile(png, "full.png"))
    assert document.document is not None and document.document.file_name == "full.png"
    assert telegram.sent("sendDocument")[0].files["document"] == png
    assert await bot.send_chat_action(USER_ID, "upload_photo") is True


async def test_user_photo_is_downloadable(telegram: TelegramDouble, bot: Bot) -> None:
    user = telegram.user(USER_ID, first_name="Ann", language_code="ru")
    jpeg = images.jpeg(1200, 900)
    await user.send_photo(jpeg, caption="make it anime")
    [update] = await bot.get_updates(timeout=1)
    message = update.message
    assert message is not None and message.photo is not None
    assert message.from_user is not None and message.from_user.language_code == "ru"
    assert message.chat.id == USER_ID and message.chat.type == "private"
    assert [p.width for p in message.photo] == [90, 320, 800, 1200]
    file = await bot.get_file(message.photo[-1].file_id)
    assert file.file_path is not None and file.file_size == len(jpeg)
    downloaded = await bot.download_file(file.file_path)
    assert downloaded is not None and downloaded.getvalue() == jpeg
    with pytest.raises(TelegramBadRequest, match="invalid file_id"):
        await bot.get_file("no-such-file")


async def test_get_updates_long_polls_and_offset_confirms(
    telegram: TelegramDouble, bot: Bot
) -> None:
    user = telegram.user(USER_ID)
    started = time.monotonic()
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    while not telegram.sent("getUpdates"):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert not poll.done()
    await user.send_command("start", "ref42")
    updates = await poll
    assert time.monotonic() - started < 2  # woken by the update, not by the timeout
    [update] = updates
    assert update.message is not None and update.message.text == "/start ref42"
    assert update.message.entities is not None
    assert update.message.entities[0].type == "bot_command"

    # Not confirmed yet: the same update comes again; an offset past it confirms it.
    again = await bot.get_updates()
    assert [u.update_id for u in again] == [update.update_id]
    await user.send_text("second")
    following = await bot.get_updates(offset=update.update_id + 1)
    assert [u.message.text for u in following if u.message] == ["second"]
    assert await bot.get_updates(offset=following[-1].update_id + 1) == []

    # Only subscribed update types are created.
    await bot.get_updates(offset=following[-1].update_id + 1, allowed_updates=["message"])
    sent = await bot.send_message(USER_ID, "menu", reply_markup=keyboard("a"))
    await user.press(sent.model_dump(), "a")
    assert telegram.pending_updates == []


async def test_a_newer_poll_ends_a_waiting_one(telegram: TelegramDouble, bot: Bot) -> None:
    first = asyncio.create_task(bot.get_updates(timeout=5))
    while not telegram.sent("getUpdates"):
        await asyncio.sleep(0.01)
    await bot.get_updates(timeout=0)
    with pytest.raises(TelegramConflictError, match="terminated by other getUpdates"):
        await first


async def test_dispatcher_polling_round_trip(telegram: TelegramDouble, bot: Bot) -> None:
    dispatcher = Dispatcher()

    @dispatcher.message()
    async def echo(message: Message) -> None:
        await message.answer(f"echo: {message.text}")

    polling = asyncio.create_task(
        dispatcher.start_polling(
            bot, polling_timeout=1, handle_signals=False, close_bot_session=False
        )
    )
    user = telegram.user(USER_ID)
    await user.send_text("hello")
    [reply] = await telegram.wait_for("sendMessage", chat_id=USER_ID, timeout=5)
    assert reply.result["text"] == "echo: hello"
    assert [m.text for m in user.bot_messages()] == ["echo: hello"]
    await dispatcher.stop_polling()
    await polling


async def test_webhook_delivery_with_secret_and_retries(telegram: TelegramDouble, bot: Bot) -> None:
    user = telegram.user(USER_ID)
    async with Receiver(statuses=[500]) as receiver:
        url = f"http://127.0.0.1:{receiver.port}/webhook"
        await bot.set_webhook(url, secret_token="s3cret_token-1", drop_pending_updates=True)
        with pytest.raises(TelegramConflictError, match="webhook is active"):
            await bot.get_updates()

        message = await user.send_text("via webhook")  # returns after the first attempt
        while len(telegram.webhook_deliveries) < 2:  # the retry follows the 500
            await asyncio.sleep(0.01)
        (first, secret), (second, _) = receiver.received
        assert secret == "s3cret_token-1"
        assert first == second and first["message"]["text"] == message["text"]
        assert [d.status for d in telegram.webhook_deliveries] == [500, 200]
        info = await bot.get_webhook_info()
        assert info.url == url and info.pending_update_count == 0
        assert info.last_error_message is not None and "500" in info.last_error_message

        await user.resend()
        assert receiver.received[-1][0]["update_id"] == first["update_id"]
        await bot.delete_webhook()
    await user.send_text("polled")
    [update] = await bot.get_updates()
    assert update.message is not None and update.message.text == "polled"


async def test_buttons_and_callback_answers(telegram: TelegramDouble, bot: Bot) -> None:
    user = telegram.user(USER_ID)
    sent = await bot.send_message(USER_ID, "Pick", reply_markup=keyboard("anime", "oil"))
    with pytest.raises(AssertionError, match="no button"):
        await user.press(sent.model_dump(by_alias=True), "sketch")
    query = await user.press(user.bot_messages()[0], "oil")
    [update] = await bot.get_updates()
    assert update.callback_query is not None and update.callback_query.data == "oil"
    assert update.callback_query.message is not None
    assert update.callback_query.message.message_id == sent.message_id
    assert await bot.answer_callback_query(query["id"], text="OK") is True
    assert telegram.callback_answers[query["id"]]["text"] == "OK"
    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await bot.answer_callback_query(query["id"])


async def test_stars_invoice_pre_checkout_and_payment(telegram: TelegramDouble, bot: Bot) -> None:
    user = telegram.user(USER_ID)
    sent = await bot.send_invoice(
        USER_ID,
        title="50 credits",
        description="Top up",
        payload="order-1",
        currency="XTR",
        prices=[LabeledPrice(label="50 credits", amount=200)],
    )
    assert sent.invoice is not None and sent.invoice.total_amount == 200
    with pytest.raises(TelegramBadRequest, match="STARS_INVOICE_INVALID"):
        await bot.send_invoice(
            USER_ID,
            title="t",
            description="d",
            payload="p",
            currency="XTR",
            prices=[LabeledPrice(label="a", amount=1), LabeledPrice(label="b", amount=1)],
        )
    with pytest.raises(TelegramBadRequest, match="STARS_INVOICE_INVALID"):
        await bot.send_invoice(
            USER_ID,
            title="t",
            description="d",
            payload="p",
            currency="XTR",
            provider_token="284685063:TEST:abc",
            prices=[LabeledPrice(label="a", amount=1)],
        )

    invoice = telegram.sent("sendInvoice")[0]
    query_id = await user.pre_checkout(invoice)
    [update] = await bot.get_updates()
    assert update.pre_checkout_query is not None
    assert update.pre_checkout_query.invoice_payload == "order-1"
    assert update.pre_checkout_query.total_amount == 200
    await bot.answer_pre_checkout_query(query_id, ok=True)
    assert await user.pre_checkout_answer(query_id) == {"ok": True, "error_message": None}

    await user.successful_payment(invoice, "charge-1")
    [paid] = await bot.get_updates(offset=update.update_id + 1)
    assert paid.message is not None and paid.message.successful_payment is not None
    assert paid.message.successful_payment.telegram_payment_charge_id == "charge-1"
    assert await bot.refund_star_payment(USER_ID, "charge-1") is True
    with pytest.raises(TelegramBadRequest, match="CHARGE_ALREADY_REFUNDED"):
        await bot.refund_star_payment(USER_ID, "charge-1")


async def test_commands_per_language_and_scope(telegram: TelegramDouble, bot: Bot) -> None:
    english = [
        BotCommand(command="start", description="Start"),
        BotCommand(command="buy", description="Buy"),
    ]
    russian = [BotCommand(command="start", description="Начать")]
    await bot.set_my_commands(english)
    await bot.set_my_commands(russian, language_code="ru")
    await bot.set_my_commands(english[:1], scope=BotCommandScopeAllPrivateChats())
    assert [c.command for c in await bot.get_my_commands()] == ["start", "buy"]
    assert [c.description for c in await bot.get_my_commands(language_code="ru")] == ["Начать"]
    scoped = await bot.get_my_commands(scope=BotCommandScopeAllPrivateChats())
    assert [c.command for c in scoped] == ["start"]
    with pytest.raises(TelegramBadRequest, match="BOT_COMMAND_INVALID"):
        await bot.set_my_commands([BotCommand(command="Bad Command", description="x")])


async def test_fault_switches(telegram: TelegramDouble, bot: Bot) -> None:
    telegram.user(USER_ID)
    telegram.fail("sendMessage", 429, "Too Many Requests: retry after 2", retry_after=2)
    with pytest.raises(TelegramRetryAfter) as flood:
        await bot.send_message(USER_ID, "a")
    assert flood.value.retry_after == 2
    assert telegram.calls[-1].response == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 2",
        "parameters": {"retry_after": 2},
    }
    telegram.fail("sendMessage", 502, "Bad Gateway", chat_id=USER_ID)
    with pytest.raises(TelegramServerError):
        await bot.send_message(USER_ID, "b")
    telegram.drop_connections("sendMessage")
    with pytest.raises(TelegramNetworkError):
        await bot.send_message(USER_ID, "c")
    assert telegram.calls[-1].dropped
    await bot.send_message(USER_ID, "d")  # faults are used up

    telegram.block(USER_ID)
    with pytest.raises(TelegramForbiddenError, match="bot was blocked by the user"):
        await bot.send_message(USER_ID, "e")
    telegram.unblock(USER_ID)
    telegram.fail("*", 404, "Not Found")
    with pytest.raises(TelegramNotFound):
        await bot.get_me()
    assert [c.status for c in telegram.sent("sendMessage")] == [429, 502, 0, 200, 403]


async def test_wait_for_wakes_on_calls_and_times_out(telegram: TelegramDouble, bot: Bot) -> None:
    telegram.user(USER_ID)

    async def later() -> None:
        await asyncio.sleep(0.1)
        await bot.send_message(USER_ID, "one")
        await bot.send_message(USER_ID, "two")

    task = asyncio.create_task(later())
    found = await telegram.wait_for("sendMessage", chat_id=USER_ID, count=2, timeout=5)
    await task
    assert [c.params["text"] for c in found] == ["one", "two"]
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"waited 0\.1s"):
        await telegram.wait_for("sendMessage", since=len(telegram.calls), timeout=0.1)
    assert time.monotonic() - started < 1


def mp4(sound: bool = False, size: int = 4096) -> bytes:
    """Bytes shaped like an MP4 (an ftyp box; with an audio handler box when `sound`)."""
    head = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    handler = b"\x00\x00\x00\x21hdlr\x00\x00\x00\x00\x00\x00\x00\x00" + (
        b"soun" if sound else b"vide"
    )
    return head + handler + bytes(size)


async def test_send_media_group_records_an_album_and_refuses_bad_ones(
    telegram: TelegramDouble, bot: Bot
) -> None:
    telegram.user(USER_ID)
    photos = [images.png(300 + i, 200, (i * 40, 80, 40)) for i in range(3)]
    video, thumb = mp4(), images.jpeg(90, 60)
    media: list[Any] = [
        InputMediaPhoto(
            media=BufferedInputFile(p, f"{i}.png"), caption="<b>First</b>" if i == 0 else None
        )
        for i, p in enumerate(photos)
    ]
    media.append(
        InputMediaVideo(
            media=BufferedInputFile(video, "v.mp4"),
            width=64,
            height=48,
            duration=2,
            thumbnail=BufferedInputFile(thumb, "t.jpg"),
        )
    )
    sent = await bot.send_media_group(USER_ID, media=media)
    assert len(sent) == 4
    groups = {m.media_group_id for m in sent}
    assert len(groups) == 1 and None not in groups
    assert sent[0].caption == "First" and sent[1].caption is None
    assert sent[0].photo is not None and sent[0].photo[-1].width == 300
    assert sent[3].video is not None and (sent[3].video.width, sent[3].video.duration) == (64, 2)
    states = telegram.messages(USER_ID)
    assert [s.photo for s in states[:3]] == photos and states[3].video == video
    assert states[3].thumbnail == thumb and sent[3].video.thumbnail is not None
    assert all(s.reply_markup is None for s in states)
    call = telegram.sent("sendMediaGroup")[0]
    assert sorted(call.files.values(), key=len) == sorted([*photos, video, thumb], key=len)

    # Resending by file_id works; documents group only with documents.
    again = await bot.send_media_group(
        USER_ID, media=[InputMediaPhoto(media=m.photo[-1].file_id) for m in sent[:2] if m.photo]
    )
    assert len(again) == 2 and again[0].media_group_id != sent[0].media_group_id
    docs = await bot.send_media_group(
        USER_ID,
        media=[
            InputMediaDocument(media=BufferedInputFile(p, f"{i}.png"))
            for i, p in enumerate(photos[:2])
        ],
    )
    assert [d.document.file_name for d in docs if d.document] == ["0.png", "1.png"]

    before = len(telegram.messages(USER_ID))
    one = BufferedInputFile(photos[0], "a.png")
    refusals: list[tuple[list[Any], str]] = [
        ([InputMediaPhoto(media=one)] * 11, "Too much messages to send as an album"),
        ([InputMediaPhoto(media=one)], "2 to 10"),
        (
            [
                InputMediaPhoto(media=one),
                InputMediaDocument(media=BufferedInputFile(photos[1], "b.png")),
            ],
            "documents can't be mixed",
        ),
        (
            [InputMediaPhoto(media=one), InputMediaPhoto(media="no-such-id")],
            "wrong file identifier",
        ),
        (
            [
                InputMediaPhoto(media=one),
                InputMediaPhoto(media=BufferedInputFile(b"junk", "j.png")),
            ],
            "IMAGE_PROCESS_FAILED",
        ),
    ]
    for bad, text in refusals:
        with pytest.raises(TelegramBadRequest, match=text):
            await bot.send_media_group(USER_ID, media=bad)
    # A part the media JSON names but the request lacks.
    body = {"chat_id": USER_ID, "media": json.dumps([{"type": "photo", "media": "attach://x"}] * 2)}
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{telegram.url}/bot{TEST_BOT_TOKEN}/sendMediaGroup", data=body)
    assert answer.status_code == 400 and "media not found" in answer.json()["description"]
    assert len(telegram.messages(USER_ID)) == before  # nothing half-sent


async def test_send_video_with_thumbnail_and_animation_kinds(
    telegram: TelegramDouble, bot: Bot
) -> None:
    telegram.user(USER_ID)
    video, thumb = mp4(), images.jpeg(320, 180)
    message = await bot.send_video(
        USER_ID,
        BufferedInputFile(video, "fade.mp4"),
        width=640,
        height=360,
        duration=3,
        supports_streaming=True,
        thumbnail=BufferedInputFile(thumb, "thumb.jpg"),
        caption="Done",
        reply_markup=keyboard("again"),
    )
    assert message.video is not None
    assert (message.video.width, message.video.height, message.video.duration) == (640, 360, 3)
    assert message.video.file_size == len(video) and message.video.mime_type == "video/mp4"
    assert message.video.thumbnail is not None and message.video.thumbnail.width == 320
    state = telegram.messages(USER_ID)[0]
    assert (state.video, state.thumbnail, state.callback_data) == (video, thumb, ["again"])
    call = telegram.sent("sendVideo")[0]
    assert call.params["supports_streaming"] is True and call.files["video"] == video
    file = await bot.get_file(message.video.file_id)
    assert file.file_path is not None
    downloaded = await bot.download_file(file.file_path)
    assert downloaded is not None and downloaded.getvalue() == video
    resent = await bot.send_video(USER_ID, message.video.file_id)
    assert resent.video is not None and resent.video.file_id == message.video.file_id
    # A thumbnail that is not a small JPEG is dropped, as Telegram does.
    big_thumb = await bot.send_video(
        USER_ID,
        BufferedInputFile(video, "v.mp4"),
        thumbnail=BufferedInputFile(images.png(), "t.png"),
    )
    assert big_thumb.video is not None and big_thumb.video.thumbnail is None

    silent = await bot.send_animation(
        USER_ID, BufferedInputFile(mp4(), "a.mp4"), width=64, height=48, duration=1
    )
    assert silent.animation is not None and silent.video is None
    gif = images.gif()
    converted = await bot.send_animation(USER_ID, BufferedInputFile(gif, "a.gif"))
    assert converted.animation is not None and converted.animation.mime_type == "video/mp4"
    loud = await bot.send_animation(USER_ID, BufferedInputFile(mp4(sound=True), "s.mp4"))
    assert loud.animation is None and loud.video is not None  # sound makes it a video
    webp = await bot.send_animation(USER_ID, BufferedInputFile(images.webp(), "a.webp"))
    assert webp.animation is None and webp.document is not None  # WebP is not animated
    states = telegram.messages(USER_ID)
    assert states[-3].animation == gif and states[-3].upload_mime == "image/gif"
    assert states[-1].document == images.webp()
    with pytest.raises(TelegramBadRequest, match="there is no animation in the request"):
        await bot.send_animation(USER_ID, "")


async def test_edit_message_media(telegram: TelegramDouble, bot: Bot) -> None:
    telegram.user(USER_ID)
    first, second = images.png(200, 100), images.jpeg(120, 90)
    photo = await bot.send_photo(USER_ID, BufferedInputFile(first, "a.png"), caption="Step 1")
    edited = await bot.edit_message_media(
        InputMediaPhoto(media=BufferedInputFile(second, "b.jpg"), caption="Step 2"),
        chat_id=USER_ID,
        message_id=photo.message_id,
        reply_markup=keyboard("stop"),
    )
    assert isinstance(edited, Message) and edited.photo is not None
    assert edited.photo[-1].width == 120 and edited.caption == "Step 2"
    state = telegram.message(USER_ID, photo.message_id)
    assert (state.photo, state.edits, state.callback_data) == (second, 1, ["stop"])
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_media(
            InputMediaPhoto(media=edited.photo[-1].file_id, caption="Step 2"),
            chat_id=USER_ID,
            message_id=photo.message_id,
            reply_markup=keyboard("stop"),
        )
    video = mp4()
    as_video = await bot.edit_message_media(
        InputMediaVideo(media=BufferedInputFile(video, "v.mp4"), width=8, height=8, duration=1),
        chat_id=USER_ID,
        message_id=photo.message_id,
    )
    assert isinstance(as_video, Message) and as_video.video is not None and as_video.photo is None
    state = telegram.message(USER_ID, photo.message_id)
    assert (state.video, state.photo, state.reply_markup) == (video, None, None)

    text = await bot.send_message(USER_ID, "Queued")
    with pytest.raises(TelegramBadRequest, match="there is no media in the message to edit"):
        await bot.edit_message_media(
            InputMediaPhoto(media=BufferedInputFile(first, "a.png")),
            chat_id=USER_ID,
            message_id=text.message_id,
        )
    assert telegram.message(USER_ID, text.message_id).text == "Queued"
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_media(
            InputMediaPhoto(media=BufferedInputFile(first, "a.png")),
            chat_id=USER_ID,
            message_id=999,
        )


async def test_upload_limits(telegram: TelegramDouble, bot: Bot) -> None:
    telegram.user(USER_ID)
    over_50 = bytes(50 * 1024 * 1024 + 1)
    for send in (bot.send_video, bot.send_animation, bot.send_document):
        with pytest.raises(TelegramEntityTooLarge):
            await send(USER_ID, BufferedInputFile(over_50, "big.mp4"))
    assert telegram.calls[-1].response == {
        "ok": False,
        "error_code": 413,
        "description": "Request Entity Too Large",
    }
    # A photo over 10 MB is refused (an uncompressed BMP of 1900 x 1900 is about 10.3 MB).
    bmp = io.BytesIO()
    Image.new("RGB", (1900, 1900), (1, 2, 3)).save(bmp, "BMP")
    assert len(bmp.getvalue()) > 10 * 1024 * 1024
    with pytest.raises(TelegramBadRequest, match="PHOTO_SAVE_FILE_INVALID"):
        await bot.send_photo(USER_ID, BufferedInputFile(bmp.getvalue(), "big.bmp"))
    assert telegram.messages(USER_ID) == []


async def test_flood_limit_counts_an_album_as_its_items(telegram: TelegramDouble, bot: Bot) -> None:
    telegram.user(USER_ID)
    telegram.flood_limit(3, per_seconds=60, retry_after=7)
    album = [InputMediaPhoto(media=BufferedInputFile(images.png(), f"{i}.png")) for i in range(2)]
    await bot.send_media_group(USER_ID, media=album)  # two of three
    await bot.send_message(USER_ID, "third")
    with pytest.raises(TelegramRetryAfter) as flood:
        await bot.send_message(USER_ID, "fourth")
    assert flood.value.retry_after == 7
    telegram.flood_limit(3, per_seconds=60)
    await bot.send_message(USER_ID, "one")
    with pytest.raises(TelegramRetryAfter):
        await bot.send_media_group(USER_ID, media=album * 2)  # 4 > 3 left
    assert len(telegram.messages(USER_ID)) == 4
