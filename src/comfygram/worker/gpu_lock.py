"""One lock per ComfyUI instance, so two workers never drive one GPU.

The lock expires unless its holder renews it, so a dead worker frees it by itself. Each
acquisition gets a fencing token (a counter that only grows): before every prompt it submits,
the holder checks that the lock still carries its token, so a worker that was paused past its
expiry and lost the lock to another cannot submit behind the new holder's back.
"""

from __future__ import annotations

import hashlib

from redis.asyncio import Redis

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class GpuLock:
    def __init__(
        self, redis: Redis, prefix: str, comfyui_url: str, owner: str, ttl_seconds: float
    ) -> None:
        digest = hashlib.sha256(comfyui_url.rstrip("/").encode()).hexdigest()[:16]
        self.redis = redis
        self.key = f"{prefix}:gpu:{digest}"
        self.owner = owner
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.token: int | None = None
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @property
    def _value(self) -> str:
        return f"{self.token}:{self.owner}"

    async def acquire(self) -> bool:
        """Take the lock if it is free (or already ours); True when we hold it."""
        if self.token is not None and await self.renew():
            return True
        token = int(await self.redis.incr(f"{self.key}:fence"))
        if await self.redis.set(self.key, f"{token}:{self.owner}", nx=True, px=self.ttl_ms):
            self.token = token
            return True
        self.token = None
        return False

    async def renew(self) -> bool:
        """Extend our hold; False (and forgotten) when the lock is no longer ours."""
        if self.token is None:
            return False
        if await self._renew(keys=[self.key], args=[self._value, self.ttl_ms]) == 1:
            return True
        self.token = None
        return False

    async def held(self) -> bool:
        """Whether the lock still carries our fencing token (checked before each submit)."""
        return self.token is not None and _text(await self.redis.get(self.key)) == self._value

    async def release(self) -> None:
        if self.token is not None:
            await self._release(keys=[self.key], args=[self._value])
            self.token = None

    async def holder(self) -> str | None:
        value = await self.redis.get(self.key)
        return None if value is None else _text(value)


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
