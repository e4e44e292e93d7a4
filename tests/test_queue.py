"""The Redis Streams queue: idempotent enqueue, leases, redelivery, and recovery from Redis loss."""

import asyncio
import json

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, RedisError

from comfygram.backend.app import create_app
from comfygram.backend.reconcile import reconcile_once
from comfygram.queue import JobQueue
from comfygram.settings import Settings
from tests.conftest import REDIS_URL
from tests.helpers import backend_client, create_job, register
from tests.redis_server import RedisServer


@pytest.fixture
async def queue(redis, redis_prefix) -> JobQueue:
    job_queue = JobQueue(redis, prefix=redis_prefix)
    await job_queue.ensure_group()
    return job_queue


async def test_enqueue_is_idempotent(queue, redis):
    assert await queue.enqueue("job-1", {"preset": "bw", "attempts": 0})
    assert not await queue.enqueue("job-1", {"preset": "bw", "attempts": 0})
    assert await redis.xlen(queue.stream) == 1
    assert await queue.length() == 1
    assert await queue.contains("job-1")


async def test_taken_job_is_acked_once_done(queue, redis):
    await queue.enqueue("job-1", {"preset": "bw"})
    delivery = await queue.take("worker-a", block_ms=100)
    assert delivery.job_id == "job-1" and delivery.payload == {"id": "job-1", "preset": "bw"}
    assert await queue.take("worker-b", block_ms=50) is None
    await queue.ack(delivery)
    assert await queue.length() == 0
    assert await redis.xlen(queue.stream) == 0
    assert await queue.enqueue("job-1", {"preset": "bw"}), "a finished job may be queued again"


async def test_a_dead_workers_job_is_claimed_after_its_lease(queue):
    await queue.enqueue("job-1", {"preset": "bw"})
    held = await queue.take("worker-a", block_ms=100)
    assert await queue.claim_stale("worker-b", lease_ms=10_000) == []
    await asyncio.sleep(0.15)
    claimed = await queue.claim_stale("worker-b", lease_ms=100)
    assert [d.job_id for d in claimed] == ["job-1"]
    # The old holder finds out that its lease is gone; the new one can keep renewing.
    assert not await queue.renew("worker-a", held)
    assert await queue.renew("worker-b", claimed[0])


async def test_renewing_keeps_the_job_from_being_claimed(queue):
    await queue.enqueue("job-1", {"preset": "bw"})
    held = await queue.take("worker-a", block_ms=100)
    for _ in range(3):
        await asyncio.sleep(0.08)
        assert await queue.renew("worker-a", held)
        assert await queue.claim_stale("worker-b", lease_ms=150) == []


async def test_consumer_recovers_when_redis_loses_the_group(queue, redis):
    await redis.delete(queue.stream, queue.index)
    assert await queue.take("worker-a", block_ms=50) is None
    await queue.enqueue("job-2", {"preset": "bw"})
    assert (await queue.take("worker-a", block_ms=100)).job_id == "job-2"


async def test_created_jobs_are_on_the_queue_as_json(api, app, redis):
    await register(api)
    job = (await create_job(api)).json()
    queue: JobQueue = app.state.queue
    entries = await redis.xrange(queue.stream)
    assert [json.loads(fields["job"]) for _id, fields in entries] == [
        {"id": job["id"], "preset": "bw", "attempts": 0}
    ]


@pytest.fixture
async def binary_redis():
    """The tests' Redis through a client that does not decode (photos are bytes)."""
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


async def test_a_new_job_s_photos_ride_along_only_while_the_queue_is_short(
    redis, binary_redis, redis_prefix
):
    queue = JobQueue(redis, prefix=redis_prefix, photos=binary_redis)
    photos = [(b"\xff\xd8 first", "image/jpeg"), (b"\x89PNG second", "image/png")]
    assert await queue.enqueue("job-1", {"preset": "pair"}, photos, ride_max_jobs=2)
    assert await queue.photo("job-1", 0) == photos[0]
    assert await queue.photo("job-1", 1) == photos[1]
    assert await queue.photo("job-1", 2) is None
    ttl = await redis.pttl(f"{queue.stream}:photos:job-1")
    assert 0 < ttl <= 30_000  # they go by themselves
    assert await queue.enqueue("job-2", {"preset": "bw"}, photos[:1], ride_max_jobs=2)
    assert await queue.photo("job-2", 0) == photos[0]  # the second job: still short
    assert await queue.enqueue("job-3", {"preset": "bw"}, photos[:1], ride_max_jobs=2)
    assert await queue.photo("job-3", 0) is None  # a third waits: fetched when taken
    assert await queue.enqueue("job-4", {"preset": "bw"}, photos[:1], ride_max_jobs=0)
    assert await queue.photo("job-4", 0) is None  # 0: never
    assert not await queue.enqueue("job-1", {"preset": "pair"}, photos, ride_max_jobs=9)
    assert await JobQueue(redis, prefix=redis_prefix).photo("job-1", 0) is None  # no reader


async def test_photos_are_not_even_sent_to_redis_while_the_queue_was_long(
    redis, binary_redis, redis_prefix
):
    queue = JobQueue(redis, prefix=redis_prefix, photos=binary_redis)
    photo = [(b"\xff\xd8 photo", "image/jpeg")]
    for n in range(3):
        await queue.enqueue(f"job-{n}", {"preset": "bw"}, photo, ride_max_jobs=2)
    sent: list[int] = []
    script = queue._enqueue

    async def counting(keys, args):
        sent.append(sum(len(a) for a in args if isinstance(a, bytes)))
        return await script(keys=keys, args=args)

    queue._enqueue = counting
    await queue.enqueue("job-3", {"preset": "bw"}, photo, ride_max_jobs=2)
    assert sent == [0]  # 3 jobs at the last enqueue: the photo's bytes stay home


