"""The whole system on loopback for end-to-end tests: the real backend (uvicorn on a free
port), real Redis, the ComfyUI and Telegram doubles, and workers in-process or as processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from comfygram.api import BackendClient, Job
from comfygram.backend.app import create_app
from comfygram.livestatus import LiveStatus
from comfygram.queue import connect_redis
from comfygram.settings import Settings
from comfygram.telegram import create_bot
from comfygram.worker.main import run_worker
from tests.bot_helpers import serve
from tests.doubles.comfyui import ComfyUIDouble
from tests.doubles.telegram import TEST_BOT_TOKEN, TelegramDouble
from tests.helpers import API_TOKEN, seed_sqlite

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stack:
    settings: Settings
    backend: BackendClient
    comfyui: ComfyUIDouble
    telegram: TelegramDouble
    log_dir: Path
    workers: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # -- workers --------------------------------------------------------------------------

    def start_worker(self, name: str = "w1", **overrides: Any) -> None:
        """A worker in this process (cheap; stops cleanly with stop_worker)."""
        stop = asyncio.Event()
        settings = self.settings.model_copy(update={"worker_name": name, **overrides})
        self.workers[name] = (asyncio.create_task(run_worker(settings, stop)), stop)

    async def stop_worker(self, name: str = "w1", timeout: float = 15) -> None:
        task, stop = self.workers.pop(name)
        stop.set()
        await asyncio.wait_for(task, timeout)

    def spawn_worker(self, name: str, **environment: str) -> subprocess.Popen[bytes]:
        """`comfygram worker` as a real process, for kill -9 tests; logs go to ``log_dir``."""
        env = {**os.environ, **self.environment(), "WORKER_NAME": name, **environment}
        with (self.log_dir / f"worker-{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "comfygram", "worker"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def environment(self) -> dict[str, str]:
        s = self.settings
        return {
            "API_TOKEN": API_TOKEN,
            "BACKEND_API_URL": s.backend_api_url,
            "BOT_TOKEN": TEST_BOT_TOKEN,
            "TELEGRAM_API_URL": s.telegram_api_url,
            "COMFYUI_URL": s.comfyui_url,
            "REDIS_URL": s.redis_dsn,
            "REDIS_PREFIX": s.redis_prefix,
            "WORKER_LEASE_SECONDS": str(s.worker_lease_seconds),
            "WORKER_GRACE_SECONDS": str(s.worker_grace_seconds),
            "RETRY_BACKOFF_SECONDS": str(s.retry_backoff_seconds),
            "MAX_ATTEMPTS": str(s.max_attempts),
            "TELEGRAM_EDIT_INTERVAL": str(s.telegram_edit_interval),
            "LOG_LEVEL": "INFO",
        }

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait(5)

    # -- jobs -----------------------------------------------------------------------------

    async def new_user(self, telegram_id: int, credits: int = 10, language: str = "en") -> None:
        self.telegram.user(telegram_id, language_code=language)  # they started the bot
        await self.backend.register(telegram_id, first_name="Test", language_code=language)
        if credits:
            await self.backend.adjust_credits(
                telegram_id,
                credits,
                reason="tests",
                actor="tests",
                idempotency_key=f"t{telegram_id}",
            )

    async def status_message(self, chat_id: int, text: str) -> int:
        """Send a message as the bot does when a job is created; returns its id."""
        bot = create_bot(self.settings)
        try:
            return (await bot.send_message(chat_id, text)).message_id
        finally:
            await bot.session.close()

    async def live_status(self, job_id: str) -> dict[str, str] | None:
        redis = connect_redis(self.settings)
        try:
            return await LiveStatus(redis, self.settings.redis_prefix).get(job_id)
        finally:
            await redis.aclose()

    async def wait_job(self, job_id: str, done: Callable[[Job], bool], timeout: float = 20) -> Job:
        """Poll the backend until ``done(job)``; fails with the last state seen."""
        deadline = time.monotonic() + timeout
        job = await self.backend.job(job_id)
        while not done(job):
            for name, (task, _stop) in self.workers.items():
                if task.done():
                    raise AssertionError(f"worker {name} stopped: {task.exception()!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"job never reached the expected state: {job!r}")
            await asyncio.sleep(0.05)
            job = await self.backend.job(job_id)
        return job

    async def settled(self, job_id: str, timeout: float = 20) -> Job:
        """The job once it is final and its user message is settled."""
        return await self.wait_job(
            job_id,
            lambda j: (
                j.status in ("succeeded", "failed", "cancelled")
                and j.delivery_status not in ("pending", "sending")
            ),
            timeout,
        )


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_stack(settings: Settings, root: Path, **overrides: Any) -> AsyncIterator[Stack]:
    async with ComfyUIDouble(root / "comfyui") as comfyui, TelegramDouble() as telegram:
        base = settings.model_copy(
            update={
                "comfyui_url": comfyui.url,
                "telegram_api_url": telegram.url,
                "bot_token": SecretStr(TEST_BOT_TOKEN),
                "worker_lease_seconds": 1.5,
                "worker_grace_seconds": 5.0,
                "retry_backoff_seconds": 0.1,
                "telegram_edit_interval": 0.2,
                **overrides,
            }
        )
        await seed_sqlite(base.database_url)
        app = create_app(base)
        async with serve(lambda _url: app) as url:
            stack_settings = base.model_copy(update={"backend_api_url": url, "backend_url": url})
            async with BackendClient(url, API_TOKEN) as backend:
                stack = Stack(stack_settings, backend, comfyui, telegram, root)
                try:
                    yield stack
                finally:
                    for name in list(stack.workers):
                        with contextlib.suppress(Exception):
                            await stack.stop_worker(name)
                    for process in stack.processes:
                        if process.poll() is None:
                            stack.kill(process)
