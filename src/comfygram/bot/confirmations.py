"""The order behind each confirmation message, kept in Redis by chat and message id.

The "Start" button places the order its message shows, read from here rather than from the
conversation's state: a double tap (or a redelivered press) after the first one cleared the
state still finds the same order, and so makes the same idempotency key and one job.
"""

from __future__ import annotations

from redis.asyncio import Redis

from comfygram.bot.drafts import Draft
from comfygram.bot.keys import bot_key
from comfygram.bot.sources import KEYBOARD_TTL_SECONDS


class Confirmations:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, chat_id: int, message_id: int) -> str:
        return bot_key(self.prefix, "confirm", chat_id, message_id)

    async def attach(self, chat_id: int, message_id: int, draft: Draft) -> None:
        raw = draft.model_dump_json()
        await self.redis.set(self._key(chat_id, message_id), raw, ex=KEYBOARD_TTL_SECONDS)

    async def find(self, chat_id: int, message_id: int) -> Draft | None:
        raw = await self.redis.get(self._key(chat_id, message_id))
        return Draft.model_validate_json(raw) if raw else None

    async def drop(self, chat_id: int, message_id: int) -> None:
        """The order was changed (Back) or dropped (Cancel): its Start button no longer acts."""
        await self.redis.delete(self._key(chat_id, message_id))
