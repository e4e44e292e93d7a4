"""What the user hears when something fails underneath a handler.

The backend down or slow: "try again in a minute" (every job and payment call is idempotent,
so trying again never charges twice); Redis down: a warning line, and the same words if they
can be sent at all. A user who blocked the bot: marked in the backend and
not messaged. Anything else: logged, and a short apology instead of silence.
"""

from __future__ import annotations

import contextlib
import logging

from aiogram import Bot, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import ExceptionTypeFilter
from aiogram.types import Chat, ErrorEvent, User
from redis.exceptions import RedisError

from comfygram.api import BackendError, BackendUnavailable
from comfygram.bot.blocking import BlockedFlags
from comfygram.bot.replies import send
from comfygram.i18n import DEFAULT_LANGUAGE, t
from comfygram.telegram import MessageGone, TelegramSender, TelegramUnavailable, UserBlocked

log = logging.getLogger(__name__)


async def _tell(
    event: ErrorEvent, bot: Bot, tg: TelegramSender, chat: Chat | None, lang: str, key: str
) -> None:
    text = t(lang, key)
    query = event.update.callback_query
    if query is not None:
        # The spinner on the button stops only when the press is answered.
        with contextlib.suppress(TelegramAPIError):
            await bot.answer_callback_query(query.id)
    if chat is None:
        return
    with contextlib.suppress(UserBlocked, MessageGone, TelegramUnavailable, TelegramAPIError):
        await send(tg, chat.id, text)


async def backend_unavailable(
    event: ErrorEvent,
    bot: Bot,
    tg: TelegramSender,
    event_chat: Chat | None = None,
    lang: str = DEFAULT_LANGUAGE,
) -> None:
    log.warning(
        "backend unavailable while handling update %s: %s", event.update.update_id, event.exception
    )
    await _tell(event, bot, tg, event_chat, lang, "bot.errors.backend_down")


async def redis_unavailable(
    event: ErrorEvent,
    bot: Bot,
    tg: TelegramSender,
    event_chat: Chat | None = None,
    lang: str = DEFAULT_LANGUAGE,
) -> None:
    """Conversations, flood control and the Telegram rate budget live in Redis: without it the
    update cannot be handled (and most likely no reply can be sent either)."""
    log.warning(
        "Redis unavailable while handling update %s (%s): check REDIS_URL and that Redis runs",
        event.update.update_id,
        type(event.exception).__name__,
    )
    with contextlib.suppress(RedisError):
        await _tell(event, bot, tg, event_chat, lang, "bot.errors.backend_down")


async def user_blocked(
    event: ErrorEvent, blocked_flags: BlockedFlags, event_from_user: User | None = None
) -> None:
    if event_from_user is not None:
        await blocked_flags.mark(event_from_user.id, blocked=True)


async def telegram_unavailable(event: ErrorEvent) -> None:
    log.warning(
        "Telegram unavailable while handling update %s: %s", event.update.update_id, event.exception
    )


async def message_gone(event: ErrorEvent) -> None:
    log.info("message gone while handling update %s", event.update.update_id)


async def unexpected(
    event: ErrorEvent,
    bot: Bot,
    tg: TelegramSender,
    event_chat: Chat | None = None,
    lang: str = DEFAULT_LANGUAGE,
) -> None:
    log.error("update %s failed", event.update.update_id, exc_info=event.exception)
    await _tell(event, bot, tg, event_chat, lang, "bot.errors.unexpected")


async def backend_refused(
    event: ErrorEvent,
    bot: Bot,
    tg: TelegramSender,
    event_chat: Chat | None = None,
    lang: str = DEFAULT_LANGUAGE,
) -> None:
    """A refusal no handler expected; a user the operator blocked is told so kindly."""
    exception = event.exception
    if isinstance(exception, BackendError) and exception.code == "user_banned":
        log.info("update %s: the user is blocked by the operator", event.update.update_id)
        await _tell(event, bot, tg, event_chat, lang, "bot.errors.banned")
        return
    await unexpected(event, bot, tg, event_chat, lang)


def create_router() -> Router:
    router = Router(name="errors")
    router.errors.register(backend_unavailable, ExceptionTypeFilter(BackendUnavailable))
    router.errors.register(redis_unavailable, ExceptionTypeFilter(RedisError))
    router.errors.register(user_blocked, ExceptionTypeFilter(UserBlocked))
    router.errors.register(message_gone, ExceptionTypeFilter(MessageGone))
    router.errors.register(telegram_unavailable, ExceptionTypeFilter(TelegramUnavailable))
    router.errors.register(backend_refused, ExceptionTypeFilter(BackendError))
    router.errors.register(unexpected)
    return router
