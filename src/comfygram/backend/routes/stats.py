"""Operator numbers (the bot's /stats) and measured run times (the bot's queue estimate)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from comfygram.backend import stats
from comfygram.backend.deps import SessionDep, WorkersDep
from comfygram.backend.payments import CURRENCY
from comfygram.backend.schemas import RunTimesOut, StatsOut

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
