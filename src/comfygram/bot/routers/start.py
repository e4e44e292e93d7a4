"""/start: register (with the signup bonus and a deep-link referral), greet, show the menu.

Start links: ``ref_<invite code>`` makes a user who registers with it the inviter's referral
(the backend decides: only on the first /start ever); ``promo_<CODE>`` redeems a promo code
after the greeting."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import CommandObject, CommandStart
from aiogram.fsm.context import FSMContext
from aiogram.types import Message

from comfygram.api import BackendClient
from comfygram.bot import keyboards
from comfygram.bot.languages import LanguageStore
from comfygram.bot.replies import mark_blocked, send
from comfygram.bot.routers.growth import promo_code_of, redeem
from comfygram.bot.texts import text
from comfygram.i18n import language_of
from comfygram.telegram import TelegramSender

# The backend keeps up to 64 characters; Telegram's start parameter is at most 64 anyway.
REFERRAL_MAX = 64


async def start(
    message: Message,
    command: CommandObject,
    state: FSMContext,
    backend: BackendClient,
    tg: TelegramSender,
    languages: LanguageStore,
) -> None:
    await state.clear()
    user = message.from_user
    assert user is not None
    account = await backend.register(
        user.id,
        username=user.username,
        first_name=user.first_name,
        language_code=user.language_code,
        referral=(command.args or "").strip()[:REFERRAL_MAX] or None,
    )
    if account.blocked_bot:
        # They are talking to us again, so they unblocked the bot.
        await mark_blocked(backend, user.id, blocked=False)
    lang = language_of(account.language_code or user.language_code)
    await languages.remember(user.id, lang)
    reply = text(lang, "bot.start.greeting", name=user.first_name or "", balance=account.balance)
    await send(tg, message.chat.id, reply, keyboards.main_menu(lang))
    code = promo_code_of(command.args)
    if code is not None:
        await redeem(backend, tg, message.chat.id, user.id, lang, code)


def create_router() -> Router:
    router = Router(name="start")
    router.message.register(start, CommandStart())
    return router
