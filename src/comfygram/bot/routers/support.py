"""Payment support: the ``refunded_payment`` service message (credits taken back once per
charge, the user told once) and ``/paysupport`` (pick a payment, describe the problem, a
request stored for an operator). docs/payments.md, "Refunds" and "Support"."""

from __future__ import annotations

import asyncio
import logging

from aiogram import F, Router
from aiogram.dispatcher.event.bases import SkipHandler
from aiogram.filters import Command, StateFilter
from aiogram.filters.callback_data import CallbackData
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
)

from comfygram.api import BackendClient, BackendError, BackendUnavailable, RecentPayment
from comfygram.bot.replies import send
from comfygram.domain.refunds import refunded_text
from comfygram.i18n import t
from comfygram.telegram import TelegramSender

log = logging.getLogger(__name__)

OTHER = "-"
# A refunded_payment the backend cannot take now is tried again this many times, waiting
# 1, 2, 4 ... s in between (a backend restarting).
REPORT_ATTEMPTS = 5
REPORT_BACKOFF_SECONDS = 1.0


class SupportPayment(CallbackData, prefix="sup"):
    """The payment a /paysupport request is about (a payment id, or OTHER)."""

    payment_id: str


class Support(StatesGroup):
    choosing = State()
    writing = State()


# -- refunded_payment -----------------------------------------------------------------------


async def refunded(message: Message, backend: BackendClient, tg: TelegramSender, lang: str) -> None:
    """Telegram reports a refund (ours or its own, after a dispute): the backend takes the
    credits back once per charge; the user is told by whichever report marked the payment
    refunded (this message, or the operator's refund call in the backend)."""
    refund = message.refunded_payment
    user = message.from_user
    assert refund is not None
    payer = user.id if user is not None else message.chat.id
    for attempt in range(REPORT_ATTEMPTS):
        try:
            done = await backend.payment_refunded(
                refund.invoice_payload or "-",
                refund.total_amount,
                refund.currency,
                refund.telegram_payment_charge_id,
                telegram_id=payer,
                chat_id=message.chat.id,
                language=lang,
            )
            break
        except BackendUnavailable as exc:
            if attempt + 1 == REPORT_ATTEMPTS:
                # Reconciliation with getStarTransactions finds the refund later.
                log.error(
                    "refunded_payment for charge %s not reported: %s",
                    refund.telegram_payment_charge_id,
                    exc,
                )
                return
            await asyncio.sleep(REPORT_BACKOFF_SECONDS * 2**attempt)
    log.info(
        "refunded_payment for charge %s: %s",
        refund.telegram_payment_charge_id,
        f"{done.taken_back} credits taken back" if done.credited else "never credited",
    )
    if not done.changed:
        # Never credited (an uncreditable charge: bot/refunds.py tells), or already told.
        return
    await send(
        tg,
        message.chat.id,
        refunded_text(lang, refund.total_amount, done.taken_back, done.shortfall),
    )


# -- /paysupport ----------------------------------------------------------------------------


def _label(lang: str, payment: RecentPayment) -> str:
    date = payment.paid_at.strftime("%Y-%m-%d") if payment.paid_at else "—"
    key = "support.refunded_button" if payment.status == "refunded" else "support.paid_button"
    return t(lang, key, stars=payment.amount, credits=payment.credits, date=date)


def _choices(lang: str, payments: list[RecentPayment]) -> InlineKeyboardMarkup:
    rows = [
        [
            InlineKeyboardButton(
                text=_label(lang, p), callback_data=SupportPayment(payment_id=p.id).pack()
            )
        ]
        for p in payments
    ]
    other = SupportPayment(payment_id=OTHER).pack()
    rows.append([InlineKeyboardButton(text=t(lang, "support.other"), callback_data=other)])
    return InlineKeyboardMarkup(inline_keyboard=rows)


async def paysupport(
    message: Message, backend: BackendClient, tg: TelegramSender, lang: str, state: FSMContext
) -> None:
    user = message.from_user
    assert user is not None
    try:
        await backend.register(
            user.id,
            username=user.username,
            first_name=user.first_name,
            language_code=user.language_code,
        )
        recent = await backend.recent_payments(user.id)
    except BackendError:
        recent = []
    if not recent:
        await state.set_state(Support.writing)
        await state.update_data(support_payment=None)
        await send(tg, message.chat.id, t(lang, "support.describe_other"))
        return
    await state.set_state(Support.choosing)
    await send(tg, message.chat.id, t(lang, "support.choose"), _choices(lang, recent))


async def payment_chosen(
    query: CallbackQuery,
    callback_data: SupportPayment,
    tg: TelegramSender,
    lang: str,
    state: FSMContext,
) -> None:
    await query.answer()
    if query.message is None:
        return
    payment_id = None if callback_data.payment_id == OTHER else callback_data.payment_id
    await state.set_state(Support.writing)
    await state.update_data(support_payment=payment_id)
    await send(tg, query.message.chat.id, t(lang, "support.describe"))


async def stale_choice(query: CallbackQuery, lang: str) -> None:
    """A payment button pressed outside the conversation (an old message)."""
    await query.answer(t(lang, "support.stale"))


async def command_leaves(message: Message, state: FSMContext) -> None:
    """A command while writing: leave the conversation and let the command run."""
    await state.clear()
    raise SkipHandler


async def written(
    message: Message, backend: BackendClient, tg: TelegramSender, lang: str, state: FSMContext
) -> None:
    user = message.from_user
    assert user is not None and message.text is not None
    data = await state.get_data()
    try:
        request = await backend.open_support_request(
            user.id, message.chat.id, message.text, payment_id=data.get("support_payment")
        )
    except (BackendError, BackendUnavailable) as exc:
        log.warning("support request of %s not stored: %s", user.id, exc)
        await send(tg, message.chat.id, t(lang, "support.failed"))
        return
    await state.clear()
    log.info("support request #%d from %s", request.id, user.id)
    await send(tg, message.chat.id, t(lang, "support.received", id=request.id))


async def not_text(message: Message, tg: TelegramSender, lang: str) -> None:
    await send(tg, message.chat.id, t(lang, "support.text_only"))


def create_router() -> Router:
    router = Router(name="support")
    router.message.register(refunded, F.refunded_payment)
    router.message.register(paysupport, Command("paysupport"))
    router.callback_query.register(
        payment_chosen, SupportPayment.filter(), StateFilter(Support.choosing, Support.writing)
    )
    router.callback_query.register(stale_choice, SupportPayment.filter())
    writing = StateFilter(Support.writing)
    router.message.register(command_leaves, writing, F.text.startswith("/"))
    # (the filters are checked with the state as the update came, so a skipped command must
    # not match these either)
    router.message.register(written, writing, F.text, ~F.text.startswith("/"))
    router.message.register(not_text, writing, ~F.text)
    return router