async def test_a_created_job_s_photo_rides_along_as_stored(api, app, binary_redis):
    await register(api)
    job = (await create_job(api)).json()
    stored = await api.get(f"/api/jobs/{job['id']}/inputs/0")
    queue = JobQueue(app.state.redis, app.state.settings.redis_prefix, photos=binary_redis)
    assert await queue.photo(job["id"], 0) == (stored.content, stored.headers["content-type"])


async def wait_until(predicate, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not await predicate():
            await asyncio.sleep(0.05)


@pytest.fixture
async def backend_on_private_redis(settings, tmp_path, seeded_database):
    """The backend on a redis-server of its own, which the test may flush without harming
    other test runs sharing the machine's Redis."""
    server = RedisServer(tmp_path)
    server.start()
    settings.redis_url = server.url
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app), backend_client(app) as api:
            yield app, api, app.state.redis
    finally:
        server.stop()


async def test_flushed_redis_gets_its_queued_jobs_back_once(backend_on_private_redis, settings):
    app, api, redis = backend_on_private_redis
    await register(api)
    ids = {(await create_job(api)).json()["id"] for _ in range(3)}
    queue: JobQueue = app.state.queue
    assert await queue.length() == 3

    await redis.flushdb()

    async def all_back() -> bool:
        return await queue.length() == 3

    await wait_until(all_back, within=5 * settings.reconcile_interval_seconds + 2)
    await asyncio.sleep(3 * settings.reconcile_interval_seconds)  # more reconcile rounds
    entries = await redis.xrange(queue.stream)
    assert sorted(json.loads(f["job"])["id"] for _id, f in entries) == sorted(ids)


async def test_only_queued_jobs_are_reconciled(backend_on_private_redis):
    app, api, redis = backend_on_private_redis
    await register(api)
    kept = (await create_job(api)).json()["id"]
    cancelled = (await create_job(api)).json()["id"]
    await api.post(f"/api/jobs/{cancelled}/status", json={"status": "cancelled"})
    await redis.flushdb()
    assert await reconcile_once(app.state.sessions, app.state.queue) == 1
    assert await app.state.queue.contains(kept)
    assert not await app.state.queue.contains(cancelled)


async def test_jobs_created_while_redis_is_down_are_queued_when_it_returns(settings, tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    settings.redis_url = server.url
    app = create_app(settings)
    try:
        async with (
            app.router.lifespan_context(app),
            backend_client(app) as api,
        ):
            await register(api)
            server.stop()
            response = await create_job(api)
            assert response.status_code == 201, "the database took the job; Redis can wait"
            assert (await api.get("/readyz")).status_code == 503
            server.start()  # same port, empty
            queue: JobQueue = app.state.queue

            async def back() -> bool:
                try:
                    return await queue.contains(response.json()["id"])
                except (RedisError, OSError):
                    return False

            await wait_until(back, within=10)
            assert await queue.length() == 1
    finally:
        server.stop()


async def test_redis_password_from_settings_reaches_redis(tmp_path):
    server = RedisServer(tmp_path, password="s3cret/pass@")
    server.start()
    try:
        without = Settings(_env_file=None, redis_host="127.0.0.1", redis_port=server.port)
        with_password = Settings(
            _env_file=None,
            redis_host="127.0.0.1",
            redis_port=server.port,
            redis_password="s3cret/pass@",
        )
        client = Redis.from_url(with_password.redis_dsn)
        assert await client.ping()
        await client.aclose()
        client = Redis.from_url(without.redis_dsn)
        with pytest.raises(AuthenticationError):
            await client.ping()
        await client.aclose()
    finally:
        server.stop()


async def test_deferred_job_comes_back_when_due_and_is_not_enqueued_twice(queue, redis):
    await queue.enqueue("job-1", {"preset": "bw", "attempts": 0})
    delivery = await queue.take("worker-a", block_ms=100)
    await queue.defer(delivery, {"preset": "bw", "attempts": 1}, delay=0.3)
    assert await redis.xlen(queue.stream) == 0
    assert await queue.contains("job-1")  # still counted as queued: the reconciler keeps off
    assert not await queue.enqueue("job-1", {"preset": "bw", "attempts": 1})
    assert await queue.take("worker-a", block_ms=50) is None  # not due yet
    await asyncio.sleep(0.35)
    again = await queue.take("worker-b", block_ms=100)
    assert again is not None and again.job_id == "job-1"
    assert again.payload["attempts"] == 1
    await queue.ack(again)
    assert await queue.length() == 0


async def test_defer_with_no_delay_hands_a_job_back_at_once(queue):
    await queue.enqueue("job-1", {"preset": "bw"})
    delivery = await queue.take("worker-a", block_ms=100)
    await queue.defer(delivery, delivery.payload, delay=0)
    again = await queue.take("worker-b", block_ms=100)
    assert again is not None and again.job_id == "job-1"
    # The first worker's hold is gone: it can no longer renew the job's lease.
    assert not await queue.renew("worker-a", delivery)
