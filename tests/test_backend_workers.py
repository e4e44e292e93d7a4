"""`comfygram backend --workers N`: several processes on one port, as an operator runs it.

A real process on PostgreSQL (a database of this test's own) and Redis: jobs created and read
through both processes, /metrics adding up every process's counts, the database migrated once,
and a clean stop. Also the fast paths behind the rates: the one-query status read, a JPEG
checked at 1/8 scale, and the pool's ping only after idling.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import httpx
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from redis import Redis
from sqlalchemy import text

from comfygram.backend import db
from comfygram.images import ImageRejected, prepare_input
from tests import images
from tests.conftest import REDIS_URL
from tests.redis_server import free_port

TOKEN = "workers-api-token-3f9a1c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PRESET = "bw"


async def _admin(statement: str) -> None:
    admin = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@pytest.fixture
def database():
    name = f"comfygram_workers_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def redis_prefix():
    prefix = f"cgworkers-{uuid.uuid4().hex[:10]}"
    yield prefix
    redis = Redis.from_url(REDIS_URL)
    keys = list(redis.scan_iter(f"{prefix}:*"))
    if keys:
        redis.delete(*keys)
    redis.close()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in raw if b"=" in entry)


def _jobs_created(text: str) -> float:
    return sum(
        float(value)
        for value in re.findall(
            rf'^comfygram_jobs_created_total{{preset="{PRESET}"}} (\S+)$', text, re.M
        )
    )


def _created_by(values: Path, pid: int) -> float:
    """Jobs created by one process, from its own file in PROMETHEUS_MULTIPROC_DIR."""
    with tempfile.TemporaryDirectory() as alone:
        for path in values.glob(f"*_{pid}.db"):
            shutil.copy(path, alone)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=alone)
        return _jobs_created(generate_latest(registry).decode())


def _wait_healthy(base: str, process: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(log.read_text())


def _create(base: str, telegram_id: int) -> str:
    # A new connection each time: the processes take turns accepting them.
    response = httpx.post(
        f"{base}/api/jobs/create",
        data={"telegram_id": str(telegram_id), "preset": PRESET},
        files={"image": ("p.jpg", images.jpeg(), "image/jpeg")},
        headers=AUTH,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.mark.timeout(180)
def test_two_processes_serve_one_port_and_metrics_add_up(database, redis_prefix, tmp_path):
    port = free_port()
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "VIRTUAL_ENV")}
    env = {
        **keep,
        "API_TOKEN": TOKEN,
        "DATABASE_URL": database,
        "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": redis_prefix,
        "MEDIA_DIR": str(tmp_path / "media"),
        "SIGNUP_BONUS": "0",
        "MAX_ACTIVE_JOBS_PER_USER": "1000",
    }
    log = tmp_path / "output.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "comfygram", "backend", "--port", str(port), "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, process, log)
        servers = [pid for pid in _children(process.pid) if "spawn_main" in _cmdline(pid)]
        assert len(servers) == 2, log.read_text()
        values = Path(_environment(servers[0])["PROMETHEUS_MULTIPROC_DIR"])
        assert values.is_dir()

        users = range(1, 9)
        for user in users:
            httpx.post(f"{base}/api/users/register", json={"telegram_id": user}, headers=AUTH)
            credit = {"amount": 100, "reason": "t", "actor": "t", "idempotency_key": f"t{user}"}
            httpx.post(f"{base}/api/users/by-telegram-id/{user}/credits", json=credit, headers=AUTH)
        created: list[str] = []
        with ThreadPoolExecutor(8) as pool:
            # Rounds of concurrent creations until each process has made some.
            for _ in range(10):
                created += pool.map(lambda user: _create(base, user), users)
                if all(_created_by(values, pid) > 0 for pid in servers):
                    break
        by_process = [_created_by(values, pid) for pid in servers]
        assert all(count > 0 for count in by_process), by_process
        assert sum(by_process) == len(created)

        # Whichever process answers, /metrics counts every process's jobs.
        for _ in range(6):
            scraped = httpx.get(f"{base}/metrics", headers=AUTH)
            assert _jobs_created(scraped.text) == len(created), scraped.text

        # Every job reads back exactly: queued, in creation order (one query per read).
        positions = []
        for job_id in created:
            job = httpx.get(f"{base}/api/jobs/{job_id}", headers=AUTH).json()
            assert job["id"] == job_id and job["status"] == "queued" and job["preset"] == PRESET
            assert len(job["inputs"]) == 1 and job["outputs"] == [] and not job["has_result"]
            positions.append(job["position"])
        assert sorted(positions) == list(range(1, len(created) + 1))
        missing = httpx.get(f"{base}/api/jobs/{uuid.uuid4()}", headers=AUTH)
        assert missing.status_code == 404
        assert httpx.get(f"{base}/api/jobs/{created[0]}").status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    output = log.read_text()
    assert process.returncode in (0, -signal.SIGTERM), output
    # Migrated once, by the parent, before the processes started.
    assert output.count("Running upgrade  -> 0001") == 1, output
    assert output.count("backend ready") == 2, output
    assert not values.exists()  # the Prometheus values went with the parent
    assert TOKEN not in output


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _noisy_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((640, 480), 40).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_a_jpeg_input_is_kept_as_sent_and_still_checked_to_its_last_byte():
    photo = _noisy_jpeg()
    stored, info = prepare_input(photo, 10_000_000)
    assert stored is photo and (info.width, info.height, info.format) == (640, 480, "JPEG")
    broken = bytearray(photo)
    broken[len(photo) // 2 : len(photo) // 2 + 500] = b"\xff" * 500
    for damaged in (photo[: len(photo) // 2], photo[:-40], bytes(broken)):
        with pytest.raises(ImageRejected) as refused:
            prepare_input(damaged, 10_000_000)
        assert refused.value.kind == "unreadable"


async def test_a_pooled_connection_the_server_dropped_is_replaced_before_it_fails(database):
    """What pool_pre_ping did, now only for a connection idle over PING_AFTER_IDLE_SECONDS."""
    engine = db.create_engine(database.replace("postgresql:", "postgresql+asyncpg:"))
    try:
        async with engine.connect() as connection:
            dropped = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar()
        await _admin(f"SELECT pg_terminate_backend({int(dropped)})")
        await asyncio.sleep(db.PING_AFTER_IDLE_SECONDS + 0.2)
        async with engine.connect() as connection:
            fresh = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar()
        assert fresh != dropped
    finally:
        await engine.dispose()
