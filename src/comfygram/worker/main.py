"""``comfygram worker``: wires one Worker to Redis, the backend, ComfyUI and Telegram."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket

import prometheus_client

from comfygram.api import BackendClient
from comfygram.comfyui import ComfyUIClient
from comfygram.livestatus import LiveStatus
from comfygram.queue import JobQueue, connect_redis
from comfygram.settings import Settings
from comfygram.telegram import RateBudget, TelegramSender, create_bot
from comfygram.worker.gpu_lock import GpuLock
from comfygram.worker.messages import UserMessages
from comfygram.worker.runner import Worker, WorkerConfig

log = logging.getLogger(__name__)


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``), then shut down within the grace period."""
    settings.require("api_token", "bot_token")
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
    name = settings.worker_name or default_name()
    config = WorkerConfig(
        name=name,
        comfyui_url=settings.comfyui_url,
        lease_seconds=settings.worker_lease_seconds,
        grace_seconds=settings.worker_grace_seconds,
        max_attempts=settings.max_attempts,
        backoff_seconds=settings.retry_backoff_seconds,
        result_cache_seconds=settings.result_cache_seconds,
        queue_depth=settings.comfyui_queue_depth if settings.worker_prefetch else 0,
    )
    if settings.worker_metrics_port:
        prometheus_client.start_http_server(settings.worker_metrics_port)
        log.info("worker metrics on :%d/metrics", settings.worker_metrics_port)
    redis = connect_redis(settings)
    binary_redis = connect_redis(settings, decode_responses=False)
    backend = BackendClient(settings.backend_api_url, settings.api_token.get_secret_value())
    comfy = ComfyUIClient(settings.comfyui_url, client_id=f"comfygram-{name}")
    bot = create_bot(settings)
    budget = RateBudget(
        redis,
        settings.redis_prefix,
        edit_interval=settings.telegram_edit_interval,
        global_rate=settings.telegram_global_rate,
    )
    worker = Worker(
        config,
        backend=backend,
        comfy=comfy,
        queue=JobQueue(redis, prefix=settings.redis_prefix, photos=binary_redis),
        live=LiveStatus(binary_redis, settings.redis_prefix),
        lock=GpuLock(
            redis, settings.redis_prefix, settings.comfyui_url, name, settings.worker_lease_seconds
        ),
        messages=UserMessages(backend, TelegramSender(bot, budget)),
    )
    log.info(
        "worker %s: ComfyUI %s, backend %s", name, settings.comfyui_url, settings.backend_api_url
    )
    try:
        await worker.run(stop)
    finally:
        await bot.session.close()
        await comfy.aclose()
        await backend.aclose()
        await redis.aclose()
        await binary_redis.aclose()
        log.info("worker %s stopped", name)
