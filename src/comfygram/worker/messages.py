"""What the worker tells the user in Telegram: progress, the result, or an apology.

The result goes by the pure plan of delivery.py (photo, album and its buttons, video,
animation), rendered by render.py; a multi-message result (an album, then its buttons) is
one delivery, claimed once.

Each job's final message is sent at most once, across crashes: the worker first claims the
delivery on the job (``sending``) through the backend, and only the claimant sends. A worker
killed between the claim and recording the outcome leaves the job ``sending``; the next one
records it as failed instead of sending a second copy (Telegram has no idempotent send).

A preset with live previews has a photo status message (the bot sends it so: a text message
cannot become a photo), so its progress edits the caption, and LivePreview puts ComfyUI's
newest preview frame into it with editMessageMedia.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.methods import (
    DeleteMessage,
    EditMessageCaption,
    EditMessageMedia,
    EditMessageText,
    SendAnimation,
    SendDocument,
    SendMediaGroup,
    SendMessage,
    SendPhoto,
    SendVideo,
    TelegramMethod,
)
from aiogram.types import (
    BufferedInputFile,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaDocument,
    InputMediaPhoto,
)
from redis.exceptions import RedisError

from comfygram.api import BackendClient, BackendError, Job
from comfygram.i18n import language_of, t
from comfygram.presets import Preset
from comfygram.telegram import MessageGone, TelegramSender, TelegramUnavailable, UserBlocked
from comfygram.worker import encode
from comfygram.worker.delivery import Caption, Form, Method, OutputFile, plan_delivery
from comfygram.worker.encode import EncodeError, TooLarge
from comfygram.worker.failures import FailureKind
from comfygram.worker.render import Rendered, render

log = logging.getLogger(__name__)

_BAR_CELLS = 10
# How long a result or apology keeps trying through a Telegram outage before it is given up.
FINAL_SEND_PATIENCE_SECONDS = 600.0
_PATIENT_PAUSE_MAX = 30.0
# At most one preview frame per this many seconds: each is an upload, and progress edits share
# the chat's edit budget with them.
PREVIEW_INTERVAL_SECONDS = 4.0
# A frame that found no edit slot is tried again after this long (unless a newer one came).
PREVIEW_RETRY_SECONDS = 1.0


def progress_bar(percent: int) -> str:
    filled = max(0, min(_BAR_CELLS, round(percent * _BAR_CELLS / 100)))
    return "▰" * filled + "▱" * (_BAR_CELLS - filled)


def _title(preset: Preset | None, language: str | None, slug: str) -> str:
    """The preset's name in the user's language, escaped: messages are sent as HTML."""
    if preset is None:  # removed since the job was made: its slug is all there is
        return html.escape(slug, quote=False)
    title = preset.title.get(language_of(language)) or preset.title.get("en") or preset.slug
    return html.escape(title, quote=False)


def photo_status(preset: Preset | None) -> bool:
    """Whether the job's status message is a photo (the bot sends it so for previews)."""
    return preset is not None and preset.contract.previews


def status_edit(
    chat_id: int, message_id: int, text: str, *, photo: bool
) -> EditMessageText | EditMessageCaption:
    """The edit that puts ``text`` into a status message: its caption when it is a photo."""
    if photo:
        return EditMessageCaption(chat_id=chat_id, message_id=message_id, caption=text)
    return EditMessageText(chat_id=chat_id, message_id=message_id, text=text)


