"""A job's live status and progress, and its cached result, in Redis.

The database (through the backend) is the record; this is what a worker shows while a job
runs, readable by anyone with the Redis prefix, and lost harmlessly on a flush.
"""

from __future__ import annotations

from redis.asyncio import Redis

STATUS_TTL_SECONDS = 24 * 3600


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class LiveStatus:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def _status_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:status"

    def _result_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:result"

    async def set(
        self, job_id: str, status: str, *, progress: int = 0, worker: str | None = None
    ) -> None:
        key = self._status_key(job_id)
        fields = {"status": status, "progress": progress, "worker": worker or ""}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, STATUS_TTL_SECONDS)
            await pipe.execute()

    async def get(self, job_id: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self._status_key(job_id))
        return {_text(k): _text(v) for k, v in raw.items()} or None

    async def cache_result(self, job_id: str, data: bytes, ttl_seconds: int) -> None:
        """Keep the result bytes for ``ttl_seconds`` (needs a client without decoding)."""
        if ttl_seconds > 0:
            await self.redis.set(self._result_key(job_id), data, ex=ttl_seconds)

    async def cached_result(self, job_id: str) -> bytes | None:
        data = await self.redis.get(self._result_key(job_id))
        return data if isinstance(data, bytes) else None
