"""Sending the bot's messages, and the replies several routers share.

Every message goes through the shared TelegramSender, so the bot and the workers stay within
one rate budget per chat and overall, and 429s are waited out rather than hammered.
"""

from __future__ import annotations

import contextlib
import logging

from aiogram.methods import SendMessage
from aiogram.types import InlineKeyboardMarkup, Message, ReplyKeyboardMarkup

from comfygram.api import BackendClient, BackendError, BackendUnavailable
from comfygram.bot import keyboards
from comfygram.i18n import t
from comfygram.settings import Settings
from comfygram.telegram import TelegramSender

log = logging.getLogger(__name__)

Markup = InlineKeyboardMarkup | ReplyKeyboardMarkup


async def send(
    tg: TelegramSender, chat_id: int, text: str, markup: Markup | None = None
) -> Message | None:
    method = SendMessage(chat_id=chat_id, text=text, reply_markup=markup)
    return await tg.call(method, chat_id=chat_id)


async def offer_packages(
    tg: TelegramSender, chat_id: int, lang: str, settings: Settings, intro: str | None = None
) -> None:
    text = intro or t(lang, "bot.buy.choose")
    await send(tg, chat_id, text, keyboards.packages(settings.credit_packages, lang))


async def not_enough_credits(
    tg: TelegramSender, chat_id: int, lang: str, settings: Settings, error: BackendError
) -> None:
    """Say how many credits are missing and offer the packages right there."""
    details = error.body.get("error", {})
    missing = details.get("missing")
    balance = details.get("balance")
    if isinstance(missing, int) and isinstance(balance, int):
        await short_of_credits(tg, chat_id, lang, settings, missing, balance)
    else:
        await offer_packages(tg, chat_id, lang, settings, t(lang, "bot.credits.not_enough"))


async def short_of_credits(
    tg: TelegramSender, chat_id: int, lang: str, settings: Settings, missing: int, balance: int
) -> None:
    intro = t(lang, "bot.credits.missing", missing=missing, balance=balance)
    await offer_packages(tg, chat_id, lang, settings, intro)


async def mark_blocked(backend: BackendClient, telegram_id: int, blocked: bool = True) -> None:
    """Record that the user blocked (or unblocked) the bot; best effort."""
    with contextlib.suppress(BackendError, BackendUnavailable):
        await backend.update_user(telegram_id, blocked_bot=blocked)
