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
    revenue_total, credits_total, _ = await _paid(session)
    revenue_today, _, _ = await _paid(session, Payment.paid_at >= midnight)
    return Overview(
        users=int(users or 0),
        users_today=int(users_today or 0),
        jobs_today=await jobs_by_status_since(session, midnight),
        queued=await _count(session, Job.status == JobStatus.QUEUED),
        processing=await _count(session, Job.status == JobStatus.PROCESSING),
        revenue_today=revenue_today,
        revenue_total=revenue_total,
        credits_sold_total=credits_total,
    )


async def _paid(session: AsyncSession, *where: object) -> tuple[int, int, int]:
    """Stars taken, credits sold and payments made, over the paid payments matching `where`."""
    stars, credits, count = (
        await session.execute(
            select(
                func.coalesce(func.sum(Payment.amount), 0),
                func.coalesce(func.sum(Payment.credits), 0),
                func.count(),
            ).where(Payment.status == "paid", *where)
        )
    ).one()
    return int(stars), int(credits), int(count)


def _run_seconds(started: datetime, finished: datetime) -> float:
    return max(0.0, (finished - started).total_seconds())


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
        by_preset[slug].append(_run_seconds(started, finished))
    every = [seconds for samples in by_preset.values() for seconds in samples]
    overall = statistics.median(every) if every else None
    return overall, {slug: statistics.median(s) for slug, s in sorted(by_preset.items())}


# -- the admin panel's dashboard ----------------------------------------------------------


@dataclass(frozen=True)
class PresetWindow:
    """One preset's jobs created in a window: how many, how many failed, how fast."""

    slug: str
    jobs: int
    succeeded: int
    failed: int
    median_run_seconds: float | None

    @property
    def failure_rate(self) -> float | None:
        """Failed share of the finished runs (succeeded + failed); None before the first."""
        finished = self.succeeded + self.failed
        return self.failed / finished if finished else None


@dataclass(frozen=True)
class Revenue:
    stars_today: int
    stars_window: int
    stars_total: int
    credits_sold_window: int
    credits_sold_total: int
    payments_window: int


async def jobs_by_status_since(session: AsyncSession, since: datetime) -> dict[str, int]:
    """Jobs created since `since`, per status (every status present, 0 when none)."""
    rows = await session.execute(
        select(Job.status, func.count()).where(Job.created_at >= since).group_by(Job.status)
    )
    counts = {status.value: 0 for status in JobStatus}
    counts.update({str(status): int(count) for status, count in rows.all()})
    return counts


async def presets_since(session: AsyncSession, since: datetime) -> list[PresetWindow]:
    """Per preset, jobs created since `since`: count, failures, median run (started to
    finished) of the ones that succeeded. Presets with no jobs in the window are left out."""
    rows = await session.execute(
        select(Job.preset_slug, Job.status, Job.started_at, Job.finished_at).where(
            Job.created_at >= since
        )
    )
    jobs: dict[str, int] = defaultdict(int)
    succeeded: dict[str, int] = defaultdict(int)
    failed: dict[str, int] = defaultdict(int)
    runs: dict[str, list[float]] = defaultdict(list)
    for slug, status, started, finished in rows.all():
        jobs[slug] += 1
        if status == JobStatus.FAILED:
            failed[slug] += 1
        elif status == JobStatus.SUCCEEDED:
            succeeded[slug] += 1
            if started is not None and finished is not None:
                runs[slug].append(_run_seconds(started, finished))
    return [
        PresetWindow(
            slug=slug,
            jobs=jobs[slug],
            succeeded=succeeded[slug],
            failed=failed[slug],
            median_run_seconds=statistics.median(runs[slug]) if runs[slug] else None,
        )
        for slug in sorted(jobs)
    ]


async def revenue(session: AsyncSession, since: datetime, now: datetime | None = None) -> Revenue:
    """Stars taken today (UTC), since `since` and ever, and the credits they bought."""
    today, _, _ = await _paid(session, Payment.paid_at >= start_of_day(now))
    window, credits_window, payments_window = await _paid(session, Payment.paid_at >= since)
    total, credits_total, _ = await _paid(session)
    return Revenue(
        stars_today=today,
        stars_window=window,
        stars_total=total,
        credits_sold_window=credits_window,
        credits_sold_total=credits_total,
        payments_window=payments_window,
    )
