"""`comfygram worker` alone, as a process, through outages of Redis and the backend: one line
saying what is down and what to check, no traceback, no exit, and work once it is back."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests import images
from tests.redis_server import RedisServer, free_port
from tests.stack import Stack, eventually, running_stack

USER = 8181


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


class Gate:
    """A port in front of the backend that can be shut (connections refused) and opened."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def open(self) -> None:
        self._server = await asyncio.start_server(
            self._connect, "127.0.0.1", self.port, reuse_address=True
        )

    async def shut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for pipe in list(self._pipes):
            pipe.cancel()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                sink.close()


def worker_log(stack: Stack, name: str) -> str:
    return (stack.log_dir / f"worker-{name}.log").read_text(errors="replace")


async def warned(stack: Stack, name: str, service: str) -> None:
    """Wait for the worker's line about ``service`` (start-up takes seconds on a busy machine),
    then give it a few seconds of retries."""

    async def said() -> bool:
        return f"{service} unreachable" in worker_log(stack, name)

    await eventually(said, timeout=40)
    await asyncio.sleep(4)


def assert_alive_and_quiet(process: subprocess.Popen[bytes], log: str, service: str) -> str:
    """The process runs on, with one line about ``service`` and no traceback; that line."""
    assert process.poll() is None, log
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if f"{service} unreachable" in line]
    assert len(lines) == 1, log  # one line, not one per retry
    return lines[0]


async def run_one_job(stack: Stack) -> None:
    job, _ = await stack.backend.create_job(USER, "invert", [(images.png(), "photo.png")])
    done = await stack.settled(job.id, timeout=60)
    assert (done.status, done.delivery_status) == ("succeeded", "delivered")


async def test_a_worker_started_while_redis_is_down_waits_for_it_then_works(
    settings, tmp_path: Path
):
    server = RedisServer(tmp_path)
    server.start()
    try:
        async with running_stack(settings, tmp_path, redis_url=server.url) as stack:
            await stack.new_user(USER, credits=10)
            server.stop()
            process = stack.spawn_worker("lonely")
            await warned(stack, "lonely", "Redis")
            line = assert_alive_and_quiet(process, worker_log(stack, "lonely"), "Redis")
            assert "check REDIS_URL" in line
            server.start()  # the same port, empty
            await run_one_job(stack)
            assert "Redis reachable again" in worker_log(stack, "lonely")
            assert "Traceback" not in worker_log(stack, "lonely")
    finally:
        server.stop()


async def test_a_worker_started_while_the_backend_is_down_waits_for_it_then_works(
    settings, tmp_path: Path, redis
):
    async with running_stack(settings, tmp_path) as stack:
        await stack.new_user(USER, credits=10)
        gate = Gate(stack.settings.backend_api_url)
        try:
            process = stack.spawn_worker("lonely", BACKEND_API_URL=gate.url)
            await warned(stack, "lonely", "backend")
            line = assert_alive_and_quiet(process, worker_log(stack, "lonely"), "backend")
            assert "check BACKEND_API_URL" in line
            await gate.open()

            async def reported() -> bool:
                return any(w["name"] == "lonely" for w in await stack.backend.workers())

            await eventually(reported, timeout=30)
            await run_one_job(stack)
            # Down again while idle, and back: still one process, still no traceback.
            await gate.shut()
            await asyncio.sleep(3)
            assert process.poll() is None
            await gate.open()
            await run_one_job(stack)
            assert "Traceback" not in worker_log(stack, "lonely")
        finally:
            await gate.shut()
