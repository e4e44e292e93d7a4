"""The user's jobs: /history, and /cancel for a job still in the queue (with a refund)."""

from __future__ import annotations

import contextlib
import logging

from aiogram import Router
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, Message

from comfygram.api import BackendClient, BackendError, Job
from comfygram.bot import keyboards
from comfygram.bot.callbacks import CancelJob
from comfygram.bot.catalog import PresetCatalog
from comfygram.bot.confirmations import Confirmations
from comfygram.bot.replies import send
from comfygram.bot.status import QueueTracker, edit_status
from comfygram.bot.texts import text
from comfygram.i18n import t
from comfygram.telegram import MessageGone, TelegramSender

log = logging.getLogger(__name__)

HISTORY_LENGTH = 10


async def _jobs(backend: BackendClient, telegram_id: int, limit: int) -> list[Job]:
    try:
        return await backend.jobs(telegram_id, limit=limit)
    except BackendError as exc:
        if exc.code == "user_not_found":
            return []
        raise


async def history(
    message: Message, backend: BackendClient, tg: TelegramSender, lang: str, catalog: PresetCatalog
) -> None:
    assert message.from_user is not None
    jobs = await _jobs(backend, message.from_user.id, HISTORY_LENGTH)
    if not jobs:
        await send(tg, message.chat.id, t(lang, "bot.history.empty"))
        return
    titles = await catalog.titles(lang)
    lines = [t(lang, "bot.history.title")]
    for job in jobs:
        lines.append(
            text(
                lang,
                "bot.history.line",
                date=job.created_at.strftime("%d.%m %H:%M"),
                title=titles.get(job.preset, job.preset),
                status=t(lang, f"bot.history.status.{job.status}"),
            )
        )
    lines.append(t(lang, "bot.history.utc"))
    await send(tg, message.chat.id, "\n".join(lines))


async def cancel_command(
    message: Message,
    state: FSMContext,
    backend: BackendClient,
    tg: TelegramSender,
    lang: str,
    catalog: PresetCatalog,
    tracker: QueueTracker,
    confirmations: Confirmations,
) -> None:
    """Stop a half-made order, else cancel the queued job (or offer a choice of several)."""
    assert message.from_user is not None
    chat_id = message.chat.id
    if await state.get_state() is not None:
        draft = (await state.get_data()).get("draft") or {}
        if draft.get("asked") is not None:  # a confirmation's Start button no longer acts
            await confirmations.drop(chat_id, draft["asked"])
        await state.clear()
        await send(tg, chat_id, t(lang, "bot.cancel.order_dropped"))
        return
    queued = [
        job
        for job in await _jobs(backend, message.from_user.id, HISTORY_LENGTH)
        if job.status == "queued"
    ]
    if not queued:
        await send(tg, chat_id, t(lang, "bot.cancel.nothing"))
    elif len(queued) == 1:
        await _cancel(queued[0], chat_id, backend, tg, lang, tracker)
    else:
        titles = await catalog.titles(lang)
        markup = keyboards.cancel_choices(queued, titles, lang)
        await send(tg, chat_id, t(lang, "bot.cancel.which"), markup)


async def cancel_button(
    query: CallbackQuery,
    callback_data: CancelJob,
    backend: BackendClient,
    tg: TelegramSender,
    lang: str,
    tracker: QueueTracker,
) -> None:
    await query.answer()
    try:
        job = await backend.job(callback_data.job_id)
    except BackendError:
        job = None
    if job is None or job.telegram_id != query.from_user.id or query.message is None:
        return
    await _cancel(job, query.message.chat.id, backend, tg, lang, tracker)


async def _cancel(
    job: Job,
    chat_id: int,
    backend: BackendClient,
    tg: TelegramSender,
    lang: str,
    tracker: QueueTracker,
) -> None:
    try:
        cancelled = await backend.set_status(job.id, "cancelled")
    except BackendError as exc:
        if exc.code != "invalid_transition":
            raise
        # A worker took it a moment ago: too late to cancel.
        await send(tg, chat_id, t(lang, "bot.cancel.too_late"))
        return
    await tracker.forget(job.id)
    if cancelled.status_chat_id is not None and cancelled.status_message_id is not None:
        # A previews preset's status message is a photo: edit_status edits its caption then.
        with contextlib.suppress(MessageGone):
            await edit_status(
                tg,
                cancelled.status_chat_id,
                cancelled.status_message_id,
                t(lang, "bot.status.cancelled"),
                photo=False,
                edit=False,
            )
    account = await backend.user(cancelled.telegram_id)
    reply = text(lang, "bot.cancel.done", price=cancelled.price, balance=account.balance)
    await send(tg, chat_id, reply)


def create_router() -> Router:
    router = Router(name="jobs")
    router.message.register(history, Command("history"))
    router.message.register(cancel_command, Command("cancel"))
    router.callback_query.register(cancel_button, CancelJob.filter())
    return router
