"""Operator commands, for the Telegram ids in ADMIN_TELEGRAM_IDS only.

For anyone else these handlers do not match, so the message falls through to the fallback
router like any unknown command: no hint that they exist.
"""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from comfygram.api import BackendClient, BackendError
from comfygram.bot.catalog import PresetCatalog
from comfygram.bot.replies import send
from comfygram.bot.status import format_wait
from comfygram.bot.texts import text
from comfygram.i18n import t
from comfygram.telegram import TelegramSender

TELEGRAM_ID_MAX = 2**63 - 1
GRANT_MAX = 1_000_000


async def stats(message: Message, backend: BackendClient, tg: TelegramSender, lang: str) -> None:
    numbers = await backend.stats()
    run_times = await backend.run_times()
    jobs = ", ".join(
        f"{t(lang, f'bot.history.status.{status}')} {count}"
        for status, count in numbers.jobs_today.items()
    )
    median = (
        format_wait(lang, round(run_times.median_seconds))
        if run_times.median_seconds is not None
        else "—"
    )
    reply = text(
        lang,
        "bot.admin.stats",
        users=numbers.users,
        users_today=numbers.users_today,
        jobs_today=jobs,
        queued=numbers.queued,
        processing=numbers.processing,
        revenue_today=numbers.revenue_today,
        revenue_total=numbers.revenue_total,
        credits_sold=numbers.credits_sold_total,
        median=median,
        workers=run_times.workers,
    )
    await send(tg, message.chat.id, reply)


def _telegram_id(value: str) -> int | None:
    return int(value) if value.isdigit() and 0 < int(value) <= TELEGRAM_ID_MAX else None


async def user(
    message: Message,
    command: CommandObject,
    backend: BackendClient,
    tg: TelegramSender,
    lang: str,
    catalog: PresetCatalog,
) -> None:
    telegram_id = _telegram_id((command.args or "").strip())
    if telegram_id is None:
        await send(tg, message.chat.id, t(lang, "bot.admin.user_usage"))
        return
    try:
        account = await backend.user(telegram_id)
    except BackendError as exc:
        if exc.code != "user_not_found":
            raise
        await send(tg, message.chat.id, text(lang, "bot.admin.no_user", telegram_id=telegram_id))
        return
    titles = await catalog.titles(lang)
    lines = [
        text(
            lang,
            "bot.admin.user",
            telegram_id=account.telegram_id,
            name=account.first_name or "",
            username=f"@{account.username}" if account.username else "—",
            balance=account.balance,
            language_code=account.language_code or "—",
            blocked=t(lang, "bot.admin.yes" if account.blocked_bot else "bot.admin.no"),
            since=account.created_at.strftime("%Y-%m-%d"),
        )
    ]
    for job in await backend.jobs(telegram_id, limit=5):
        lines.append(
            text(
                lang,
                "bot.history.line",
                date=job.created_at.strftime("%d.%m %H:%M"),
                title=titles.get(job.preset, job.preset),
                status=t(lang, f"bot.history.status.{job.status}"),
            )
        )
    await send(tg, message.chat.id, "\n".join(lines))


async def grant(
    message: Message, command: CommandObject, backend: BackendClient, tg: TelegramSender, lang: str
) -> None:
    """/grant <telegram_id> <credits> <reason>: a ledger entry naming this admin."""
    assert message.from_user is not None
    parts = (command.args or "").split(maxsplit=2)
    telegram_id = _telegram_id(parts[0]) if parts else None
    try:
        amount = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        amount = 0
    reason = parts[2].strip() if len(parts) > 2 else ""
    if telegram_id is None or amount == 0 or abs(amount) > GRANT_MAX or not reason:
        await send(tg, message.chat.id, t(lang, "bot.admin.grant_usage"))
        return
    try:
        account = await backend.adjust_credits(
            telegram_id,
            amount,
            reason=reason[:500],
            actor=f"admin:{message.from_user.id}",
            # One entry per command message, however often Telegram delivers it.
            idempotency_key=f"tg:{message.chat.id}:{message.message_id}",
        )
    except BackendError as exc:
        if exc.code == "user_not_found":
            reply = text(lang, "bot.admin.no_user", telegram_id=telegram_id)
        elif exc.code == "insufficient_credits":
            reply = t(lang, "bot.admin.grant_negative")
        else:
            reply = text(lang, "bot.admin.grant_refused", reason=exc.message)
        await send(tg, message.chat.id, reply)
        return
    reply = text(
        lang, "bot.admin.granted", amount=amount, telegram_id=telegram_id, balance=account.balance
    )
    await send(tg, message.chat.id, reply)


def create_router(admin_ids: list[int]) -> Router:
    router = Router(name="admin")
    router.message.filter(F.from_user.id.in_(frozenset(admin_ids)))
    router.message.register(stats, Command("stats"))
    router.message.register(user, Command("user"))
    router.message.register(grant, Command("grant"))
    return router
