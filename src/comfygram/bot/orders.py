"""Turning photos, a preset and its options into a job, and the one status message that
follows it.

The idempotency key comes from the Telegram update that asked for the job (the keyboard, photo,
prompt or confirmation message), so a retried update, a double tap or a retry after a backend
timeout replays the same job instead of charging again. Only while that job is alive, though:
once it has ended (cancelled, failed, succeeded), pressing the same button again is a new
order, so the key moves on to its next generation (a counter per key in Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aiogram import Bot
from aiogram.methods import DeleteMessage, SendPhoto
from aiogram.types import BufferedInputFile, User
from redis.asyncio import Redis

from comfygram.api import BackendClient, BackendError, BackendUnavailable, Job, Preset
from comfygram.bot import keyboards
from comfygram.bot.keys import bot_key
from comfygram.bot.replies import not_enough_credits, send
from comfygram.bot.sources import (
    TELEGRAM_DOWNLOAD_LIMIT,
    ImageCache,
    ImageTooLarge,
    ImageUnavailable,
    PhotoSource,
    load_image,
)
from comfygram.bot.status import Eta, QueueTracker, queued_text, status_picture
from comfygram.i18n import t
from comfygram.logs import job_context
from comfygram.settings import Settings
from comfygram.telegram import MessageGone, TelegramSender, TelegramUnavailable, UserBlocked

log = logging.getLogger(__name__)

STATUS_CLAIM_SECONDS = 24 * 3600
# A job in one of these states is over: the same button pressed again is a new order.
ENDED = frozenset({"succeeded", "failed", "cancelled"})
# Longer than a preset keyboard can be used (its photo is kept for a week).
GENERATION_SECONDS = 8 * 24 * 3600
# Each ended job of a key costs one more round; more than this many is not a person pressing.
MAX_GENERATIONS = 50

# Move the key's generation from ARGV[1] to the next one, unless someone already did (two
# presses racing after a job ended must agree on one new order, not make two).
_NEXT_GENERATION = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current == tonumber(ARGV[1]) then
  current = current + 1
  redis.call('SET', KEYS[1], current, 'EX', ARGV[2])
end
return current
"""

# Backend refusals a person can act on, by error code.
_REFUSALS = {
    "too_many_active_jobs": "bot.order.too_many_active",
    "file_too_large": "bot.photo.too_large",
    "unsupported_image": "bot.photo.unsupported",
    "bad_image": "bot.photo.unreadable",
    "preset_not_found": "bot.order.preset_gone",
    "prompt_required": "bot.order.prompt_required",
    "idempotency_key_reused": "bot.order.already_done",
    "job_not_found": "bot.photo.gone",
    "user_banned": "bot.errors.banned",
    # The preset changed between the questions and the order (an operator's edit).
    "photo_missing": "bot.order.preset_changed",
    "too_many_photos": "bot.order.preset_changed",
    "prompt_not_accepted": "bot.order.preset_changed",
    "unknown_option": "bot.order.preset_changed",
    "unknown_choice": "bot.order.preset_changed",
}


def image_limit(settings: Settings) -> int:
    """The largest photo worth downloading: what Telegram serves and the backend takes."""
    return min(TELEGRAM_DOWNLOAD_LIMIT, settings.max_upload_bytes)


def idempotency_key(chat_id: int, message_id: int, preset: str) -> str:
    return f"tg:{chat_id}:{message_id}:{preset}"