class UserMessages:
    def __init__(
        self,
        backend: BackendClient,
        sender: TelegramSender,
        *,
        patience_seconds: float = FINAL_SEND_PATIENCE_SECONDS,
        upload_max_bytes: int | None = None,
        preview_interval: float | None = None,
    ) -> None:
        self.backend = backend
        self.sender = sender
        self.patience_seconds = patience_seconds
        # Telegram's limit on a bot's uploads; lower in tests to exercise re-encoding.
        self.upload_max_bytes = upload_max_bytes or encode.UPLOAD_MAX_BYTES
        self.preview_interval = (
            PREVIEW_INTERVAL_SECONDS if preview_interval is None else preview_interval
        )

    def progress_text(self, job: Job, preset: Preset | None, percent: int) -> str:
        return t(
            job.language,
            "worker.processing",
            title=_title(preset, job.language, job.preset),
            bar=progress_bar(percent),
            percent=percent,
        )

    async def show_progress(self, job: Job, preset: Preset, percent: int) -> None:
        """Edit the job's status message, when the shared rate budget allows it now."""
        if job.status_chat_id is None or job.status_message_id is None:
            return
        method = status_edit(
            job.status_chat_id,
            job.status_message_id,
            self.progress_text(job, preset, percent),
            photo=photo_status(preset),
        )
        try:
            await self._take_status_message(job.status_chat_id, job.status_message_id)
            await self.sender.edit_progress(method, chat_id=job.status_chat_id)
        except (MessageGone, UserBlocked, TelegramUnavailable, TelegramBadRequest) as exc:
            # TelegramBadRequest: a status message of the other kind (sent before the preset
            # changed); progress is a courtesy, the job carries on.
            log.info("job %s: progress not shown: %s", job.id, type(exc).__name__)

    def live_preview(self, job: Job, preset: Preset | None) -> LivePreview | None:
        """A LivePreview for the job, or None when its status message shows none."""
        if not photo_status(preset) or job.status_chat_id is None:
            return None
        if job.status_message_id is None:
            return None
        return LivePreview(self, job, preset, self.preview_interval)

    async def show_preview(
        self, job: Job, preset: Preset | None, image: bytes, percent: int
    ) -> bool | None:
        """Put a preview frame into the job's photo status message, captioned with its
        progress, if the shared rate budget allows an edit now. True: shown; False: skipped
        (no edit slot now, Telegram busy); None: the message cannot show previews (gone, the
        user blocked the bot, not a photo)."""
        if job.status_chat_id is None or job.status_message_id is None:
            return None
        caption = self.progress_text(job, preset, percent)
        media = InputMediaPhoto(media=BufferedInputFile(image, "preview.jpg"), caption=caption)
        method = EditMessageMedia(
            chat_id=job.status_chat_id, message_id=job.status_message_id, media=media
        )
        try:
            await self._take_status_message(job.status_chat_id, job.status_message_id)
            return await self.sender.edit_progress(method, chat_id=job.status_chat_id) is not None
        except TelegramUnavailable as exc:
            log.info("job %s: preview not shown: %s", job.id, type(exc).__name__)
            return False
        except (MessageGone, UserBlocked, TelegramBadRequest) as exc:
            log.info("job %s: previews end: %s", job.id, type(exc).__name__)
            return None

    async def show_retrying(
        self, job: Job, max_attempts: int, preset: Preset | None = None
    ) -> None:
        if job.status_chat_id is None or job.status_message_id is None:
            return
        text = t(
            job.language, "worker.retrying", attempt=job.attempts + 1, max_attempts=max_attempts
        )
        photo = photo_status(preset)
        method = status_edit(job.status_chat_id, job.status_message_id, text, photo=photo)
        try:
            await self._take_status_message(job.status_chat_id, job.status_message_id)
            await self.sender.call(method, chat_id=job.status_chat_id, edit=True)
        except (MessageGone, UserBlocked, TelegramUnavailable, TelegramBadRequest) as exc:
            log.info("job %s: retry notice not shown: %s", job.id, type(exc).__name__)

    async def prepare_result(
        self, preset: Preset | None, files: Sequence[OutputFile]
    ) -> list[Rendered]:
        """The job's outputs rendered for Telegram (JPEG photos, MP4s, thumbnails), by the
        plan for their kinds. Raises encode.TooLarge when an output cannot be brought under
        the upload limit, encode.EncodeError when it cannot be read."""
        send_document = preset is not None and preset.send_document
        plan = plan_delivery(files, send_document=send_document)
        by_index = {f.index: f for f in files}
        return await asyncio.to_thread(render, plan, by_index, self.upload_max_bytes)

    async def deliver_result(
        self, job: Job, preset: Preset | None, rendered: list[Rendered], *, claimed: bool = False
    ) -> None:
        """Send the rendered result (photo, album, video or animation; the buttons on the
        last message), once. ``claimed``: ``job`` is the answer to the claim of its delivery."""
        if not claimed:
            mine = await self._claim(job)
            if mine is None:
                return
            job = mine
        await self._send_final(job, self._methods(job, preset, rendered))

    async def deliver_outputs(
        self, job: Job, preset: Preset | None, files: Sequence[OutputFile]
    ) -> None:
        """Render and send stored outputs (a redelivery after a crash); an output that cannot
        be rendered any more is recorded as an undelivered result."""
        try:
            rendered = await self.prepare_result(preset, files)
        except (TooLarge, EncodeError, ValueError) as exc:  # ValueError: no outputs at all
            claimed = await self._claim(job)
            if claimed is not None:
                await self.backend.record_delivery(job.id, "failed", f"not sendable: {exc}")
                await self._remove_status_message(claimed)
            return
        await self.deliver_result(job, preset, rendered)

    def _methods(
        self, job: Job, preset: Preset | None, rendered: list[Rendered]
    ) -> list[TelegramMethod[Any]]:
        language = job.language
        title = _title(preset, language, job.preset)
        captions = {
            Caption.RESULT: t(language, "worker.result_caption", title=title),
            Caption.DOCUMENT: t(language, "worker.document_caption", title=title),
        }
        markup = InlineKeyboardMarkup(
            inline_keyboard=[
                [
                    InlineKeyboardButton(
                        text=t(language, "worker.button_again"), callback_data=f"again:{job.id}"
                    ),
                    InlineKeyboardButton(
                        text=t(language, "worker.button_top_up"), callback_data="buy"
                    ),
                ]
            ]
        )
        chat = job.telegram_id
        methods: list[TelegramMethod[Any]] = []
        for part in rendered:
            send = part.send
            caption = captions[send.caption] if send.caption else None
            keyboard = markup if send.buttons else None
            if send.method is Method.MESSAGE:
                text = t(language, "worker.album_done", title=title)
                methods.append(SendMessage(chat_id=chat, text=text, reply_markup=keyboard))
                continue
            if send.method is Method.ALBUM:
                media: list[InputMediaPhoto | InputMediaDocument] = []
                for n, piece in enumerate(part.pieces):
                    upload = BufferedInputFile(piece.data, piece.filename)
                    first = caption if n == 0 else None
                    if piece.form is Form.JPEG:
                        media.append(InputMediaPhoto(media=upload, caption=first))
                    else:
                        media.append(InputMediaDocument(media=upload, caption=first))
                methods.append(SendMediaGroup(chat_id=chat, media=media))
                continue
            (piece,) = part.pieces
            upload = BufferedInputFile(piece.data, piece.filename)
            if send.method is Method.PHOTO:
                methods.append(
                    SendPhoto(chat_id=chat, photo=upload, caption=caption, reply_markup=keyboard)
                )
            elif send.method is Method.DOCUMENT:
                methods.append(
                    SendDocument(
                        chat_id=chat, document=upload, caption=caption, reply_markup=keyboard
                    )
                )
            else:
                thumbnail = (
                    BufferedInputFile(piece.thumbnail, "thumbnail.jpg") if piece.thumbnail else None
                )
                facts = {
                    "width": piece.width,
                    "height": piece.height,
                    "duration": piece.duration,
                    "thumbnail": thumbnail,
                    "caption": caption,
                    "reply_markup": keyboard,
                }
                if send.method is Method.VIDEO:
                    methods.append(
                        SendVideo(chat_id=chat, video=upload, supports_streaming=True, **facts)
                    )
                else:
                    methods.append(SendAnimation(chat_id=chat, animation=upload, **facts))
        return methods

    async def deliver_apology(
        self, job: Job, preset: Preset | None, kind: FailureKind | None
    ) -> None:
        """Tell the user the job failed, why, and that the credits are back; once."""
        claimed = await self._claim(job)
        if claimed is None:
            return
        job = claimed
        language = job.language
        reason_key = f"worker.failed.{kind.value}" if kind else "worker.failed.execution"
        if kind is FailureKind.UNAVAILABLE:
            reason_key = "worker.failed.execution"
        # A free job (an operator's retry) had nothing charged, so nothing is said to be back.
        intro = "worker.failed.intro" if job.price else "worker.failed.intro_free"
        text = t(
            language,
            intro,
            title=_title(preset, language, job.preset),
            reason=t(language, reason_key),
            price=job.price,
        )
        await self._send_final(job, [SendMessage(chat_id=job.telegram_id, text=text)])

    async def _claim(self, job: Job) -> Job | None:
        """Claim the job's final message; the job as claimed (None: not ours to send).

        The claim and the bot's record of the status message are serialized on the job's row,
        so the job returned carries the status message to remove, whichever came first.
        """
        if job.delivery_status != "pending":
            if job.delivery_status == "sending":
                # A worker died mid-send: it may have arrived, so it is not sent again.
                claimed = await self.backend.record_delivery(
                    job.id, "failed", "the worker stopped while sending; not sent again"
                )
                await self._remove_status_message(claimed)
            return None
        try:
            return await self.backend.record_delivery(job.id, "sending")
        except BackendError as exc:
            if exc.code == "delivery_claimed":
                return None
            raise

    async def _send_final(self, job: Job, sends: list) -> None:
        try:
            for method in sends:
                await self._call_patiently(job, method)
        except UserBlocked:
            await self.backend.record_delivery(job.id, "blocked", "the user blocked the bot")
            return
        except TelegramUnavailable as exc:
            await self.backend.record_delivery(job.id, "failed", f"Telegram: {exc}"[:4000])
            return
        except (MessageGone, TelegramAPIError) as exc:
            await self.backend.record_delivery(job.id, "failed", f"Telegram: {exc}"[:4000])
            await self._remove_status_message(job)  # the job has ended all the same
            return
        await self._remove_status_message(job)
        await self.backend.record_delivery(job.id, "delivered")

    async def _call_patiently(self, job: Job, method: TelegramMethod[Any]) -> None:
        """A final message outlasts a Telegram outage longer than one call's retries: it is
        tried again with a growing pause for ``patience_seconds`` (the job's lease is kept)."""
        deadline = time.monotonic() + self.patience_seconds
        pause = 1.0
        while True:
            try:
                await self.sender.call(method, chat_id=job.telegram_id)
                return
            except TelegramUnavailable as exc:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning(
                    "job %s: Telegram unreachable (%s); the message waits, retrying in %.0fs",
                    job.id, exc, pause,
                )  # fmt: skip
                await asyncio.sleep(pause)
                pause = min(_PATIENT_PAUSE_MAX, pause * 2)

    async def _remove_status_message(self, job: Job) -> None:
        if job.status_chat_id is None or job.status_message_id is None:
            return
        method = DeleteMessage(chat_id=job.status_chat_id, message_id=job.status_message_id)
        # The result is there; a leftover status line is harmless.
        with contextlib.suppress(MessageGone, UserBlocked, TelegramUnavailable):
            await self._take_status_message(job.status_chat_id, job.status_message_id)
            await self.sender.call(method, chat_id=job.status_chat_id, edit=True)

    async def _take_status_message(self, chat_id: int, message_id: int) -> None:
        """From here on the worker edits the message; the bot's queue updates stop."""
        try:
            await self.sender.handover.take(chat_id, message_id)
        except RedisError as exc:
            # Worst case a stale "queued" line shows until the next progress edit.
            log.warning("status message not handed over: %s", type(exc).__name__)


