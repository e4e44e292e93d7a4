"""Where the photo behind a preset keyboard comes from, and fetching its bytes.

Every preset keyboard the bot sends is tied (in Redis, by chat and message id) to its photo:
a Telegram file the user sent, or the input of an earlier job (the result's "another preset"
button: the backend still has that photo, so nothing has to be kept per job here). Pressing a
button on an old keyboard therefore uses that keyboard's photo, not the latest one.
"""

from __future__ import annotations

import logging

import aiohttp
from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from pydantic import BaseModel
from redis.asyncio import Redis

from comfygram.api import BackendClient
from comfygram.bot.keys import bot_key

log = logging.getLogger(__name__)

# getFile serves files up to 20 MB; bigger ones cannot be fetched by a bot at all.
TELEGRAM_DOWNLOAD_LIMIT = 20 * 1024 * 1024
KEYBOARD_TTL_SECONDS = 7 * 24 * 3600


class PhotoSource(BaseModel):
    """A Telegram file (``file_id``) or an earlier job's input (``job_id``)."""

    file_id: str | None = None
    file_size: int | None = None
    filename: str = "photo.jpg"
    job_id: str | None = None


class ImageTooLarge(Exception):
    """The file is over what the bot can download or the backend accepts."""


class ImageUnavailable(Exception):
    """Telegram would not hand the file over (expired, deleted, network)."""


class SourceStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, chat_id: int, message_id: int) -> str:
        return bot_key(self.prefix, "keyboard", chat_id, message_id)

    async def attach(self, chat_id: int, message_id: int, source: PhotoSource) -> None:
        await self.redis.set(
            self._key(chat_id, message_id), source.model_dump_json(), ex=KEYBOARD_TTL_SECONDS
        )

    async def find(self, chat_id: int, message_id: int) -> PhotoSource | None:
        raw = await self.redis.get(self._key(chat_id, message_id))
        return PhotoSource.model_validate_json(raw) if raw else None


async def load_image(
    source: PhotoSource, bot: Bot, backend: BackendClient, limit: int
) -> tuple[bytes, str]:
    """The photo's bytes and a file name for the upload."""
    if source.job_id is not None:
        data, _content_type = await backend.job_input(source.job_id)
        return data, source.filename
    assert source.file_id is not None
    if source.file_size is not None and source.file_size > limit:
        raise ImageTooLarge
    try:
        file = await bot.get_file(source.file_id)
        if file.file_size is not None and file.file_size > limit:
            raise ImageTooLarge
        buffer = await bot.download(file)
    except TelegramBadRequest as exc:
        if "too big" in exc.message.lower():
            raise ImageTooLarge from None
        raise ImageUnavailable(exc.message) from None
    except (TelegramAPIError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("photo download failed: %s", type(exc).__name__)
        raise ImageUnavailable(type(exc).__name__) from None
    assert buffer is not None
    data = buffer.read()
    if len(data) > limit:
        raise ImageTooLarge
    return data, source.filename
