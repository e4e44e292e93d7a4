"""Job creation throughput on SQLite and PostgreSQL, side by side in one run.

    .venv/bin/python bench/job_create.py [--jobs 300] [--concurrency 20]

Needs PostgreSQL and Redis on 127.0.0.1 (as the tests do). Each database gets the same work:
register users, then create jobs through the real FastAPI app (image check, ledger charge,
file write, commit, enqueue), one at a time and then `--concurrency` at once spread over
several users. Reports jobs per second and the PostgreSQL/SQLite ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
from PIL import Image

from comfygram.backend.app import create_app
from comfygram.settings import Settings

TOKEN = "bench-token"
PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "postgres"}


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((512, 512), 30).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


async def run(database_url: str, media: Path, jobs: int, concurrency: int) -> dict[str, float]:
    settings = Settings(
        _env_file=None,
        api_token=TOKEN,
        database_url=database_url,
        redis_url="redis://127.0.0.1:6379/9",
        redis_prefix=f"bench-{uuid.uuid4().hex[:8]}",
        media_dir=media,
        signup_bonus=0,
        max_active_jobs_per_user=jobs * 2,
    )
    app = create_app(settings)
    image = photo()
    users = list(range(1, concurrency + 1))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://bench",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as api,
    ):
        for user in users:
            await api.post("/api/users/register", json={"telegram_id": user})
            await api.post(
                f"/api/users/by-telegram-id/{user}/credits",
                json={
                    "amount": jobs * 2,
                    "reason": "bench",
                    "actor": "bench",
                    "idempotency_key": f"b{user}",
                },
            )

        async def create(user: int) -> None:
            response = await api.post(
                "/api/jobs/create",
                data={"telegram_id": str(user), "preset": "bw"},
                files={"image": ("p.jpg", image, "image/jpeg")},
            )
            assert response.status_code == 201, response.text

        started = time.perf_counter()
        for _ in range(jobs):
            await create(users[0])
        sequential = jobs / (time.perf_counter() - started)

        started = time.perf_counter()
        for start in range(0, jobs, concurrency):
            await asyncio.gather(*(create(u) for u in users[: min(concurrency, jobs - start)]))
        concurrent = jobs / (time.perf_counter() - started)
        keys = [k async for k in app.state.redis.scan_iter(f"{settings.redis_prefix}:*")]
        if keys:
            await app.state.redis.delete(*keys)
    return {"sequential": sequential, "concurrent": concurrent}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()

    name = f"comfygram_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(**PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = {
                "sqlite": await run(
                    f"sqlite:///{tmp}/bench.db", Path(tmp, "m1"), args.jobs, args.concurrency
                ),
                "postgres": await run(
                    f"postgresql://postgres@127.0.0.1:5432/{name}",
                    Path(tmp, "m2"),
                    args.jobs,
                    args.concurrency,
                ),
            }
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    print(f"{args.jobs} jobs each, 512x512 JPEG, preset bw, {args.concurrency} users at once")
    print(f"{'database':<10} {'sequential/s':>13} {'concurrent/s':>13}")
    for database, numbers in results.items():
        print(f"{database:<10} {numbers['sequential']:>13.1f} {numbers['concurrent']:>13.1f}")
    for mode in ("sequential", "concurrent"):
        ratio = results["postgres"][mode] / results["sqlite"][mode]
        print(f"postgres/sqlite {mode}: {ratio:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