@dataclass
class Orders:
    bot: Bot
    backend: BackendClient
    tg: TelegramSender
    redis: Redis
    prefix: str
    settings: Settings
    tracker: QueueTracker
    eta: Eta
    images: ImageCache = field(default_factory=ImageCache)

    async def place(
        self,
        user: User,
        chat_id: int,
        lang: str,
        photos: Sequence[PhotoSource],
        preset: Preset,
        key: str,
        prompt: str | None = None,
        *,
        options: Mapping[str, str] | None = None,
    ) -> Job | None:
        """Create the job from its photos (in slot order), prompt and chosen options, and
        report it; every refusal is told to the user. None if refused."""
        limit = image_limit(self.settings)
        try:
            images = [
                await load_image(source, self.bot, self.backend, limit, self.images)
                for source in photos
            ]
        except ImageTooLarge:
            await self._say(chat_id, lang, "bot.photo.too_large")
            return None
        except ImageUnavailable:
            await self._say(chat_id, lang, "bot.photo.gone")
            return None
        except BackendError as exc:
            await self._refused(chat_id, lang, exc)
            return None
        try:
            job, replayed = await self._create_fresh(
                user, preset, images, prompt, dict(options or {}), key
            )
        except BackendError as exc:
            await self._refused(chat_id, lang, exc)
            return None
        with job_context(job.id):
            log.info(
                "job %s: %s for user %s, preset %s",
                job.id,
                "replayed" if replayed else "created",
                user.id,
                preset.slug,
            )
            # A previews preset's status message is a photo: its first photo, made small.
            picture = images[0][0] if preset.contract.previews and images else None
            await self.report(job, chat_id, lang, picture=picture)
        return job

    async def _create_fresh(
        self,
        user: User,
        preset: Preset,
        images: list[tuple[bytes, str]],
        prompt: str | None,
        options: dict[str, str],
        key: str,
    ) -> tuple[Job, bool]:
        """Create the job, or replay the one this key made while it is alive; a replayed job
        that has ended makes way for a new one under the key's next generation."""
        counter = bot_key(self.prefix, "order-generation", key)
        generation = int(await self.redis.get(counter) or 0)
        for _ in range(MAX_GENERATIONS):
            keyed = key if generation == 0 else f"{key}:g{generation}"
            job, replayed = await self._create(user, preset, images, prompt, options, keyed)
            if not (replayed and job.status in ENDED):
                return job, replayed
            log.info("job %s for key %s has ended (%s); a new order", job.id, key, job.status)
            generation = int(
                await self.redis.eval(_NEXT_GENERATION, 1, counter, generation, GENERATION_SECONDS)  # type: ignore[misc]
            )
        raise BackendError(409, "idempotency_key_reused", "too many orders for one key", {})

    async def _create(
        self,
        user: User,
        preset: Preset,
        images: list[tuple[bytes, str]],
        prompt: str | None,
        options: dict[str, str],
        key: str,
    ) -> tuple[Job, bool]:
        try:
            return await self.backend.create_job(
                user.id,
                preset.slug,
                images,
                prompt=prompt,
                options=options or None,
                idempotency_key=key,
            )
        except BackendError as exc:
            if exc.code != "user_not_found":
                raise
        # Someone who never sent /start (or a wiped database): register, then try again.
        await self.backend.register(
            user.id,
            username=user.username,
            first_name=user.first_name,
            language_code=user.language_code,
        )
        return await self.backend.create_job(
            user.id,
            preset.slug,
            images,
            prompt=prompt,
            options=options or None,
            idempotency_key=key,
        )

    async def report(
        self, job: Job, chat_id: int, lang: str, *, picture: bytes | None = None
    ) -> None:
        """Send the job's one status message, unless it has one (a replay, a double tap).

        With ``picture`` (a previews preset) it is a photo with the status as its caption, so
        the worker can show preview frames in it; else a text message."""
        if job.status != "queued" or job.status_message_id is not None:
            return
        claim = bot_key(self.prefix, "status-claim", job.id)
        if not await self.redis.set(claim, "1", nx=True, ex=STATUS_CLAIM_SECONDS):
            return
        await self.eta.refresh()
        text = queued_text(lang, job.position, self.eta.seconds(job.position))
        markup = keyboards.status_markup(job.id, lang)
        if picture is None:
            message = await send(self.tg, chat_id, text, markup)
        else:
            photo = BufferedInputFile(await asyncio.to_thread(status_picture, picture), "job.jpg")
            method = SendPhoto(chat_id=chat_id, photo=photo, caption=text, reply_markup=markup)
            message = await self.tg.call(method, chat_id=chat_id)
        if message is None:
            return
        try:
            recorded = await self.backend.record_status_message(job.id, chat_id, message.message_id)
        except BackendUnavailable as exc:
            # The job is queued and paid for; only the worker's progress edits miss out.
            log.warning("job %s: status message not recorded: %s", job.id, exc)
        else:
            if recorded.status_message_id != message.message_id:
                # The job ended before the message was recorded: nothing would ever update it.
                with contextlib.suppress(MessageGone, UserBlocked, TelegramUnavailable):
                    await self.tg.call(
                        DeleteMessage(chat_id=chat_id, message_id=message.message_id),
                        chat_id=chat_id,
                        edit=True,
                    )
                return
        await self.tracker.track(
            job, chat_id, message.message_id, lang, text, photo=picture is not None
        )

    async def _refused(self, chat_id: int, lang: str, error: BackendError) -> None:
        if error.code == "insufficient_credits":
            await not_enough_credits(self.tg, chat_id, lang, self.settings, error)
            return
        key = _REFUSALS.get(error.code)
        if key is None:
            log.warning("job refused: %s", error)
            key = "bot.order.refused"
        await self._say(chat_id, lang, key)

    async def _say(self, chat_id: int, lang: str, key: str) -> None:
        await send(self.tg, chat_id, t(lang, key))
