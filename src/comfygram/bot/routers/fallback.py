"""Everything no other router took: a short, friendly explanation, never silence."""

from __future__ import annotations

from aiogram import Router
from aiogram.types import CallbackQuery, Message

from comfygram.bot.replies import send
from comfygram.i18n import t
from comfygram.telegram import TelegramSender


def _about(message: Message) -> str:
    """Which explanation fits what the user sent."""
    if message.text is not None:
        return "unknown_command" if message.text.startswith("/") else "text"
    if message.sticker is not None:
        return "sticker"
    if message.voice is not None or message.audio is not None or message.video_note is not None:
        return "voice"
    if message.video is not None or message.animation is not None:
        return "video"
    if message.document is not None:
        return "document"
    return "other"


async def anything(message: Message, tg: TelegramSender, lang: str) -> None:
    await send(tg, message.chat.id, t(lang, f"bot.fallback.{_about(message)}"))


async def stale_button(query: CallbackQuery, lang: str) -> None:
    await query.answer(t(lang, "bot.fallback.button"), show_alert=False)


def create_router() -> Router:
    router = Router(name="fallback")
    router.message.register(anything)
    router.callback_query.register(stale_button)
    return router
