"""The per-ComfyUI GPU lock on the real Redis: exclusive, self-expiring, fenced."""

import asyncio

from comfygram.worker.gpu_lock import GpuLock

URL = "http://gpu-1:8188"


def lock(redis, prefix, owner, ttl=1.0, url=URL):
    return GpuLock(redis, prefix, url, owner, ttl)


async def test_only_one_worker_holds_a_comfyui(redis, redis_prefix):
    a, b = lock(redis, redis_prefix, "a"), lock(redis, redis_prefix, "b")
    assert await a.acquire()
    assert not await b.acquire()
    assert await a.acquire()  # re-acquiring our own lock renews it
    assert await a.held() and not await b.held()
    other_gpu = lock(redis, redis_prefix, "b", url="http://gpu-2:8188")
    assert await other_gpu.acquire()


async def test_a_dead_holders_lock_expires_and_fencing_tokens_grow(redis, redis_prefix):
    a, b = lock(redis, redis_prefix, "a", ttl=0.2), lock(redis, redis_prefix, "b", ttl=0.2)
    assert await a.acquire()
    first = a.token
    await asyncio.sleep(0.3)  # a stops renewing, as a killed worker would
    assert await b.acquire()
    assert b.token > first
    assert not await a.held()
    assert not await a.renew()  # a learns it lost the lock
    assert a.token is None


async def test_release_frees_only_our_own_lock(redis, redis_prefix):
    a, b = lock(redis, redis_prefix, "a"), lock(redis, redis_prefix, "b")
    assert await a.acquire()
    await b.release()  # not b's to release
    assert await a.held()
    await a.release()
    assert await b.acquire()
    assert await b.holder() == f"{b.token}:b"
