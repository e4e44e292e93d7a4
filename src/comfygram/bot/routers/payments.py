"""Telegram Stars: /buy → packages → invoice (XTR, one price) → pre-checkout → credited once."""

from __future__ import annotations

import asyncio
import logging

from aiogram import Bot, F, Router
from aiogram.filters import Command
from aiogram.methods import SendInvoice
from aiogram.types import CallbackQuery, LabeledPrice, Message, PreCheckoutQuery

from comfygram.api import BackendClient, BackendError, BackendUnavailable
from comfygram.bot.callbacks import Buy, Package
from comfygram.bot.keyboards import menu_labels
from comfygram.bot.pending import PendingPayment, PendingPayments, thanks
from comfygram.bot.refunds import UNCREDITABLE
from comfygram.bot.replies import offer_packages, send
from comfygram.bot.routers.growth import tell_referrer
from comfygram.i18n import t
from comfygram.settings import Settings
from comfygram.telegram import TelegramSender

log = logging.getLogger(__name__)

# Telegram waits 10 s for the answer to a pre_checkout_query; keep well inside that.
PRECHECK_TIMEOUT_SECONDS = 5.0
STARS = "XTR"
# With a start_parameter, a forwarded copy of an invoice carries a button opening the bot
# (t.me/<bot>?start=buy) instead of Pay; without one, anyone it is forwarded to could pay the
# same invoice again.
INVOICE_START_PARAMETER = "buy"

# Why a pre-checkout is refused, in words a person understands, by backend error code.
_PRECHECK_REFUSALS = {
    "payment_closed": "bot.pay.already_paid",
    "payment_in_progress": "bot.pay.in_progress",
    "payment_expired": "bot.pay.expired",
    "payment_not_yours": "bot.pay.not_yours",
    "amount_mismatch": "bot.pay.invoice_changed",
    "currency_mismatch": "bot.pay.invoice_changed",
    "payment_not_found": "bot.pay.invoice_changed",
    "user_banned": "bot.errors.banned",
}


async def show_packages(
    message: Message, tg: TelegramSender, lang: str, settings: Settings
) -> None:
    await offer_packages(tg, message.chat.id, lang, settings)


async def show_packages_from_button(
    query: CallbackQuery, tg: TelegramSender, lang: str, settings: Settings
) -> None:
    await query.answer()
    if query.message is not None:
        await offer_packages(tg, query.message.chat.id, lang, settings)


async def send_invoice(
    query: CallbackQuery,
    callback_data: Package,
    backend: BackendClient,
    tg: TelegramSender,
    lang: str,
    settings: Settings,
) -> None:
    package = settings.package(callback_data.package)
    if package is None or query.message is None:
        await query.answer(t(lang, "bot.buy.unknown_package"))
        return
    await query.answer()
    user = query.from_user
    await backend.register(
        user.id, username=user.username, first_name=user.first_name, language_code=lang
    )
    invoice = await backend.create_payment(user.id, package.id)
    title = t(lang, "bot.invoice.title", credits=invoice.credits)
    chat_id = query.message.chat.id
    method = SendInvoice(
        chat_id=chat_id,
        title=title,
        description=t(lang, "bot.invoice.description", credits=invoice.credits),
        payload=invoice.payload,
        start_parameter=INVOICE_START_PARAMETER,
        currency=STARS,
        prices=[LabeledPrice(label=title, amount=invoice.amount)],
    )
    await tg.call(method, chat_id=chat_id)


async def pre_checkout(
    query: PreCheckoutQuery, bot: Bot, backend: BackendClient, lang: str
) -> None:
    """Answer within Telegram's 10 s: yes only if the backend says the invoice is payable by
    this user now (a yes holds it, so a second payment of it is refused)."""
    error_key: str | None = None
    try:
        await asyncio.wait_for(
            backend.precheck_payment(
                query.invoice_payload,
                query.total_amount,
                query.currency,
                telegram_id=query.from_user.id,
            ),
            timeout=PRECHECK_TIMEOUT_SECONDS,
        )
    except BackendError as exc:
        log.info("pre-checkout refused: %s", exc)
        error_key = _PRECHECK_REFUSALS.get(exc.code, "bot.pay.invoice_changed")
    except (BackendUnavailable, TimeoutError) as exc:
        log.warning("pre-checkout refused, backend unavailable: %s", exc)
        error_key = "bot.pay.unavailable"
    if error_key is None:
        await bot.answer_pre_checkout_query(query.id, ok=True)
    else:
        await bot.answer_pre_checkout_query(query.id, ok=False, error_message=t(lang, error_key))


async def successful_payment(
    message: Message,
    backend: BackendClient,
    tg: TelegramSender,
    lang: str,
    pending: PendingPayments,
) -> None:
    paid = message.successful_payment
    assert paid is not None
    chat_id = message.chat.id
    try:
        payment = await backend.confirm_payment(
            paid.invoice_payload,
            paid.total_amount,
            paid.currency,
            paid.telegram_payment_charge_id,
            subscription_expiration_date=paid.subscription_expiration_date,
        )
    except BackendUnavailable:
        # Telegram has taken the Stars: keep the confirmation and retry until it lands.
        await pending.add(_pending(message, lang))
        await send(tg, chat_id, t(lang, "bot.pay.delayed"))
        return
    except BackendError as exc:
        if exc.code in UNCREDITABLE:
            await _give_back(message, lang, pending)
            return
        log.error("payment %s not credited: %s", paid.telegram_payment_charge_id, exc)
        await send(tg, chat_id, t(lang, "bot.pay.problem"))
        return
    if payment.credited:
        await send(tg, chat_id, thanks(lang, payment))
        await tell_referrer(tg, payment)
    else:
        # The same successful_payment again (Telegram redelivered it): credited and thanked.
        log.info("payment %s already credited", paid.telegram_payment_charge_id)


def _pending(message: Message, lang: str) -> PendingPayment:
    paid = message.successful_payment
    assert paid is not None
    return PendingPayment(
        chat_id=message.chat.id,
        telegram_id=message.from_user.id if message.from_user else None,
        lang=lang,
        payload=paid.invoice_payload,
        total_amount=paid.total_amount,
        currency=paid.currency,
        charge_id=paid.telegram_payment_charge_id,
    )


async def _give_back(message: Message, lang: str, pending: PendingPayments) -> None:
    """Stars Telegram took that cannot be credited (the invoice was paid already, expired,
    ...): refund them; if the backend cannot record that now, keep the charge for later."""
    try:
        await pending.give_back(_pending(message, lang))
    except BackendUnavailable:
        await pending.add(_pending(message, lang))


def create_router() -> Router:
    router = Router(name="payments")
    router.message.register(show_packages, Command("buy"))
    router.message.register(show_packages, F.text.in_(menu_labels("top_up")))
    router.callback_query.register(show_packages_from_button, Buy.filter())
    router.callback_query.register(send_invoice, Package.filter())
    router.pre_checkout_query.register(pre_checkout)
    router.message.register(successful_payment, F.successful_payment)
    return router
