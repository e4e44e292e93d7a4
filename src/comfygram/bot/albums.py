"""Photos sent together (an album: one message per photo, sharing a ``media_group_id``) are
answered once, not once per photo.

Each photo of the album is noted in Redis; the first one to arrive (in any bot process) waits
until no more have come for a moment, then answers for the whole album: its photos in the order
they were sent (by message id) fill a preset's photo slots in turn.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from pydantic import BaseModel
from redis.asyncio import Redis

from comfygram.bot.keys import bot_key
from comfygram.bot.sources import PhotoSource

# Telegram delivers an album's messages within a fraction of a second of each other.
QUIET_SECONDS = 0.7
MAX_WAIT_SECONDS = 3.0
KEEP_SECONDS = 120


class _Item(BaseModel):
    message_id: int
    source: PhotoSource


@dataclass
class Album:
    """The album as it arrived: its photos in order, and its first message."""

    photos: list[PhotoSource]
    message_id: int

    @property
    def first(self) -> PhotoSource:
        return self.photos[0]

    @property
    def count(self) -> int:
        return len(self.photos)


class Albums:
    def __init__(
        self,
        redis: Redis,
        prefix: str,
        quiet_seconds: float = QUIET_SECONDS,
        max_wait_seconds: float = MAX_WAIT_SECONDS,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.quiet_seconds = quiet_seconds
        self.max_wait_seconds = max_wait_seconds

    def _key(self, chat_id: int, group_id: str, *suffix: str) -> str:
        return bot_key(self.prefix, "album", chat_id, group_id, *suffix)

    async def first_in(self, chat_id: int, group_id: str) -> bool:
        """Whether this message is the album's first to arrive (so it answers for all)."""
        claimed = await self.redis.set(
            self._key(chat_id, group_id, "owner"), "1", nx=True, ex=KEEP_SECONDS
        )
        return bool(claimed)

    async def collect(
        self, chat_id: int, group_id: str, message_id: int, source: PhotoSource
    ) -> Album | None:
        """Note this photo of the album; the album once complete for the message that answers
        for it, None for the others."""
        items = self._key(chat_id, group_id)
        item = _Item(message_id=message_id, source=source)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(items, item.model_dump_json())
            pipe.expire(items, KEEP_SECONDS)
            await pipe.execute()
        if not await self.first_in(chat_id, group_id):
            return None
        deadline = time.monotonic() + self.max_wait_seconds
        seen = 0
        while time.monotonic() < deadline:
            count = await self.redis.llen(items)
            if count == seen:
                break  # nothing new for a quiet moment: that was all of it
            seen = count
            await asyncio.sleep(self.quiet_seconds)
        photos = [_Item.model_validate_json(raw) for raw in await self.redis.lrange(items, 0, -1)]
        photos.sort(key=lambda photo: photo.message_id)
        return Album(photos=[p.source for p in photos], message_id=photos[0].message_id)
