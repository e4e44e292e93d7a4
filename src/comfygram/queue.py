"""The job queue: a Redis Stream read by one consumer group, plus an index of queued job ids.

Why a stream: a message read by a worker stays in the group's pending list until the worker
acknowledges it, so a worker killed mid-job (even `kill -9`) leaves the job to be claimed by
another after its lease (`XAUTOCLAIM`). A list popped with BRPOP would lose it.

The index hash (job id -> stream entry) makes enqueueing idempotent: the backend's reconciler
and the job-creation path may both try to enqueue a job, and it lands once. It is checked and
written in one Lua script, so two backends reconciling at once cannot both add a job.

While the queue is short (a new job will be taken at once), the job's photos ride along: the
same script keeps them in a hash for PHOTO_RIDE_SECONDS, and the worker that takes the job
reads them from there instead of asking the backend (one round trip off a job's path to the
GPU). Later, or when they are gone, the worker asks the backend, the authority on them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from comfygram.settings import Settings

# ARGV[3]: the most jobs (this one included) the queue may hold for the photos to ride along;
# ARGV[4]: their lifetime in ms; ARGV[5..]: field, value pairs of the photos' hash (KEYS[3]).
_ENQUEUE = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return false end
local id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], id)
local length = redis.call('HLEN', KEYS[2])
if #ARGV > 4 and length <= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[3], unpack(ARGV, 5))
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
return {id, length}
"""

# How long a job's photos ride along with it: a job taken at once is taken within this.
PHOTO_RIDE_SECONDS = 30

_RENEW = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"""

_ACK = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('HGET', KEYS[2], ARGV[3]) == ARGV[2] then redis.call('HDEL', KEYS[2], ARGV[3]) end
return 1
"""


# Move a job from the stream to the delayed set (a retry after backoff, or a hand-back).
_DEFER = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], 'delayed')
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3])
return 1
"""

# Put delayed jobs whose time has come back on the stream.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, job in ipairs(due) do
  local body = redis.call('HGET', KEYS[4], job)
  redis.call('ZREM', KEYS[3], job)
  redis.call('HDEL', KEYS[4], job)
  if body then
    local id = redis.call('XADD', KEYS[1], '*', 'job', body)
    redis.call('HSET', KEYS[2], job, id)
  end
end
return #due
"""


def connect_redis(settings: Settings, *, decode_responses: bool = True) -> Redis:
    return Redis.from_url(settings.redis_dsn, decode_responses=decode_responses)


@dataclass(frozen=True)
class Delivery:
    """One job handed to a worker: ack it when done, or it is redelivered after its lease."""

    message_id: str
    job_id: str
    payload: dict[str, Any]


