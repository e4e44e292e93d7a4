"""/paysupport requests: a user's problem with a payment, kept for an operator to answer
(docs/payments.md, "Support")."""

from __future__ import annotations

import html
import logging
from datetime import datetime
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from comfygram.backend import accounts
from comfygram.backend.errors import ApiError, not_found
from comfygram.backend.models import Payment, SupportRequest, User, utcnow
from comfygram.domain.refunds import refunded_text
from comfygram.i18n import t
from comfygram.settings import Settings

if TYPE_CHECKING:
    from comfygram.backend.payment_refunds import TakeBack

log = logging.getLogger(__name__)

# What /paysupport offers to pick from: the latest paid or refunded payments.
RECENT_PAYMENTS = 5
MAX_REPLY = 4000


async def recent_payments(
    session: AsyncSession, telegram_id: int, limit: int = RECENT_PAYMENTS
) -> list[Payment]:
    user = await accounts.get_user(session, telegram_id)
    rows = await session.scalars(
        select(Payment)
        .where(Payment.user_id == user.id, Payment.status.in_(("paid", "refunded")))
        .order_by(Payment.paid_at.desc(), Payment.created_at.desc())
        .limit(limit)
    )
    return list(rows)


async def open_request(
    session: AsyncSession, telegram_id: int, chat_id: int, payment_id: str | None, text: str
) -> tuple[SupportRequest, User]:
    """Store a request; a payment named must be the user's own. The caller commits."""
    text = text.strip()
    if not text:
        raise ApiError(422, "text_required", "Describe the problem in a few words.")
    user = await accounts.get_user(session, telegram_id)
    if payment_id is not None:
        payment = await session.get(Payment, payment_id)
        if payment is None or payment.user_id != user.id:
            raise not_found("payment", payment_id)
    request = SupportRequest(
        user_id=user.id, payment_id=payment_id, chat_id=chat_id, text=text, status="open"
    )
    session.add(request)
    await session.flush()
    return request, user


async def mark(
    session: AsyncSession,
    request_id: int,
    status: str,
    actor: str,
    reply: str | None = None,
    now: datetime | None = None,
) -> SupportRequest:
    """Record an operator's answer (answered), refund (refunded) or closing (closed)."""
    request = await session.get(SupportRequest, request_id, with_for_update=True)
    if request is None:
        raise not_found("support_request", request_id)
    request.status = status
    request.answered_by = actor[:64]
    request.answered_at = now or utcnow()
    if reply is not None:
        request.reply = reply
    await session.flush()
    return request


async def send_to_chat(settings: Settings, redis: Redis, chat_id: int, text: str) -> None:
    """One message from the backend to a user's chat, within the bot's shared rate budget.
    Raises comfygram.telegram's UserBlocked or TelegramUnavailable (and aiogram's errors)."""
    from aiogram.methods import SendMessage

    from comfygram.telegram import RateBudget, TelegramSender, create_bot

    bot = create_bot(settings)
    try:
        sender = TelegramSender(bot, RateBudget.from_settings(redis, settings), max_attempts=3)
        await sender.call(SendMessage(chat_id=chat_id, text=text), chat_id=chat_id)
    finally:
        await bot.session.close()


def reply_text(language: str | None, request_id: int, reply: str) -> str:
    """An operator's reply as the user reads it (their words shown as typed, not as HTML)."""
    return t(language, "support.reply", id=request_id, text=html.escape(reply))


async def tell_refunded(settings: Settings, redis: Redis, done: TakeBack) -> bool:
    """Tell the user about an operator's refund this call marked (the bot tells them when
    Telegram's refunded_payment marked it first); best effort: a failure is logged."""
    payment, user = done.payment, done.user
    if not done.changed or payment is None or user is None:
        return False
    text = refunded_text(user.language_code, payment.amount, done.taken_back, done.shortfall)
    try:
        await send_to_chat(settings, redis, user.telegram_id, text)
    except Exception as exc:  # the refund stands; the user sees it in Telegram anyway
        log.warning("refund of payment %s: user not told (%s)", payment.id, type(exc).__name__)
        return False
    return True
