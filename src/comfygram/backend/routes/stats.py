"""Operator numbers (the bot's /stats) and measured run times (the bot's queue estimate)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from comfygram.backend import jobs, stats
from comfygram.backend.deps import SessionDep, WorkersDep
from comfygram.backend.payments import CURRENCY
from comfygram.backend.schemas import QueuedJobOut, QueueOut, RunTimesOut, StatsOut

router = APIRouter(prefix="/api/stats", tags=["stats"])


@router.get("", response_model=StatsOut)
async def overview(session: SessionDep) -> StatsOut:
    """Users, jobs created today by status, the queue, Stars revenue today and in total."""
    numbers = await stats.overview(session)
    return StatsOut(**asdict(numbers), currency=CURRENCY)


@router.get("/run-times", response_model=RunTimesOut)
async def run_times(session: SessionDep, workers: WorkersDep) -> RunTimesOut:
    """Median run time of recent successful jobs, overall and per preset, and live workers."""
    overall, presets = await stats.median_run_seconds(session)
    live = [w for w in await workers.live() if w.healthy]
    return RunTimesOut(median_seconds=overall, presets=presets, workers=len(live))


@router.get("/queue", response_model=QueueOut)
async def queue(session: SessionDep) -> QueueOut:
    """Every queued job with its position, in one query: what the bot's status messages show."""
    rows = await jobs.queued(session)
    return QueueOut(
        jobs=[
            QueuedJobOut(id=job.id, preset=job.preset_slug, position=number)
            for number, job in enumerate(rows, start=1)
        ]
    )
