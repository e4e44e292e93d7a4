"""Where the photo behind a preset keyboard comes from, and fetching its bytes.

Every preset keyboard the bot sends is tied (in Redis, by chat and message id) to its photo:
a Telegram file the user sent, or the input of an earlier job (the result's "another preset"
button: the backend still has that photo, so nothing has to be kept per job here). Pressing a
button on an old keyboard therefore uses that keyboard's photo, not the latest one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import aiohttp
from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from pydantic import BaseModel, TypeAdapter
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
    # The same file through any file_id (unset on keyboards stored before it was recorded).
    file_unique_id: str | None = None
    file_size: int | None = None
    filename: str = "photo.jpg"
    job_id: str | None = None
    # Which of that job's inputs (a job of a several-photo preset has one per slot).
    index: int = 0


_Photos = TypeAdapter(list[PhotoSource])


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

    async def attach(self, chat_id: int, message_id: int, photos: list[PhotoSource]) -> None:
        """Tie the keyboard to its photos (several for an album, in the order sent)."""
        raw = _Photos.dump_json(photos).decode()
        await self.redis.set(self._key(chat_id, message_id), raw, ex=KEYBOARD_TTL_SECONDS)

    async def find(self, chat_id: int, message_id: int) -> list[PhotoSource]:
        """The keyboard's photos; none for a keyboard sent before any photo (preset first)."""
        raw = await self.redis.get(self._key(chat_id, message_id))
        if not raw:
            return []
        if raw.lstrip().startswith("{"):  # stored before albums kept all their photos
            return [PhotoSource.model_validate_json(raw)]
        return _Photos.validate_json(raw)


class ImageCache:
    """Photos downloaded from Telegram lately, by file, in this process's memory.

    An order downloads its photo once; a double tap (replayed), another preset on the same
    photo, or a new press after the job ended reuse it rather than asking Telegram again.
    Concurrent loads of one file share a single download. Bounded in bytes and in time.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024, seconds: float = 600.0) -> None:
        self.max_bytes = max_bytes
        self.seconds = seconds
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._loading: dict[str, asyncio.Future[bytes]] = {}

    def _get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if time.monotonic() - entry[0] > self.seconds:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def _put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        self._entries[key] = (time.monotonic(), data)
        self._entries.move_to_end(key)
        while sum(len(d) for _, d in self._entries.values()) > self.max_bytes:
            self._entries.popitem(last=False)

    async def get_or_load(self, key: str, load: Callable[[], Awaitable[bytes]]) -> bytes:
        cached = self._get(key)
        if cached is not None:
            return cached
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            data = await load()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters, if any, get it too
            raise
        else:
            future.set_result(data)
            self._put(key, data)
            return data
        finally:
            del self._loading[key]


async def load_image(
    source: PhotoSource,
    bot: Bot,
    backend: BackendClient,
    limit: int,
    cache: ImageCache | None = None,
) -> tuple[bytes, str]:
    """The photo's bytes and a file name for the upload."""
    if source.job_id is not None:
        data, _content_type = await backend.job_input(source.job_id, source.index)
        return data, source.filename
    assert source.file_id is not None
    if source.file_size is not None and source.file_size > limit:
        raise ImageTooLarge
    if cache is None:
        return await _download(source, bot, limit), source.filename
    key = source.file_unique_id or source.file_id
    return await cache.get_or_load(key, lambda: _download(source, bot, limit)), source.filename


async def _download(source: PhotoSource, bot: Bot, limit: int) -> bytes:
    """One getFile and one download (``bot.download(file)`` would call getFile again)."""
    assert source.file_id is not None
    try:
        file = await bot.get_file(source.file_id)
        if file.file_size is not None and file.file_size > limit:
            raise ImageTooLarge
        if file.file_path is None:
            raise ImageUnavailable("no file_path")
        buffer = await bot.download_file(file.file_path)
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
    return data
