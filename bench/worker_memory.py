"""Whether the worker's memory stays flat over many jobs.

    .venv/bin/python bench/worker_memory.py [--jobs 1000] [--every 100] [--users 30]

Runs N `invert` jobs through the real backend (uvicorn on loopback, SQLite), Redis on
127.0.0.1:6379 (db 9, a fresh key prefix), one `comfygram worker` process and the ComfyUI and
Telegram test doubles (near-zero execution time). Each job has a status message, as the bot
gives it, so progress edits and the status message's removal are part of every job. Jobs are
fed a few at a time (at most one per user at once) so the worker always has one waiting.

Every ``--every`` delivered jobs it reads the worker process's VmRSS and VmHWM from
/proc/PID/status, and reports them with the growth from the sample after warm-up (``--warmup``
jobs, 200 by default) to the last one.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from PIL import Image
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from comfygram.settings import Settings
from comfygram.telegram import create_bot
from tests.helpers import API_TOKEN
from tests.stack import Stack, running_stack

FIRST_USER = 5000


def photo(side: int) -> bytes:
    """A JPEG like the ones Telegram hands a bot."""
    buffer = io.BytesIO()
    Image.effect_noise((side, side), 40).convert("RGB").save(buffer, "JPEG", quality=87)
    return buffer.getvalue()


def memory_kb(pid: int) -> tuple[int, int]:
    """The process's resident set now and at its peak (VmRSS, VmHWM), in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


async def feed(stack: Stack, jobs: int, free: asyncio.Queue[int], image: bytes) -> None:
    """Create ``jobs`` jobs, each with its status message, for users as they become free."""
    bot = create_bot(stack.settings)
    try:
        for n in range(jobs):
            user = await free.get()
            job, _ = await stack.backend.create_job(user, "invert", [(image, "p.jpg")])
            status = await bot.send_message(user, f"job {n} queued")
            await stack.backend.record_status_message(job.id, user, status.message_id)
    finally:
        await bot.session.close()


async def run(args: argparse.Namespace) -> list[tuple[int, float, int, int]]:
    """Samples of (jobs delivered, seconds since start, VmRSS kB, VmHWM kB)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(
            _env_file=None,
            api_token=API_TOKEN,
            database_url=f"sqlite+aiosqlite:///{root}/bench.db",
            media_dir=root / "media",
            redis_url="redis://127.0.0.1:6379/9",
            redis_prefix=f"bench-{uuid.uuid4().hex[:8]}",
            telegram_global_rate=30,
        )
        # As deployed (30 s by default): the tests' 1.5 s lease lapses on a loaded machine and
        # jobs are taken up again, which is not what is measured here.
        async with running_stack(
            settings, root, telegram_edit_interval=1.0, worker_lease_seconds=10.0
        ) as stack:
            stack.comfyui.execution_delay = 0.002
            # The worker starts (imports, preset checks) while the users are registered.
            worker = stack.spawn_worker("memory", TELEGRAM_GLOBAL_RATE="30")
            users = [FIRST_USER + n for n in range(args.users)]
            await asyncio.gather(*(stack.new_user(user, credits=args.jobs) for user in users))
            free: asyncio.Queue[int] = asyncio.Queue()
            for user in users:
                free.put_nowait(user)
            feeder = asyncio.create_task(feed(stack, args.jobs, free, photo(args.photo_side)))
            print(f"{args.jobs} invert jobs, {args.photo_side}px JPEG photos, {args.users} users")
            print(HEADER, flush=True)
            samples = [(0, 0.0, 0, 0)]  # not printed: the process has only just started
            delivered, seen = 0, 0
            started = time.monotonic()
            deadline = started + 60 + args.jobs * 2
            while samples[-1][0] < args.jobs:
                if worker.poll() is not None:
                    log = (root / "worker-memory.log").read_text()[-3000:]
                    raise SystemExit(f"the worker exited with {worker.returncode}:\n{log}")
                if feeder.done():
                    feeder.result()  # a failed feeder is a failed bench
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {samples[-1][0]} of {args.jobs} jobs delivered")
                # A user whose result arrived may have the next job.
                calls = stack.telegram.calls
                while seen < len(calls) and calls[seen].done:
                    if calls[seen].method == "sendPhoto" and calls[seen].ok:
                        delivered += 1
                        free.put_nowait(calls[seen].params["chat_id"])
                    seen += 1
                if delivered >= min(args.jobs, samples[-1][0] + args.every):
                    at = time.monotonic() - started
                    samples.append((delivered, at, *memory_kb(worker.pid)))
                    print(row(*samples[-1]), flush=True)
                await asyncio.sleep(0.05)
            await feeder
        await forget_keys(settings.redis_url, settings.redis_prefix)
        return samples[1:]


async def forget_keys(redis_url: str, prefix: str) -> None:
    """Delete the run's keys (live statuses are kept a day otherwise)."""
    redis = Redis.from_url(redis_url)
    keys = [key async for key in redis.scan_iter(f"{prefix}:*", count=1000)]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


HEADER = f"{'jobs':>6} {'seconds':>8} {'VmRSS kB':>10} {'VmHWM kB':>10}"


def row(jobs: int, at: float, rss: int, hwm: int) -> str:
    return f"{jobs:>6} {at:>8.1f} {rss:>10} {hwm:>10}"


def growth(samples: list[tuple[int, float, int, int]], warmup: int) -> float:
    """RSS at the last sample against the first sample at or after ``warmup`` jobs, in %."""
    base = next(rss for jobs, _at, rss, _hwm in samples if jobs >= warmup)
    return (samples[-1][2] - base) / base * 100


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100, help="sample every this many jobs")
    parser.add_argument("--warmup", type=int, default=200, help="jobs before the baseline")
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--photo-side", type=int, default=256)
    parser.add_argument("--json", type=Path, help="also write the growth to this file")
    args = parser.parse_args()
    samples = await run(args)
    warmup = min(args.warmup, args.jobs)
    grew = growth(samples, warmup)
    print(f"growth: {grew:+.1f}% (RSS at {samples[-1][0]} vs at {warmup} jobs)")
    if args.json:
        args.json.write_text(json.dumps({"jobs": samples[-1][0], "growth_pct": grew}))


if __name__ == "__main__":
    asyncio.run(main())
