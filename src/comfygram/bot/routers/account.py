"""The user's account: /balance, /help, /lang, and /terms (Stars rules; /paysupport is in
support.py)."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.methods import EditMessageText
from aiogram.types import CallbackQuery, Message

from comfygram.api import BackendClient
from comfygram.bot import keyboards
from comfygram.bot.callbacks import Language
from comfygram.bot.keyboards import menu_labels
from comfygram.bot.languages import LanguageStore
from comfygram.bot.replies import send
from comfygram.i18n import LANGUAGES, t
from comfygram.telegram import TelegramSender


async def balance(message: Message, backend: BackendClient, tg: TelegramSender, lang: str) -> None:
    user = message.from_user
    assert user is not None
    # Register is get-or-create: someone who never sent /start still gets an answer.
    account = await backend.register(
        user.id,
        username=user.username,
        first_name=user.first_name,
        language_code=user.language_code,
    )
    text = t(lang, "bot.balance.text", balance=account.balance)
    await send(tg, message.chat.id, text, keyboards.top_up(lang))


async def help_(message: Message, tg: TelegramSender, lang: str) -> None:
    await send(tg, message.chat.id, t(lang, "bot.help.text"))


async def terms(message: Message, tg: TelegramSender, lang: str) -> None:
    await send(tg, message.chat.id, t(lang, "bot.terms.text"))


async def choose_language(message: Message, tg: TelegramSender, lang: str) -> None:
    await send(tg, message.chat.id, t(lang, "bot.lang.choose"), keyboards.languages())


async def language_chosen(
    query: CallbackQuery,
    callback_data: Language,
    backend: BackendClient,
    tg: TelegramSender,
    languages: LanguageStore,
) -> None:
    code = callback_data.code
    if code not in LANGUAGES:
        await query.answer()
        return
    user = query.from_user
    await backend.register(
        user.id, username=user.username, first_name=user.first_name, language_code=code
    )
    await languages.choose(user.id, code)
    await query.answer()
    text = t(code, "bot.lang.chosen")
    if query.message is not None:
        chat_id = query.message.chat.id
        edit = EditMessageText(chat_id=chat_id, message_id=query.message.message_id, text=text)
        await tg.call(edit, chat_id=chat_id)
        # The reply keyboard's labels are per language: send it again in the new one.
        await send(tg, chat_id, t(code, "bot.lang.menu"), keyboards.main_menu(code))


def create_router() -> Router:
    router = Router(name="account")
    router.message.register(balance, Command("balance"))
    router.message.register(balance, F.text.in_(menu_labels("balance")))
    router.message.register(help_, Command("help"))
    router.message.register(help_, F.text.in_(menu_labels("help")))
    router.message.register(terms, Command("terms"))
    router.message.register(choose_language, Command("lang", "language"))
    router.callback_query.register(language_chosen, Language.filter())
    return router
