"""Which workers are alive and which presets their ComfyUIs can run (kept in Redis)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from redis.asyncio import Redis

from comfygram.backend.schemas import WorkerOut, WorkerReport


class WorkerRegistry:
    """Heartbeats in one hash; a worker whose report expired counts as gone."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.key = f"{prefix}:workers"

    async def record(self, name: str, report: WorkerReport) -> WorkerOut:
        seen = WorkerOut(name=name, seen_at=datetime.now(UTC), **report.model_dump())
        await self.redis.hset(self.key, name, seen.model_dump_json())
        return seen

    async def live(self) -> list[WorkerOut]:
        now = time.time()
        alive: list[WorkerOut] = []
        for name, raw in (await self.redis.hgetall(self.key)).items():
            worker = WorkerOut.model_validate(json.loads(raw))
            if worker.seen_at.timestamp() + worker.ttl_seconds >= now:
                alive.append(worker)
            else:
                await self.redis.hdel(self.key, name)
        return sorted(alive, key=lambda w: w.name)

    async def runnable(self) -> set[str] | None:
        """Slugs some live, healthy worker can run; None when no worker reports (unknown)."""
        workers = await self.live()
        if not workers:
            return None
        return {slug for w in workers if w.healthy for slug in w.runnable}
