"""The job's status message while it waits in the queue: position and estimated wait.

The bot sends one status message per job and keeps its queue position fresh until a worker
takes the job; from then on the worker edits the same message. Tracked jobs live in a Redis
hash, so a restarted bot (or another replica) carries on; one Redis lock per round keeps
several processes from doing the same edits. Each round costs one backend call for the whole
queue, and an edit only where the text changed, through the shared Telegram rate budget.

A preset with live previews gets a photo status message instead (the user's first photo, made
small, with the status as its caption), because the worker later swaps in ComfyUI's preview
frames with editMessageMedia, which cannot turn a text message into a photo. Its edits are
caption edits.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import secrets
import time
from typing import Any

from aiogram.exceptions import TelegramBadRequest
from aiogram.methods import EditMessageCaption, EditMessageText
from aiogram.types import InlineKeyboardMarkup
from PIL import Image, ImageOps
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from comfygram.api import BackendClient, BackendError, BackendUnavailable, Job
from comfygram.bot import keyboards
from comfygram.bot.keys import bot_key
from comfygram.i18n import t
from comfygram.logs import job_context
from comfygram.telegram import MessageGone, TelegramSender, TelegramUnavailable, UserBlocked

log = logging.getLogger(__name__)

# Before the first job has finished there is nothing measured; a modest guess.
DEFAULT_RUN_SECONDS = 30.0
# Estimates are rounded up to this, so small changes in the median do not cause edits.
ETA_STEP_SECONDS = 10


class Eta:
    """Estimated wait from the median measured run time and the number of live, healthy
    workers; none at all means no estimate (nothing is being worked off)."""

    def __init__(self, backend: BackendClient, cache_seconds: float = 10.0) -> None:
        self.backend = backend
        self.cache_seconds = cache_seconds
        self._median = DEFAULT_RUN_SECONDS
        self._workers = 1  # until the backend has told: assume the usual
        self._fetched = -math.inf

    async def refresh(self) -> None:
        if time.monotonic() - self._fetched < self.cache_seconds:
            return
        try:
            measured = await self.backend.run_times()
        except (BackendError, BackendUnavailable) as exc:
            log.info("run times unavailable (%s); keeping the last estimate", exc)
            return
        self._median = measured.median_seconds or DEFAULT_RUN_SECONDS
        self._workers = max(0, measured.workers)
        self._fetched = time.monotonic()

    def seconds(self, position: int) -> int | None:
        """Until the job at ``position`` is done: the rounds of work ahead, its own included.
        None while no GPU (worker) serves the queue: any number would be made up."""
        if self._workers == 0:
            return None
        rounds = math.ceil(max(1, position) / self._workers)
        return math.ceil(rounds * self._median / ETA_STEP_SECONDS) * ETA_STEP_SECONDS


def format_wait(lang: str, seconds: int) -> str:
    if seconds < 90:
        return t(lang, "bot.status.eta_seconds", seconds=seconds)
    return t(lang, "bot.status.eta_minutes", minutes=math.ceil(seconds / 60))


def queued_text(lang: str, position: int, seconds: int | None) -> str:
    """The status message of a queued job; ``seconds`` None: no GPU serves the queue now."""
    if seconds is None:
        return t(lang, "bot.status.queued_no_gpu", position=position)
    return t(lang, "bot.status.queued", position=position, wait=format_wait(lang, seconds))


# The photo status message: within this many pixels (a preview frame is within 512).
STATUS_PICTURE_SIZE = 512


def status_picture(data: bytes) -> bytes:
    """The picture of a photo status message: the photo made small, as JPEG; a plain grey one
    when the photo cannot be read (a status message it must be, all the same)."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.draft("RGB", (STATUS_PICTURE_SIZE, STATUS_PICTURE_SIZE))
            image = ImageOps.exif_transpose(opened).convert("RGB")
            image.thumbnail((STATUS_PICTURE_SIZE, STATUS_PICTURE_SIZE))
    except (OSError, ValueError, Image.DecompressionBombError):
        image = Image.new("RGB", (64, 64), (128, 128, 128))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def status_edit(
    chat_id: int,
    message_id: int,
    text: str,
    *,
    photo: bool,
    markup: InlineKeyboardMarkup | None = None,
) -> EditMessageText | EditMessageCaption:
    """The edit that puts ``text`` into a status message: its caption when it is a photo."""
    if photo:
        return EditMessageCaption(
            chat_id=chat_id, message_id=message_id, caption=text, reply_markup=markup
        )
    return EditMessageText(chat_id=chat_id, message_id=message_id, text=text, reply_markup=markup)


