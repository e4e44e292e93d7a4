"""Which workers are alive and which presets their ComfyUIs can run (kept in Redis)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis

from comfygram.backend.schemas import WorkerOut, WorkerReport


def redact_url(url: str) -> str:
    """`url` without its user name and password (http://u:pw@gpu:8188 -> http://gpu:8188):
    what a worker reports is shown on the admin dashboard and by GET /api/workers."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.rpartition("@")[2] if "@" in url else url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class WorkerRegistry:
    """Heartbeats in one hash; a worker whose report expired counts as gone."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.key = f"{prefix}:workers"

    async def record(self, name: str, report: WorkerReport) -> WorkerOut:
        fields = {**report.model_dump(), "comfyui_url": redact_url(report.comfyui_url)}
        seen = WorkerOut(name=name, seen_at=datetime.now(UTC), **fields)
        await self.redis.hset(self.key, name, seen.model_dump_json())
        return seen

    async def live(self) -> list[WorkerOut]:
        now = time.time()
        alive: list[WorkerOut] = []
        for name, raw in (await self.redis.hgetall(self.key)).items():
            worker = WorkerOut.model_validate(json.loads(raw))
            if worker.seen_at.timestamp() + worker.ttl_seconds >= now:
                # Also for a heartbeat stored before URLs were redacted.
                alive.append(
                    worker.model_copy(update={"comfyui_url": redact_url(worker.comfyui_url)})
                )
            else:
                await self.redis.hdel(self.key, name)
        return sorted(alive, key=lambda w: w.name)

    async def runnable(self) -> set[str] | None:
        """Slugs some live, healthy worker can run; None when no worker reports (unknown)."""
        workers = await self.live()
        if not workers:
            return None
        return {slug for w in workers if w.healthy for slug in w.runnable}
