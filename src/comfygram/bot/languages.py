"""Which language to talk to a user in: their /lang choice, else their Telegram language.

The choice is stored on the user in the backend (``language_code``, which the worker reads
too) and cached in Redis for a day, so most updates cost no backend call.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from comfygram.api import BackendClient, BackendError, BackendUnavailable
from comfygram.bot.keys import bot_key
from comfygram.i18n import language_of

log = logging.getLogger(__name__)
CACHE_SECONDS = 24 * 3600
LOOKUP_TIMEOUT_SECONDS = 2.0


class LanguageStore:
    def __init__(self, redis: Redis, prefix: str, backend: BackendClient) -> None:
        self.redis = redis
        self.prefix = prefix
        self.backend = backend

    def _key(self, telegram_id: int) -> str:
        return bot_key(self.prefix, "lang", telegram_id)

    async def get(self, telegram_id: int, telegram_code: str | None) -> str:
        try:
            cached = await self.redis.get(self._key(telegram_id))
        except RedisError:
            cached = None
        if cached:
            return str(cached)
        try:
            # Briefly: a pre-checkout query must be answered within Telegram's 10 seconds.
            user = await asyncio.wait_for(self.backend.user(telegram_id), LOOKUP_TIMEOUT_SECONDS)
        except (BackendError, BackendUnavailable, TimeoutError):
            # Not registered yet, or the backend is away: Telegram's language will do.
            return language_of(telegram_code)
        language = language_of(user.language_code or telegram_code)
        await self.remember(telegram_id, language)
        return language

    async def remember(self, telegram_id: int, language: str) -> None:
        try:
            await self.redis.set(self._key(telegram_id), language, ex=CACHE_SECONDS)
        except RedisError as exc:
            log.warning("language cache not written: %s", type(exc).__name__)

    async def choose(self, telegram_id: int, language: str) -> None:
        """Store the /lang choice in the backend (raises BackendUnavailable) and the cache."""
        await self.backend.update_user(telegram_id, language_code=language)
        await self.remember(telegram_id, language)
