from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from comfygram.backend import presets
from comfygram.backend.deps import SessionDep, WorkersDep
from comfygram.backend.models import Preset
from comfygram.backend.schemas import PresetDetail, PresetOut

router = APIRouter(prefix="/api/presets", tags=["presets"])


@router.get("", response_model=list[PresetOut])
async def list_presets(
    session: SessionDep,
    workers: WorkersDep,
    available: Annotated[bool, Query(description="only presets a live worker can run")] = False,
) -> list[PresetOut]:
    """The enabled presets, cheapest first.

    A preset is available unless live workers report that none of them can run it; with no
    worker reporting, every preset is (its jobs wait in the queue for one).
    """
    runnable = await workers.runnable()
    rows = await session.scalars(
        select(Preset).where(Preset.enabled.is_(True)).order_by(Preset.price, Preset.slug)
    )
    listed = [PresetOut.of(row, runnable is None or row.slug in runnable) for row in rows]
    return [p for p in listed if p.available] if available else listed


@router.get("/{slug}", response_model=PresetDetail)
async def get_preset(slug: str, session: SessionDep, workers: WorkersDep) -> PresetDetail:
    """One preset with its manifest and workflow, for the worker."""
    runnable = await workers.runnable()
    return PresetDetail.of(
        await presets.get_preset(session, slug), runnable is None or slug in runnable
    )