async def edit_status(
    tg: TelegramSender,
    chat_id: int,
    message_id: int,
    text: str,
    *,
    photo: bool,
    markup: InlineKeyboardMarkup | None = None,
    edit: bool = True,
) -> Any:
    """Edit a status message's text or caption; when it turns out to be of the other kind
    (a caller that cannot know), the other edit."""
    try:
        method = status_edit(chat_id, message_id, text, photo=photo, markup=markup)
        return await tg.call(method, chat_id=chat_id, edit=edit)
    except TelegramBadRequest as exc:
        wrong = "no caption in the message" if photo else "no text in the message"
        if wrong not in exc.message.lower():
            raise
    method = status_edit(chat_id, message_id, text, photo=not photo, markup=markup)
    return await tg.call(method, chat_id=chat_id, edit=edit)


class Tracked(BaseModel):
    telegram_id: int
    chat_id: int
    message_id: int
    lang: str
    text: str
    photo: bool = False  # a photo status message (a previews preset): edit its caption


class QueueTracker:
    def __init__(
        self,
        redis: Redis,
        prefix: str,
        backend: BackendClient,
        tg: TelegramSender,
        eta: Eta,
        interval: float = 5.0,
    ) -> None:
        self.redis = redis
        self.backend = backend
        self.tg = tg
        self.eta = eta
        self.interval = interval
        self.key = bot_key(prefix, "tracked")
        self.lock = bot_key(prefix, "tracked", "lock")

    async def track(
        self, job: Job, chat_id: int, message_id: int, lang: str, text: str, photo: bool = False
    ) -> None:
        entry = Tracked(
            telegram_id=job.telegram_id,
            chat_id=chat_id,
            message_id=message_id,
            lang=lang,
            text=text,
            photo=photo,
        )
        await self.redis.hset(self.key, job.id, entry.model_dump_json())

    async def forget(self, job_id: str) -> None:
        await self.redis.hdel(self.key, job_id)

    async def run(self) -> None:
        """Refresh every tracked job each ``interval`` seconds, until cancelled."""
        trouble: str | None = None  # said once per outage, not every round
        while True:
            try:
                await self.tick()
            except (RedisError, BackendUnavailable, OSError) as exc:
                if str(exc) != trouble:
                    log.warning("queue positions not refreshed: %s; retrying", exc)
                    trouble = str(exc)
            except Exception:
                log.exception("status refresh failed")
            else:
                if trouble is not None:
                    log.info("queue positions refreshed again")
                    trouble = None
            await asyncio.sleep(self.interval)

    async def tick(self) -> None:
        tracked = await self.redis.hgetall(self.key)
        if not tracked:
            return
        # One process per round: whoever takes the lock; it expires before the next round.
        token = secrets.token_hex(8)
        if not await self.redis.set(self.lock, token, nx=True, px=int(self.interval * 900)):
            return
        await self.eta.refresh()
        positions = {job.id: job.position for job in await self.backend.queue()}
        await asyncio.gather(
            *(
                self._refresh(job_id, Tracked.model_validate_json(raw), positions.get(job_id))
                for job_id, raw in tracked.items()
            )
        )

    async def _refresh(self, job_id: str, entry: Tracked, position: int | None) -> None:
        if position is None:
            await self._left_queue(job_id, entry)
            return
        text = queued_text(entry.lang, position, self.eta.seconds(position))
        if text == entry.text:
            return
        edited = await self._edit(job_id, entry, text, keep_button=True)
        if edited:
            entry.text = text
            # Only if still tracked: the job may have been forgotten while we edited.
            if await self.redis.hexists(self.key, job_id):
                await self.redis.hset(self.key, job_id, entry.model_dump_json())

    async def _left_queue(self, job_id: str, entry: Tracked) -> None:
        try:
            job = await self.backend.job(job_id)
        except BackendError:
            await self.forget(job_id)
            return
        if job.status == "queued":
            return  # created after the queue was read
        await self.forget(job_id)
        if job.status == "cancelled":
            await self._edit(job_id, entry, t(entry.lang, "bot.status.cancelled"), False)

    async def _edit(self, job_id: str, entry: Tracked, text: str, keep_button: bool) -> bool:
        with job_context(job_id):
            markup = None
            if keep_button:
                markup = keyboards.status_markup(job_id, entry.lang)
            method = status_edit(
                entry.chat_id, entry.message_id, text, photo=entry.photo, markup=markup
            )
            try:
                async with self.tg.handover.bot_edit(entry.chat_id, entry.message_id) as ours:
                    if not ours:
                        return False  # a worker runs the job and edits the message now
                    await self.tg.call(method, chat_id=entry.chat_id, edit=True)
            except MessageGone:
                await self.forget(job_id)
                return False
            except UserBlocked:
                await self.forget(job_id)
                with contextlib.suppress(BackendError, BackendUnavailable):
                    await self.backend.update_user(entry.telegram_id, blocked_bot=True)
                return False
            except TelegramUnavailable as exc:
                log.info("job %s: status not edited now: %s", job_id, exc)
                return False
            return True
