"""A job's live status and progress, and its cached outputs, in Redis.

The database (through the backend) is the record; this is what a worker shows while a job
runs, readable by anyone with the Redis prefix, and lost harmlessly on a flush.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

STATUS_TTL_SECONDS = 24 * 3600
# Outputs larger than this together are fetched from the backend when needed again.
RESULT_CACHE_MAX_BYTES = 20 * 1024 * 1024


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

    async def cache_results(
        self,
        job_id: str,
        files: Sequence[tuple[bytes, str, str]],
        ttl_seconds: int,
        *,
        max_bytes: int = RESULT_CACHE_MAX_BYTES,
    ) -> bool:
        """Keep every output of the job, ``(data, filename, mime)`` in order, for
        ``ttl_seconds``, all or none (needs a client without decoding). Outputs larger than
        ``max_bytes`` together are not kept (Redis holds them in memory): False."""
        if ttl_seconds <= 0 or sum(len(data) for data, _, _ in files) > max_bytes:
            return False
        fields: dict[str, bytes | str | int] = {"count": len(files)}
        for n, (data, filename, mime) in enumerate(files):
            fields.update({f"{n}:data": data, f"{n}:filename": filename, f"{n}:mime": mime})
        key = self._result_key(job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.expire(key, ttl_seconds)
            await pipe.execute()
        return True

    async def drop_results(self, job_id: str) -> None:
        """Forget the job's cached outputs (its result has been delivered)."""
        await self.redis.delete(self._result_key(job_id))

    async def cached_results(self, job_id: str) -> list[tuple[bytes, str, str]] | None:
        """The job's outputs as cached, in order; None when they are not (all) there."""
        raw = await self.redis.hgetall(self._result_key(job_id))
        fields = {_text(k): v for k, v in raw.items()}
        try:
            count = int(_text(fields["count"]))
            files = [
                (
                    fields[f"{n}:data"],
                    _text(fields[f"{n}:filename"]),
                    _text(fields[f"{n}:mime"]),
                )
                for n in range(count)
            ]
        except (KeyError, ValueError):
            return None
        if not files or not all(isinstance(data, bytes) for data, _, _ in files):
            return None
        return files
