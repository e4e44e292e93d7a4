"""Dispatcher middlewares: duplicate updates, language, the backend client, flood control;
and one request middleware that makes answering a button press best effort.

All their state lives in Redis under ``{prefix}:bot:``, so several bot processes (polling, or
backend replicas receiving webhooks) share it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware, Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import TelegramAPIError
from aiogram.methods import AnswerCallbackQuery, SendMessage, TelegramMethod
from aiogram.types import CallbackQuery, Message, TelegramObject, Update, User
from redis.asyncio import Redis
from redis.exceptions import RedisError

from comfygram.api import BackendClient
from comfygram.bot.keys import bot_key
from comfygram.bot.languages import LanguageStore
from comfygram.i18n import DEFAULT_LANGUAGE, t

log = logging.getLogger(__name__)

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]

# Telegram retries a webhook update it got no 2xx for; remember ids longer than it retries.
UPDATE_ID_TTL_SECONDS = 24 * 3600


class DedupeMiddleware(BaseMiddleware):
    """Drop an update whose update_id was already seen (Telegram's webhook retries)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        assert isinstance(event, Update)
        key = bot_key(self.prefix, "update", event.update_id)
        try:
            first = await self.redis.set(key, "1", nx=True, ex=UPDATE_ID_TTL_SECONDS)
        except RedisError as exc:
            # Better to risk handling a retry twice (every effect is idempotent) than drop it.
            log.warning("update %s not deduplicated: %s", event.update_id, type(exc).__name__)
            first = True
        if not first:
            log.info("update %s seen before; skipped", event.update_id)
            return None
        return await handler(event, data)


class LanguageMiddleware(BaseMiddleware):
    """Puts ``lang`` ("en" or "ru") into the handler data."""

    def __init__(self, languages: LanguageStore) -> None:
        self.languages = languages

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        user: User | None = data.get("event_from_user")
        if user is None:
            data["lang"] = DEFAULT_LANGUAGE
        else:
            data["lang"] = await self.languages.get(user.id, user.language_code)
        return await handler(event, data)


class BackendMiddleware(BaseMiddleware):
    """Puts the backend client into the handler data as ``backend``."""

    def __init__(self, backend: BackendClient) -> None:
        self.backend = backend

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        data["backend"] = self.backend
        return await handler(event, data)


# A token bucket per user: `capacity` events at once, refilled at `rate` per second. Redis's
# clock, so processes on different machines agree.
_TAKE_TOKEN = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
return allowed
"""


class ThrottlingMiddleware(BaseMiddleware):
    """Flood control per user, shared by every bot process through Redis.

    A throttled message is dropped; the first one of a flood gets one "slow down" reply. A
    throttled button press is answered with a short notice (Telegram shows a spinner until
    the press is answered). Payment service messages are never throttled.
    """

    def __init__(self, redis: Redis, prefix: str, kind: str, capacity: int, rate: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.kind = kind
        self.capacity = capacity
        self.rate = rate
        self._take = redis.register_script(_TAKE_TOKEN)

    async def allowed(self, user_id: int) -> bool:
        key = bot_key(self.prefix, "throttle", self.kind, user_id)
        try:
            return bool(await self._take(keys=[key], args=[self.capacity, self.rate]))
        except RedisError as exc:
            log.warning("throttle check skipped: %s", type(exc).__name__)
            return True

    async def _first_of_flood(self, user_id: int) -> bool:
        key = bot_key(self.prefix, "throttled", self.kind, user_id)
        seconds = max(1, math.ceil(self.capacity / self.rate))
        try:
            return bool(await self.redis.set(key, "1", nx=True, ex=seconds))
        except RedisError:
            return False

    async def _later_in_album(self, event: TelegramObject) -> bool:
        """A photo of an album after its first: the album counts as one message."""
        if not isinstance(event, Message) or event.media_group_id is None:
            return False
        key = bot_key(self.prefix, "throttle", "album", event.chat.id, event.media_group_id)
        try:
            return not await self.redis.set(key, "1", nx=True, ex=60)
        except RedisError:
            return False

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        user: User | None = data.get("event_from_user")
        if user is None or (isinstance(event, Message) and event.successful_payment):
            return await handler(event, data)
        if await self._later_in_album(event):
            return await handler(event, data)
        if await self.allowed(user.id):
            return await handler(event, data)
        log.info("throttled %s from user %s", self.kind, user.id)
        text = t(data.get("lang"), "bot.throttled")
        if isinstance(event, CallbackQuery):
            await data["bot"](AnswerCallbackQuery(callback_query_id=event.id, text=text))
        elif isinstance(event, Message) and await self._first_of_flood(user.id):
            await data["tg"].call(
                SendMessage(chat_id=event.chat.id, text=text), chat_id=event.chat.id
            )
        return None


class BestEffortCallbackAnswers(BaseRequestMiddleware):
    """answerCallbackQuery never fails the handler that called it.

    Answering a press only stops the spinner on the button. Telegram refuses answers after
    about 15 seconds ("query is too old"), which is what every press made while the bot was
    restarting or catching up gets; the press itself must still be acted on. Registered on
    the bot's session, so every caller (handlers, flood control, error replies) is covered.
    """

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[Any],
        bot: Bot,
        method: TelegramMethod[Any],
    ) -> Any:
        if not isinstance(method, AnswerCallbackQuery):
            return await make_request(bot, method)
        try:
            return await make_request(bot, method)
        except (TelegramAPIError, OSError, TimeoutError) as exc:
            log.info("button press not answered (%s); acting on it anyway", exc)
            return False
