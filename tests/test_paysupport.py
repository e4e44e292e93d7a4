"""Refunds and payment support through the bot (docs/payments.md, "Refunds" and "Support"):
the bot polls the Telegram double (or gets its webhook) and talks to the real backend over
HTTP (SQLite), real Redis. A refunded_payment takes the credits back once and the user is
told once, for refunds Telegram makes and ours, in either order; /paysupport stores a request
that the admin panel shows, answers through the bot and refunds in one click."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select

from comfygram.backend import db
from comfygram.backend.models import LedgerEntry, SupportRequest
from comfygram.settings import Settings
from tests.admin_helpers import ADMIN_PASSWORD, ADMIN_USERNAME, with_admin
from tests.bot_helpers import (  # noqa: F401
    FlakyBackend,
    World,
    fast_chat_pace,
    polling_world,
    webhook_world,
)
from tests.doubles.telegram import Call, UserDriver

pytestmark = [pytest.mark.usefixtures("fast_chat_pace"), pytest.mark.money]

TAKEN = "was refunded"


@pytest.fixture
def database_url(tmp_path) -> str:
    """The bot's tests run on SQLite only: the backend's own tests cover both databases."""
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    async with polling_world(with_admin(settings)) as running:
        running.runtime.tg.backoff = 0.01
        yield running


async def _started(world: World, telegram_id: int) -> UserDriver:
    user = world.user(telegram_id)
    await user.send_command("start")
    await world.reply(user, containing="👋")
    return user


async def _paid(world: World, user: UserDriver, charge: str) -> Call:
    """The small package (10 credits for 50 Stars) bought through the bot: balance 3 + 10."""
    since = world.mark()
    await user.send_command("buy")
    offer = await world.reply(user, containing="Choose a package", since=since)
    await user.press(offer.result, "pkg:small")
    (invoice,) = await world.telegram.wait_for("sendInvoice", chat_id=user.chat_id, since=since)
    query = await user.pre_checkout(invoice)
    assert (await user.pre_checkout_answer(query))["ok"] is True
    await user.successful_payment(invoice, charge)
    await world.reply(user, containing="Thank you")
    return invoice


def _told(world: World, chat_id: int) -> list[str]:
    return [
        c.params["text"]
        for c in world.telegram.sent("sendMessage", chat_id)
        if TAKEN in c.params["text"]
    ]


async def _take_backs(world: World, charge: str) -> list[int]:
    engine = db.create_engine(world.settings.database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(LedgerEntry.amount).where(
                    LedgerEntry.idempotency_key == f"payment:{charge}:refund"
                )
            )
            return [r.amount for r in rows]
    finally:
        await engine.dispose()


async def _quiet(world: World) -> None:
    await world.settle()
    await asyncio.sleep(0.5)
    await world.settle()


async def test_a_refund_telegram_makes_takes_the_credits_back_once(world: World):
    user = await _started(world, 6101)
    await _paid(world, user, "tg-1")
    assert (await world.backend.user(6101)).balance == 13
    # A dispute: Telegram gives the Stars back and reports it with refunded_payment.
    await world.telegram.refund("tg-1")
    told = await world.reply(user, containing=TAKEN)
    assert "50 ⭐" in told.params["text"] and "10 credits" in told.params["text"]
    await user.resend()  # the same update again
    await _quiet(world)
    assert len(_told(world, 6101)) == 1
    assert await _take_backs(world, "tg-1") == [-10]
    assert (await world.backend.user(6101)).balance == 3
    # The operator's refund afterwards calls Telegram no more and changes nothing.
    ours = await world.backend.refund_payment("tg-1", reason="dispute", actor="ops")
    assert ours.changed is False and ours.taken_back == 10
    assert world.telegram.sent("refundStarPayment") == []
    await _quiet(world)
    assert len(_told(world, 6101)) == 1


async def test_our_refund_and_its_refunded_payment_take_back_once_and_tell_once(world: World):
    """The backend's refund call and Telegram's refunded_payment race (the bot handles the
    message while the backend finishes): one take-back, one message, whichever wins."""
    user = await _started(world, 6102)
    await _paid(world, user, "ours-1")
    done = await world.backend.refund_payment("ours-1", reason="asked", actor="ops:bob")
    assert done.taken_back == 10 and done.balance == 3
    await world.reply(user, containing=TAKEN)
    await _quiet(world)
    assert len(_told(world, 6102)) == 1
    assert len(world.telegram.sent("refundStarPayment")) == 1
    assert await _take_backs(world, "ours-1") == [-10]


async def test_a_refund_after_spending_takes_back_what_is_left(world: World):
    user = await _started(world, 6103)
    await _paid(world, user, "spent-1")
    await world.backend.adjust_credits(
        6103, -13, reason="spent", actor="tests", idempotency_key="spent-1"
    )
    await world.telegram.refund("spent-1")
    told = await world.reply(user, containing=TAKEN)
    assert "none were taken back" in told.params["text"]
    assert (await world.backend.user(6103)).balance == 0
    assert await _take_backs(world, "spent-1") == []


async def test_an_uncreditable_charge_refunded_is_told_by_the_refund_flow_only(world: World):
    """A second payment of a paid invoice goes back automatically; its refunded_payment finds
    nothing credited, so the user reads the 'went back to you' message alone."""
    user = await _started(world, 6104)
    invoice = await _paid(world, user, "first")
    await user.successful_payment(invoice, "second")
    await world.reply(user, containing="went back to you")
    await _quiet(world)
    assert _told(world, 6104) == []
    assert (await world.backend.user(6104)).balance == 13


async def test_a_refunded_payment_waits_for_the_backend(settings: Settings):
    flaky = FlakyBackend()
    async with polling_world(settings, transport=flaky) as world:
        user = await _started(world, 6106)
        await _paid(world, user, "down-1")
        flaky.down("/api/payments/refunded", times=2)
        await world.telegram.refund("down-1")
        await world.reply(user, containing=TAKEN, timeout=15)
        await _quiet(world)
        assert len(_told(world, 6106)) == 1
        assert await _take_backs(world, "down-1") == [-10]
        assert (await world.backend.user(6106)).balance == 3


async def test_refund_with_the_bot_on_the_webhook_tells_once(settings: Settings):
    """In webhook mode Telegram delivers refunded_payment while refundStarPayment is still
    being answered: the message and the call's take-back race inside one backend."""
    async with webhook_world(settings) as world:
        user = world.user(6105)
        await user.send_command("start")
        await world.reply(user, containing="👋")
        await _paid(world, user, "hook-1")
        answers = await asyncio.gather(
            world.backend.refund_payment("hook-1", reason="asked", actor="ops"),
            world.backend.refund_payment("hook-1", reason="asked", actor="ops"),
            return_exceptions=True,
        )
        assert any(not isinstance(a, BaseException) for a in answers), answers
        await world.reply(user, containing=TAKEN)
        await world.settle()
        await asyncio.sleep(0.5)
        assert len(_told(world, 6105)) == 1
        assert len(world.telegram.sent("refundStarPayment")) == 1
        assert await _take_backs(world, "hook-1") == [-10]
        assert (await world.backend.user(6105)).balance == 3


