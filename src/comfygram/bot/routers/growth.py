"""Promo codes and referrals in the bot: /promo CODE (and the start link promo_CODE, which
/start hands over here), /invite with the user's referral link, and telling a referrer about
the bonus a friend's first payment earned them."""

from __future__ import annotations

import logging

from aiogram import Bot, Router
from aiogram.filters import Command, CommandObject
from aiogram.methods import SendMessage
from aiogram.types import Message

from comfygram.api import BackendClient, BackendError, Payment
from comfygram.bot.replies import send
from comfygram.bot.texts import text
from comfygram.i18n import language_of
from comfygram.settings import Settings
from comfygram.telegram import MessageGone, TelegramSender, TelegramUnavailable, UserBlocked

log = logging.getLogger(__name__)

PROMO_PREFIX = "promo_"
REF_PREFIX = "ref_"
# What a promo code may be at most (the backend's rule: 3-32 of A-Z 0-9 _ -); a longer
# argument is shown cut, never sent whole into a message.
CODE_SHOWN_MAX = 32

# Why a redemption failed, by the backend's error code.
_REFUSALS = {
    "promo_not_found": "growth.promo.not_found",
    "promo_expired": "growth.promo.expired",
    "promo_disabled": "growth.promo.disabled",
    "promo_used_up": "growth.promo.used_up",
    "promo_already_redeemed": "growth.promo.already",
    "user_banned": "bot.errors.banned",
}


def promo_code_of(start_args: str | None) -> str | None:
    """The code in a /start argument ``promo_<CODE>``, or None."""
    if start_args and start_args.startswith(PROMO_PREFIX):
        return start_args[len(PROMO_PREFIX) :].strip() or None
    return None


async def redeem(
    backend: BackendClient, tg: TelegramSender, chat_id: int, telegram_id: int, lang: str, code: str
) -> None:
    """Redeem `code` for the user and tell them the credits and balance, or why not."""
    shown = code.strip().upper()[:CODE_SHOWN_MAX]
    try:
        result = await backend.redeem_promo(telegram_id, code.strip())
    except BackendError as exc:
        key = _REFUSALS.get(exc.code)
        if key is None:  # 422: a code longer than any code can be
            key = "growth.promo.not_found"
        log.info("promo %r not redeemed by %s: %s", shown, telegram_id, exc.code)
        await send(tg, chat_id, text(lang, key, code=shown))
        return
    reply = text(
        lang,
        "growth.promo.redeemed",
        code=result.code,
        credits=result.credits,
        balance=result.balance,
    )
    await send(tg, chat_id, reply)


async def promo(
    message: Message,
    command: CommandObject,
    backend: BackendClient,
    tg: TelegramSender,
    lang: str,
) -> None:
    user = message.from_user
    assert user is not None
    code = (command.args or "").strip()
    if not code:
        await send(tg, message.chat.id, text(lang, "growth.promo.usage"))
        return
    # Get-or-create: someone who types /promo before /start is still a user.
    await backend.register(
        user.id, username=user.username, first_name=user.first_name, language_code=lang
    )
    await redeem(backend, tg, message.chat.id, user.id, lang, code.split()[0])


async def invite(
    message: Message,
    bot: Bot,
    backend: BackendClient,
    tg: TelegramSender,
    lang: str,
    settings: Settings,
) -> None:
    """The user's referral link t.me/<bot>?start=ref_<code> (the code made on first ask)."""
    user = message.from_user
    assert user is not None
    await backend.register(
        user.id, username=user.username, first_name=user.first_name, language_code=lang
    )
    try:
        invitation = await backend.invite(user.id)
    except BackendError as exc:
        if exc.code == "user_banned":
            await send(tg, message.chat.id, text(lang, "bot.errors.banned"))
            return
        raise
    me = await bot.me()  # getMe once per process (aiogram keeps it)
    link = f"https://t.me/{me.username}?start={REF_PREFIX}{invitation.invite_code}"
    key = "growth.invite.text" if settings.referral_bonus > 0 else "growth.invite.no_bonus"
    reply = text(
        lang,
        key,
        link=link,
        bonus=settings.referral_bonus,
        invited=invitation.invited,
        credits=invitation.credits,
    )
    await send(tg, message.chat.id, reply)


async def tell_referrer(tg: TelegramSender, payment: Payment) -> None:
    """Tell the referrer, in their language, about the bonus `payment` earned them (the one
    confirmation that credited it carries ``referral``). Best effort: a referrer who blocked
    the bot or a Telegram outage loses the message, never the credits."""
    reward = payment.referral
    if reward is None:
        return
    lang = language_of(reward.language_code)
    message = text(lang, "growth.referral.rewarded", credits=reward.credits, balance=reward.balance)
    method = SendMessage(chat_id=reward.telegram_id, text=message)
    try:
        await tg.call(method, chat_id=reward.telegram_id)
    except (UserBlocked, MessageGone, TelegramUnavailable) as exc:
        log.info("referral bonus of %s not told: %s", reward.telegram_id, exc)


def create_router() -> Router:
    router = Router(name="growth")
    router.message.register(promo, Command("promo"))
    router.message.register(invite, Command("invite"))
    return router
