"""Numbers for operators (/stats in the bot) and measured run times (the bot's queue ETA)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, time

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from comfygram.backend.models import Job, Payment, User
from comfygram.domain.jobs import JobStatus

# How many recent successful runs the medians look at: enough to be stable, cheap to read.
RUN_TIME_SAMPLE = 500


@dataclass(frozen=True)
class Overview:
    users: int
    users_today: int
    jobs_today: dict[str, int]
    queued: int
    processing: int
    revenue_today: int
    revenue_total: int
    credits_sold_total: int


def start_of_day(now: datetime | None = None) -> datetime:
    """Midnight UTC of today: every timestamp in the database is UTC."""
    now = now or datetime.now(UTC)
    return datetime.combine(now.date(), time.min, tzinfo=UTC)


async def _count(session: AsyncSession, *where: object) -> int:
    return int(await session.scalar(select(func.count()).select_from(Job).where(*where)) or 0)


async def overview(session: AsyncSession, now: datetime | None = None) -> Overview:
    midnight = start_of_day(now)
    users = await session.scalar(select(func.count()).select_from(User))
    users_today = await session.scalar(
        select(func.count()).select_from(User).where(User.created_at >= midnight)
    )
    rows = await session.execute(
        select(Job.status, func.count()).where(Job.created_at >= midnight).group_by(Job.status)
    )
    jobs_today = {status.value: 0 for status in JobStatus}
    jobs_today.update({str(status): int(count) for status, count in rows.all()})
    paid = Payment.status == "paid"
    revenue_total, credits_total = (
        await session.execute(
            select(
                func.coalesce(func.sum(Payment.amount), 0),
                func.coalesce(func.sum(Payment.credits), 0),
            ).where(paid)
        )
    ).one()
    revenue_today = await session.scalar(
        select(func.coalesce(func.sum(Payment.amount), 0)).where(paid, Payment.paid_at >= midnight)
    )
    return Overview(
        users=int(users or 0),
        users_today=int(users_today or 0),
        jobs_today=jobs_today,
        queued=await _count(session, Job.status == JobStatus.QUEUED),
        processing=await _count(session, Job.status == JobStatus.PROCESSING),
        revenue_today=int(revenue_today or 0),
        revenue_total=int(revenue_total),
        credits_sold_total=int(credits_total),
    )


async def median_run_seconds(session: AsyncSession) -> tuple[float | None, dict[str, float]]:
    """Median seconds from start to finish of recent successful runs: overall and per preset.

    started_at is reset on every attempt, so a retried job counts with its last run only.
    """
    rows = await session.execute(
        select(Job.preset_slug, Job.started_at, Job.finished_at)
        .where(
            Job.status == JobStatus.SUCCEEDED,
            Job.started_at.is_not(None),
            Job.finished_at.is_not(None),
        )
        .order_by(Job.finished_at.desc())
        .limit(RUN_TIME_SAMPLE)
    )
    by_preset: dict[str, list[float]] = defaultdict(list)
    for slug, started, finished in rows.all():
        by_preset[slug].append(max(0.0, (finished - started).total_seconds()))
    every = [seconds for samples in by_preset.values() for seconds in samples]
    overall = statistics.median(every) if every else None
    return overall, {slug: statistics.median(s) for slug, s in sorted(by_preset.items())}
