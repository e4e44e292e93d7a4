"""Where a job's time goes between the backend, Redis, the worker, ComfyUI and Telegram.

    .venv/bin/python bench/worker_pipeline.py [--jobs 40] [--execution 0.2] [--photo-side 1536]

Runs N invert jobs through the real backend (uvicorn on loopback, SQLite), Redis on
127.0.0.1:6379 (db 9, a fresh key prefix), one `comfygram worker` process, and the ComfyUI and
Telegram test doubles, with a fixed execution time per ComfyUI node. Then again with the worker's
prefetch off, side by side. Reports p50/p95 per stage:

- queue wait: job created -> worker marks it processing
- dequeue -> ComfyUI start: processing -> the double starts executing the prompt
- ComfyUI idle between jobs: one prompt ends -> the next starts (the GPU doing nothing)
- ComfyUI done -> Telegram send: execution ends -> the double receives sendPhoto
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from comfygram.settings import Settings
from tests.helpers import API_TOKEN
from tests.stack import running_stack

USER = 777


def photo(side: int) -> bytes:
    """A JPEG like the ones Telegram hands a bot (it recompresses photos to JPEG)."""
    buffer = io.BytesIO()
    Image.effect_noise((side, side * 3 // 4), 40).convert("RGB").save(buffer, "JPEG", quality=87)
    return buffer.getvalue()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def run(jobs: int, execution: float, side: int, prefetch: bool) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(
            _env_file=None,
            api_token=API_TOKEN,
            database_url=f"sqlite+aiosqlite:///{root}/bench.db",
            media_dir=root / "media",
            redis_url="redis://127.0.0.1:6379/9",
            redis_prefix=f"bench-{uuid.uuid4().hex[:8]}",
            max_upload_bytes=50 * 1024 * 1024,
        )
        async with running_stack(settings, root) as stack:
            stack.comfyui.execution_delay = execution / 3  # three nodes in invert
            stack.telegram.recompress_photos = False
            # One job per user: Telegram allows about one message per second per chat.
            users = [USER + n for n in range(jobs)]
            for user in users:
                await stack.new_user(user, credits=1)
            image = photo(side)
            offset = time.time() - time.monotonic()
            created: dict[str, float] = {}
            for user in users:
                created_at = time.monotonic()
                job, _ = await stack.backend.create_job(user, "invert", [(image, "p.png")])
                created[job.id] = created_at
            # The worker in its own process, as deployed: its loop is not shared with the
            # backend and the doubles running here.
            stack.spawn_worker("bench", WORKER_PREFETCH=str(prefetch).lower())
            for job_id in created:
                await stack.settled(job_id, timeout=60 + jobs * execution * 3)

            timeline = stack.comfyui.timeline
            starts = {pid: at for at, kind, pid, _ in timeline if kind == "start"}
            ends = {pid: at for at, kind, pid, _ in timeline if kind == "end"}
            prompt_of = {
                body["prompt"]["3"]["inputs"]["filename_prefix"].split("/")[1][:36]: body[
                    "prompt_id"
                ]
                for body in stack.comfyui.prompts_received
            }
            sent_at = sorted(call.at for call in stack.telegram.sent("sendPhoto") if call.ok)
            stages: dict[str, list[float]] = {
                "queue wait": [],
                "dequeue -> ComfyUI start": [],
                "ComfyUI idle between jobs": [],
                "ComfyUI done -> Telegram send": [],
            }
            assert len(sent_at) == jobs  # every result went out
            order = sorted(starts, key=starts.get)
            for previous, following in itertools.pairwise(order):
                stages["ComfyUI idle between jobs"].append(starts[following] - ends[previous])
            for job_id, created_at in created.items():
                job = await stack.backend.job(job_id)
                started = job.started_at.timestamp() - offset
                prompt = prompt_of[job_id]
                stages["queue wait"].append(started - created_at)
                stages["dequeue -> ComfyUI start"].append(starts[prompt] - started)
            # sendPhoto calls in order of execution end (one worker, results in order).
            for end, sent in zip(sorted(ends.values()), sent_at, strict=False):
                stages["ComfyUI done -> Telegram send"].append(sent - end)
            return stages


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--execution", type=float, default=0.2, help="seconds in ComfyUI")
    parser.add_argument("--photo-side", type=int, default=1280)
    args = parser.parse_args()
    results = {}
    for prefetch in (True, False):
        results[prefetch] = await run(args.jobs, args.execution, args.photo_side, prefetch)
    print(
        f"{args.jobs} jobs, {args.execution:.2f}s in ComfyUI each, "
        f"{args.photo_side}px JPEG photos; milliseconds"
    )
    print(f"{'stage':32} {'prefetch p50':>13} {'p95':>8} {'no prefetch p50':>16} {'p95':>8}")
    for stage in results[True]:
        on, off = results[True][stage], results[False][stage]
        print(
            f"{stage:32} {pct(on, 0.5):13.1f} {pct(on, 0.95):8.1f} "
            f"{pct(off, 0.5):16.1f} {pct(off, 0.95):8.1f}"
        )
    idle_on = statistics.median(results[True]["ComfyUI idle between jobs"])
    idle_off = statistics.median(results[False]["ComfyUI idle between jobs"])
    print(f"median GPU idle gap without prefetch / with: {idle_off / max(idle_on, 1e-6):.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