class JobQueue:
    def __init__(
        self,
        redis: Redis,
        prefix: str = "comfygram",
        group: str = "workers",
        *,
        photos: Redis | None = None,
    ) -> None:
        self.redis = redis
        self.photos = photos  # a client without decoding, for the photos that ride along
        self._length_seen = 0  # the queue's length at this client's last enqueue
        self.stream = f"{prefix}:jobs"
        self.index = f"{prefix}:jobs:index"
        self.delayed = f"{prefix}:jobs:delayed"
        self.delayed_bodies = f"{prefix}:jobs:delayed:bodies"
        self.group = group
        self._enqueue = redis.register_script(_ENQUEUE)
        self._renew = redis.register_script(_RENEW)
        self._ack = redis.register_script(_ACK)
        self._defer = redis.register_script(_DEFER)
        self._promote = redis.register_script(_PROMOTE)

    # -- producer side -------------------------------------------------------------------

    async def enqueue(
        self,
        job_id: str,
        payload: dict[str, Any],
        photos: Sequence[tuple[bytes, str]] = (),
        *,
        ride_max_jobs: int = 0,
    ) -> bool:
        """Put a job on the queue unless it is already there; True when it was added.
        ``photos`` ((data, mime) per slot) ride along when the queue then holds at most
        ``ride_max_jobs`` jobs."""
        body = json.dumps({"id": job_id, **payload}, separators=(",", ":"))
        fields: list[bytes | str] = []
        # Not sent at all while the queue was long at the last enqueue: they would not ride.
        if 0 < ride_max_jobs and self._length_seen < ride_max_jobs:
            for index, (data, mime) in enumerate(photos):
                fields += [str(index), data, f"{index}:mime", mime]
        added = await self._enqueue(
            keys=[self.stream, self.index, self._photos_key(job_id)],
            args=[job_id, body, ride_max_jobs, PHOTO_RIDE_SECONDS * 1000, *fields],
        )
        if added is None:
            return False
        self._length_seen = int(added[1])
        return True

    def _photos_key(self, job_id: str) -> str:
        return f"{self.stream}:photos:{job_id}"

    async def photo(self, job_id: str, index: int) -> tuple[bytes, str] | None:
        """The job's photo ``index`` and its type, when it rode along (needs a client without
        decoding: ``JobQueue(..., photos=...)``); None when it did not or is gone."""
        if self.photos is None:
            return None
        data, mime = await self.photos.hmget(
            self._photos_key(job_id), [str(index), f"{index}:mime"]
        )
        if data is None or mime is None:
            return None
        return data, mime.decode()

    async def contains(self, job_id: str) -> bool:
        return bool(await self.redis.hexists(self.index, job_id))

    async def length(self) -> int:
        """Jobs waiting or being worked on."""
        return int(await self.redis.hlen(self.index))

    # -- consumer side -------------------------------------------------------------------

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def take(self, consumer: str, block_ms: int = 5000) -> Delivery | None:
        """Wait up to block_ms for a new job; recreates the group if Redis lost it."""
        await self.promote_due()
        try:
            reply = await self.redis.xreadgroup(
                self.group, consumer, {self.stream: ">"}, count=1, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return None
        for _stream, messages in reply or []:
            for message_id, fields in messages:
                return _delivery(message_id, fields)
        return None

    async def claim_stale(self, consumer: str, lease_ms: int) -> list[Delivery]:
        """Take over jobs whose worker has not renewed its lease for lease_ms."""
        try:
            _next, messages, _deleted = await self.redis.xautoclaim(
                self.stream, self.group, consumer, min_idle_time=lease_ms, start_id="0-0", count=10
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return []
        return [_delivery(mid, fields) for mid, fields in messages if fields]

    async def renew(self, consumer: str, delivery: Delivery) -> bool:
        """Reset the lease on a job this consumer holds; False when it was lost to another."""
        renewed = await self._renew(
            keys=[self.stream], args=[self.group, delivery.message_id, consumer]
        )
        return renewed == 1

    async def ack(self, delivery: Delivery) -> None:
        """The job left the queue for good (finished, failed or handed back for a retry)."""
        await self._ack(
            keys=[self.stream, self.index], args=[self.group, delivery.message_id, delivery.job_id]
        )

    async def defer(self, delivery: Delivery, payload: dict[str, Any], delay: float) -> None:
        """Hand the job back to run again in ``delay`` seconds (0: as soon as a worker is free).

        Atomic: the job is never both on the stream and delayed, and never on neither.
        """
        body = json.dumps({**payload, "id": delivery.job_id}, separators=(",", ":"))
        due_ms = await self._now_ms() + int(delay * 1000)
        await self._defer(
            keys=self._keys(),
            args=[self.group, delivery.message_id, delivery.job_id, body, due_ms],
        )

    async def promote_due(self) -> int:
        """Move delayed jobs that are due onto the stream; returns how many."""
        return int(await self._promote(keys=self._keys(), args=[await self._now_ms()]))

    def _keys(self) -> list[str]:
        return [self.stream, self.index, self.delayed, self.delayed_bodies]

    async def _now_ms(self) -> int:
        # Redis's clock, so workers on machines with skewed clocks agree on what is due.
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000


def _delivery(message_id: str, fields: dict[str, str]) -> Delivery:
    payload = json.loads(fields["job"])
    return Delivery(message_id=message_id, job_id=payload["id"], payload=payload)
