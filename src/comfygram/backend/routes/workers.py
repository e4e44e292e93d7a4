from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from comfygram.backend.deps import WorkersDep
from comfygram.backend.schemas import WorkerOut, WorkerReport

router = APIRouter(prefix="/api/workers", tags=["workers"])

WorkerName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:@-]{1,100}$")]


@router.put("/{name}", response_model=WorkerOut)
async def heartbeat(name: WorkerName, body: WorkerReport, workers: WorkersDep) -> WorkerOut:
    """A worker is alive; its ComfyUI's health and the presets it can run."""
    return await workers.record(name, body)


@router.get("", response_model=list[WorkerOut])
async def live_workers(workers: WorkersDep) -> list[WorkerOut]:
    """Workers that reported within their time to live."""
    return await workers.live()