# -- /paysupport --------------------------------------------------------------------------------


async def _admin(world: World) -> httpx.AsyncClient:
    url = world.settings.backend_url
    client = httpx.AsyncClient(base_url=url, headers={"Origin": url})
    response = await client.post(
        "/admin/login", data={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 302, response.text
    return client


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no csrf field"
    return match.group(1)


async def _requests(world: World) -> list[SupportRequest]:
    engine = db.create_engine(world.settings.database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(select(SupportRequest).order_by(SupportRequest.id))
            return list(rows)
    finally:
        await engine.dispose()


async def test_paysupport_from_request_to_reply_and_refund(world: World):
    user = await _started(world, 6201)
    await _paid(world, user, "sup-1")
    since = world.mark()
    await user.send_command("paysupport")
    choose = await world.reply(user, containing="Which payment", since=since)
    buttons = [b for row in choose.params["reply_markup"]["inline_keyboard"] for b in row]
    assert "50 ⭐ · 10 credits" in buttons[0]["text"] and buttons[-1]["text"] == "Something else"
    await user.press(choose.result, buttons[0]["callback_data"])
    await world.reply(user, containing="Describe the problem", since=since)
    await user.send_text("I paid but want my Stars back <please>")
    ack = await world.reply(user, containing="request #1", since=since)
    assert "An operator answers here" in ack.params["text"]
    (request,) = await _requests(world)
    assert (request.status, request.text) == ("open", "I paid but want my Stars back <please>")
    assert request.payment_id is not None and request.chat_id == 6201
    # The conversation is over: the next text is no request.
    await user.send_text("hello")
    await _quiet(world)
    assert len(await _requests(world)) == 1

    admin = await _admin(world)
    try:
        listing = await admin.get("/admin/support-request/list")
        assert listing.status_code == 200 and "I paid but want my Stars back" in listing.text
        page = await admin.get(f"/admin/support-request/details/{request.id}")
        assert page.status_code == 200
        assert 'data-support="balance">13<' in page.text and "A refund takes back 10" in page.text
        token = _csrf(page.text)
        # The reply goes to the user's chat through the bot, their words kept as text.
        since = world.mark()
        answered = await admin.post(
            f"/admin/support-request/reply/{request.id}",
            data={"csrf": token, "reply": "We are refunding it now & will check <it>."},
        )
        assert answered.status_code == 302
        reply = await world.reply(user, containing="Answer to your request #1", since=since)
        assert "&amp; will check &lt;it&gt;" in reply.params["text"]
        (request,) = await _requests(world)
        assert (request.status, request.answered_by) == ("answered", "admin:operator")
        # One click refunds the payment named in the request; a second click changes nothing.
        for _ in range(2):
            refunded = await admin.post(
                f"/admin/support-request/refund/{request.id}", data={"csrf": token}
            )
            assert refunded.status_code == 302
        await world.reply(user, containing=TAKEN)
        await _quiet(world)
        assert len(_told(world, 6201)) == 1
        assert len(world.telegram.sent("refundStarPayment")) == 1
        assert await _take_backs(world, "sup-1") == [-10]
        (request,) = await _requests(world)
        assert request.status == "refunded"
        # An open request list no longer shows it.
        assert "I paid but want" not in (await admin.get("/admin/support-request/list")).text
        # Forged (no CSRF) replies are refused.
        forged = await admin.post(f"/admin/support-request/reply/{request.id}", data={"reply": "x"})
        assert forged.status_code == 403
    finally:
        await admin.aclose()


async def test_paysupport_without_payments_and_leaving_with_a_command(world: World):
    user = await _started(world, 6202)
    since = world.mark()
    await user.send_command("paysupport")
    await world.reply(user, containing="include the date of the payment", since=since)
    await user.send_sticker()
    await world.reply(user, containing="in a text message", since=since)
    await user.send_command("balance")  # a command leaves the conversation and runs
    await world.reply(user, containing="Credits on your balance", since=since)
    await user.send_text("not a request")
    await _quiet(world)
    assert await _requests(world) == []
    # Again, this time written: a request about no payment (after the flood control's burst
    # of 5 messages has refilled: one a second).
    await asyncio.sleep(2.5)
    since = world.mark()
    await user.send_command("paysupport")
    await world.reply(user, containing="include the date", since=since)
    await user.send_text("Charged twice yesterday")
    await world.reply(user, containing="request #1", since=since)
    (request,) = await _requests(world)
    assert (request.payment_id, request.text) == (None, "Charged twice yesterday")
