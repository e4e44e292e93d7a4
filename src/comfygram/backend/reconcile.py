"""Keeping Redis in step with the database, which is the source of truth for queued jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import async_sessionmaker

from comfygram.backend import jobs
from comfygram.queue import JobQueue

log = logging.getLogger(__name__)


async def reconcile_once(
    sessions: async_sessionmaker, queue: JobQueue, stale_after: float = 900.0
) -> int:
    """Enqueue every job the database says is pending but Redis does not hold; returns how many.

    Pending means queued, or processing with no update for ``stale_after`` seconds: its
    worker died and Redis lost the stream entry that would have let another take it over.
    """
    before = datetime.now(UTC) - timedelta(seconds=stale_after)
    async with sessions() as session:
        pending = await jobs.queued(session) + await jobs.processing_since(session, before)
    added = 0
    for job in pending:
        if await queue.enqueue(job.id, jobs.queue_payload(job)):
            added += 1
    if added:
        log.warning("re-enqueued %d queued job(s) that Redis did not hold", added)
    return added


async def reconcile_forever(
    sessions: async_sessionmaker,
    queue: JobQueue,
    interval: float,
    stale_after: float,
    stop: asyncio.Event,
) -> None:
    """Reconcile every ``interval`` seconds until ``stop`` is set.

    Stopping between rounds, not by cancellation: a database query cancelled halfway can leave
    its pooled connection in a state that makes the engine's shutdown wait.
    """
    while not stop.is_set():
        try:
            await reconcile_once(sessions, queue, stale_after)
        except (RedisError, OSError) as exc:
            log.warning("queue reconcile skipped, Redis unreachable: %s", type(exc).__name__)
        except Exception:
            log.exception("queue reconcile failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