class LiveProgress:
    """The job's progress in its status message, without holding up the WebSocket reader: one
    edit at a time, the newest percentage next. 100 % is not shown: the result follows.
    ``close`` waits for an edit in flight (a later edit of the message must come after it) and
    starts none after it."""

    def __init__(self, messages: UserMessages, job: Job, preset: Preset) -> None:
        self.messages = messages
        self.job = job
        self.preset = preset
        self._newest: int | None = None
        self._pumping: asyncio.Task[None] | None = None

    def offer(self, percent: int) -> None:
        if percent >= 100 or self.job.status_message_id is None:
            return
        self._newest = percent
        if self._pumping is None or self._pumping.done():
            self._pumping = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        while self._newest is not None:
            percent, self._newest = self._newest, None
            try:
                await self.messages.show_progress(self.job, self.preset, percent)
            except (RedisError, OSError) as exc:  # the shared budget is out of reach
                log.info("job %s: progress not shown: %s", self.job.id, type(exc).__name__)

    async def close(self) -> None:
        self._newest = None
        if self._pumping is not None:
            with contextlib.suppress(Exception):
                await self._pumping


class LivePreview:
    """The newest preview frame of one run, shown in the job's photo status message.

    ``offer`` only keeps the frame (the WebSocket reader is not held up by an upload); one
    task sends the newest frame at most every ``interval`` seconds, through the skippable
    edit budget. Frames are never queued: a newer one replaces a waiting one, and one that
    finds no edit slot is tried again shortly unless a newer one came meanwhile. ``close``
    waits for an edit in flight and ends it all: nothing is edited after it (the result may
    follow).
    """

    def __init__(
        self, messages: UserMessages, job: Job, preset: Preset | None, interval: float
    ) -> None:
        self.messages = messages
        self.job = job
        self.preset = preset
        self.interval = interval
        # After a skipped frame (the chat's edit slot taken, by a progress edit say).
        self.retry_pause = min(interval, PREVIEW_RETRY_SECONDS)
        self.percent = 0  # the caption's progress, kept current by the progress callback
        self.shown = 0  # frames Telegram took
        self._latest: bytes | None = None
        self._next_at = -math.inf
        self._closed = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def offer(self, image: bytes) -> None:
        if self._closed:
            return
        self._latest = image  # the newest wins
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        while self._latest is not None and not self._closed:
            pause = self._next_at - time.monotonic()
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)
                continue
            frame, self._latest = self._latest, None
            outcome = await self.messages.show_preview(self.job, self.preset, frame, self.percent)
            if outcome is None:  # this message shows no previews: stop trying
                self._closed = True
            elif outcome:
                self.shown += 1
                self._next_at = time.monotonic() + self.interval
            else:
                if self._latest is None:
                    self._latest = frame
                self._next_at = time.monotonic() + self.retry_pause

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except Exception:
                log.exception("job %s: preview edits ended on an error", self.job.id)
