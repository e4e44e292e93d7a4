"""Deleting the photos of jobs that ended long ago (MEDIA_RETENTION_DAYS; 0 keeps them forever).

The job rows stay, with `media_deleted_at` set: history, the ledger and the admin panel keep
every job, which then says when its media went. Safe with several backends sweeping at once:
deleting a file that is already gone changes nothing, and the row is marked by one UPDATE that
only a job not marked yet matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from comfygram.backend.models import Job, JobFile
from comfygram.backend.storage import MediaStore
from comfygram.domain.jobs import FINAL

log = logging.getLogger(__name__)

# How often the backend looks for media past its retention; the first look is at start.
SWEEP_INTERVAL_SECONDS = 3600.0
_BATCH = 200


async def sweep_once(
    sessions: async_sessionmaker,
    store: MediaStore,
    retention_days: int,
    *,
    now: datetime | None = None,
) -> int:
    """Delete the input and output files of jobs that ended over `retention_days` days ago;
    returns how many jobs lost their media in this call. Their job_files rows stay (what the
    files were), as the job rows do."""
    if retention_days <= 0:
        return 0
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    swept = 0
    while True:
        async with sessions() as session:
            rows = list(
                await session.scalars(
                    select(Job.id)
                    .where(
                        Job.status.in_(FINAL),
                        Job.finished_at < cutoff,
                        Job.media_deleted_at.is_(None),
                    )
                    .order_by(Job.finished_at)
                    .limit(_BATCH)
                )
            )
            paths: dict[str, list[str]] = {job_id: [] for job_id in rows}
            if rows:
                found = await session.execute(
                    select(JobFile.job_id, JobFile.path).where(JobFile.job_id.in_(rows))
                )
                for job_id, relative in found:
                    paths[job_id].append(relative)
        if not rows:
            return swept
        for job_id in rows:
            # Files first, then the mark: a sweep cut short leaves an unmarked job, which the
            # next sweep finishes, never a marked job whose files linger.
            await store.delete_all(paths[job_id])
            await store.remove_job_folders(job_id)
            async with sessions() as session:
                marked = await session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.media_deleted_at.is_(None))
                    .values(media_deleted_at=datetime.now(UTC))
                )
                await session.commit()
            swept += marked.rowcount or 0
        if len(rows) < _BATCH:
            if swept:
                log.info(
                    "retention: deleted the media of %d job(s) that ended before %s",
                    swept,
                    cutoff.date().isoformat(),
                )
            return swept


async def sweep_forever(
    sessions: async_sessionmaker,
    store: MediaStore,
    retention_days: int,
    interval: float,
    stop: asyncio.Event,
) -> None:
    """Sweep every `interval` seconds until `stop` is set (stopping between sweeps, as the
    reconciler does)."""
    while not stop.is_set():
        try:
            await sweep_once(sessions, store, retention_days)
        except Exception:
            log.exception("media retention sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
