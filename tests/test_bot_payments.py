"""Stars payments through the bot: the bot polls the Telegram double and talks to the real
backend over HTTP (SQLite), real Redis. One invoice is paid once: forwarded copies cannot be
paid, pre-checkout approves one payment at a time, and Stars that cannot be credited go back
with refundStarPayment exactly once (docs/payments.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from aiogram.types import LabeledPrice
from sqlalchemy import update

from comfygram.backend import db
from comfygram.backend.models import ChargeRefund, Payment, utcnow
from comfygram.settings import Settings
from comfygram.telegram import create_bot
from tests.bot_helpers import FlakyBackend, World, fast_chat_pace, polling_world  # noqa: F401
from tests.doubles.telegram import BOT_USERNAME, TEST_BOT_TOKEN, Call, TelegramDouble, UserDriver

pytestmark = [pytest.mark.usefixtures("fast_chat_pace"), pytest.mark.money]

REFUNDED = "went back to you"


@pytest.fixture
def database_url(tmp_path) -> str:
    """The bot's tests run on SQLite only: the backend's own tests cover both databases."""
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@pytest.fixture
def flaky() -> FlakyBackend:
    return FlakyBackend()


@pytest.fixture
async def world(settings: Settings, flaky: FlakyBackend) -> AsyncIterator[World]:
    async with polling_world(settings, transport=flaky) as running:
        # Telegram's 5xx are retried within a call after 10, 20, ... ms instead of 0.5 s, 1 s.
        running.runtime.tg.backoff = 0.01
        yield running


async def _started(world: World, telegram_id: int) -> UserDriver:
    user = world.user(telegram_id)
    await user.send_command("start")
    await world.reply(user, containing="👋")
    return user


async def _invoice(world: World, user: UserDriver, package: str = "small") -> Call:
    since = world.mark()
    await user.send_command("buy")
    offer = await world.reply(user, containing="Choose a package", since=since)
    await user.press(offer.result, f"pkg:{package}")
    (invoice,) = await world.telegram.wait_for("sendInvoice", chat_id=user.chat_id, since=since)
    return invoice


async def _paid(world: World, user: UserDriver, charge: str) -> Call:
    """An invoice the user has paid with `charge` (approved, credited, thanked)."""
    invoice = await _invoice(world, user)
    query = await user.pre_checkout(invoice)
    assert (await user.pre_checkout_answer(query))["ok"] is True
    await user.successful_payment(invoice, charge)
    await world.reply(user, containing="Thank you")
    return invoice


def _refund_calls(world: World) -> list[tuple[int, str]]:
    return [
        (c.params["user_id"], c.params["telegram_payment_charge_id"])
        for c in world.telegram.sent("refundStarPayment")
        if c.ok
    ]


def _told(world: World, chat_id: int) -> list[Call]:
    return [c for c in world.telegram.sent("sendMessage", chat_id) if REFUNDED in c.params["text"]]


async def _quiet(world: World, seconds: float = 1.0) -> None:
    """Settle, then give the retry loop (every 0.3 s) a few rounds to do anything more."""
    await world.settle()
    await asyncio.sleep(seconds)
    await world.settle()


async def test_a_forwarded_invoice_offers_the_bot_not_a_pay_button(world: World):
    owner = await _started(world, 5101)
    friend = world.user(5102)
    invoice = await _invoice(world, owner)
    assert invoice.params["start_parameter"] == "buy"
    copy = world.telegram.forward(owner.chat_id, invoice.result["message_id"], friend.chat_id)
    buttons = [b for row in copy.reply_markup["inline_keyboard"] for b in row]
    assert [b.get("pay") for b in buttons] == [None]
    assert buttons[0]["url"] == f"https://t.me/{BOT_USERNAME}?start=buy"
    # A copy forwarded before this fix still has Pay: the friend's pre-checkout is refused.
    query = await friend.pre_checkout(invoice)
    answer = await friend.pre_checkout_answer(query)
    assert answer["ok"] is False and "made for someone else" in answer["error_message"]
    query = await owner.pre_checkout(invoice)
    assert (await owner.pre_checkout_answer(query))["ok"] is True


async def test_two_pre_checkouts_at_once_for_one_invoice_approve_one(world: World):
    user = await _started(world, 5103)
    invoice = await _invoice(world, user)
    queries = [await user.pre_checkout(invoice), await user.pre_checkout(invoice)]
    answers = [await user.pre_checkout_answer(q) for q in queries]
    assert sorted(a["ok"] for a in answers) == [False, True], answers
    (refused,) = [a for a in answers if not a["ok"]]
    assert "being paid right now" in refused["error_message"]


async def test_a_second_payment_of_a_paid_invoice_is_refunded_once(world: World):
    user = await _started(world, 5104)
    invoice = await _paid(world, user, "charge-A")
    # The same invoice paid again (an old forwarded copy, a retry after the hold): charge-B.
    await user.successful_payment(invoice, "charge-B")
    told = await world.reply(user, containing=REFUNDED)
    assert "50 ⭐" in told.params["text"]
    await user.resend()  # the very same update again (same update_id)
    await user.successful_payment(invoice, "charge-B")  # redelivered as a new update
    await _quiet(world)
    assert _refund_calls(world) == [(5104, "charge-B")]
    assert world.telegram.refunded == {"charge-B"}
    assert len(_told(world, 5104)) == 1
    assert (await world.backend.user(5104)).balance == 3 + 10
    assert not [
        c for c in world.telegram.sent("sendMessage", 5104) if "/paysupport" in c.params["text"]
    ]


async def test_concurrent_deliveries_of_an_uncreditable_charge_refund_once(world: World):
    user = await _started(world, 5105)
    invoice = await _paid(world, user, "charge-A")
    # Three bot processes (or Telegram's retries) report charge-B at the same moment.
    await asyncio.gather(*(user.successful_payment(invoice, "charge-B") for _ in range(3)))
    await world.reply(user, containing=REFUNDED)
    await _quiet(world)
    assert _refund_calls(world) == [(5105, "charge-B")]
    assert len(world.telegram.sent("refundStarPayment")) == 1
    assert len(_told(world, 5105)) == 1
    assert (await world.backend.user(5105)).balance == 3 + 10


async def test_a_refund_telegram_could_not_take_is_retried_until_made_once(world: World):
    user = await _started(world, 5106)
    invoice = await _paid(world, user, "charge-A")
    # Telegram answers 502 to every attempt of the first round (the sender tries five times).
    world.telegram.fail("refundStarPayment", 502, "Bad Gateway", times=5)
    await user.successful_payment(invoice, "charge-B")
    await world.reply(user, containing=REFUNDED, timeout=15)
    await _quiet(world)
    attempts = world.telegram.sent("refundStarPayment")
    assert [c.status for c in attempts] == [502] * 5 + [200]
    assert _refund_calls(world) == [(5106, "charge-B")]
    assert len(_told(world, 5106)) == 1


async def test_a_refund_whose_answer_was_lost_is_finished_once(world: World):
    """Telegram refunded, the answer never came back: the next try hears
    CHARGE_ALREADY_REFUNDED, which finishes the refund; Stars went back once."""
    user = await _started(world, 5107)
    invoice = await _paid(world, user, "charge-A")
    world.telegram.refunded.add("charge-B")
    await user.successful_payment(invoice, "charge-B")
    await world.reply(user, containing=REFUNDED)
    await _quiet(world)
    (call,) = world.telegram.sent("refundStarPayment")
    assert call.status == 400 and "CHARGE_ALREADY_REFUNDED" in call.response["description"]
    assert len(_told(world, 5107)) == 1


async def test_an_uncreditable_charge_waits_for_the_backend_then_is_refunded(
    world: World, flaky: FlakyBackend, settings: Settings
):
    user = await _started(world, 5108)
    invoice = await _paid(world, user, "charge-A")
    flaky.down("/api/payments/refunds", times=2)
    await user.successful_payment(invoice, "charge-B")
    await world.reply(user, containing=REFUNDED, timeout=15)
    await _quiet(world)
    assert _refund_calls(world) == [(5108, "charge-B")]
    assert len(_told(world, 5108)) == 1
    engine = db.create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(ChargeRefund.__table__.select())).all()
        assert [(r.telegram_payment_charge_id, r.reason) for r in rows] == [
            ("charge-B", "payment_closed")
        ]
        assert rows[0].refunded_at is not None
    finally:
        await engine.dispose()


async def test_an_expired_invoice_is_refused_at_pre_checkout(world: World, settings: Settings):
    user = await _started(world, 5109)
    invoice = await _invoice(world, user)
    engine = db.create_engine(settings.database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                update(Payment)
                .where(Payment.payload == invoice.params["payload"])
                .values(created_at=utcnow() - timedelta(days=2))
            )
    finally:
        await engine.dispose()
    query = await user.pre_checkout(invoice)
    answer = await user.pre_checkout_answer(query)
    assert answer["ok"] is False and "expired" in answer["error_message"]


async def test_the_double_keeps_pay_on_a_forwarded_invoice_without_start_parameter():
    """The double's model of forwarding, both ways (the Bot API's sendInvoice start_parameter)."""
    async with TelegramDouble() as telegram:
        telegram.user(5110)
        telegram.user(5111)
        bot = create_bot(
            Settings(_env_file=None, bot_token=TEST_BOT_TOKEN, telegram_api_url=telegram.url)
        )
        try:
            prices = [LabeledPrice(label="10 credits", amount=50)]
            plain = await bot.send_invoice(5110, "10", "d", "p-1", "XTR", prices)
            linked = await bot.send_invoice(
                5110, "10", "d", "p-2", "XTR", prices, start_parameter="buy"
            )
        finally:
            await bot.session.close()
        (pay,) = telegram.forward(5110, plain.message_id, 5111).reply_markup["inline_keyboard"][0]
        assert pay == {"text": "Pay ⭐️50", "pay": True}
        (link,) = telegram.forward(5110, linked.message_id, 5111).reply_markup["inline_keyboard"][0]
        assert link["url"] == f"https://t.me/{BOT_USERNAME}?start=buy" and "pay" not in link
