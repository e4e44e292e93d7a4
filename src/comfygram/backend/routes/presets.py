from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from comfygram.backend import presets
from comfygram.backend.deps import SessionDep
from comfygram.backend.models import Preset
from comfygram.backend.schemas import PresetDetail, PresetOut

router = APIRouter(prefix="/api/presets", tags=["presets"])


@router.get("", response_model=list[PresetOut])
async def list_presets(session: SessionDep) -> list[PresetOut]:
    """The enabled presets, cheapest first."""
    rows = await session.scalars(
        select(Preset).where(Preset.enabled.is_(True)).order_by(Preset.price, Preset.slug)
    )
    return [PresetOut.of(row) for row in rows]


@router.get("/{slug}", response_model=PresetDetail)
async def get_preset(slug: str, session: SessionDep) -> PresetDetail:
    """One preset with its manifest and workflow, for the worker."""
    return PresetDetail.of(await presets.get_preset(session, slug))
