"""`comfygram bot` as a real process when Telegram refuses the token or cannot be reached, and
when the backend is down: it keeps running, says what is wrong in one line (no traceback, no
token), retries, and serves as soon as Telegram answers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.doubles.comfyui import ComfyUIDouble
from tests.doubles.telegram import TEST_BOT_TOKEN, TelegramDouble
from tests.helpers import API_TOKEN
from tests.redis_server import free_port

TOKEN_LINE = "BOT_TOKEN rejected by Telegram (401 Unauthorized): check BOT_TOKEN"


class Process:
    """The running `comfygram bot` and everything it has printed so far."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.output = ""
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.output += line.decode(errors="replace")

    async def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.process.returncode is None, f"the bot exited:\n{self.output}"
            assert time.monotonic() < deadline, f"never said {text!r}:\n{self.output}"
            await asyncio.sleep(0.1)

    def lines(self, text: str) -> list[str]:
        return [line for line in self.output.splitlines() if text in line]

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), 30)
        await self._reader
        return code


@pytest.fixture
async def bot_process(tmp_path, redis_prefix: str) -> AsyncIterator:
    started: list[Process] = []

    async def start(telegram_url: str, command: str = "bot", **extra: str) -> Process:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS", "DATABASE"))}
        env = {
            **keep,
            "API_TOKEN": API_TOKEN,
            "BOT_TOKEN": TEST_BOT_TOKEN,
            "TELEGRAM_API_URL": telegram_url,
            # Nothing listens there: the backend is down the whole time.
            "BACKEND_URL": f"http://127.0.0.1:{free_port()}",
            "REDIS_URL": "redis://127.0.0.1:6379/9",
            "REDIS_PREFIX": redis_prefix,
            "LOG_LEVEL": "INFO",
            **extra,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "comfygram",
            command,
            cwd=tmp_path,  # no .env there
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        started.append(Process(process))
        return started[-1]

    yield start
    for process in started:
        await process.stop()


async def _serves(bot: Process, telegram: TelegramDouble) -> None:
    """Polling has begun, and a message is answered (the backend is down: "try again")."""
    deadline = time.monotonic() + 30
    while not telegram.sent("getUpdates"):  # a long poll is waiting
        assert time.monotonic() < deadline, f"never polled:\n{bot.output}"
        await asyncio.sleep(0.1)
    user = telegram.user(8101)
    await user.send_command("balance")
    await telegram.wait_for(
        "sendMessage",
        chat_id=8101,
        timeout=15,
        predicate=lambda c: "try again in a minute" in c.params["text"],
    )
    await bot.wait_for("backend unavailable")
    (line,) = bot.lines("backend unavailable")
    assert "backend unreachable at http://127.0.0.1:" in line and "BACKEND_URL" in line


async def test_a_rejected_token_is_said_once_and_the_bot_waits_for_a_good_one(bot_process):
    async with TelegramDouble(token="999:another-bots-token") as telegram:
        bot = await bot_process(telegram.url)
        await bot.wait_for(TOKEN_LINE)
        await asyncio.sleep(4)  # several retries
        assert bot.process.returncode is None, bot.output
        assert len(bot.lines("BOT_TOKEN")) == 1, bot.output
        assert len(telegram.sent("getMe")) >= 2  # it did retry
        # Telegram accepts the token now (say, the operator fixed it at BotFather's side).
        telegram.token = TEST_BOT_TOKEN
        await _serves(bot, telegram)
        assert await bot.stop() == 0
    assert "Traceback" not in bot.output
    assert TEST_BOT_TOKEN not in bot.output and "TEST-double-token" not in bot.output


async def test_telegram_unreachable_is_said_once_and_the_bot_starts_when_it_is_back(bot_process):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bot = await bot_process(url)
    line = f"Telegram unreachable at {url}: check the network/proxy"
    await bot.wait_for(line)
    await asyncio.sleep(3)
    assert bot.process.returncode is None, bot.output
    assert len(bot.lines("Telegram unreachable")) == 1, bot.output
    async with TelegramDouble(port=port) as telegram:
        await _serves(bot, telegram)
        await bot.wait_for("is polling Telegram")
        assert await bot.stop() == 0
    assert "Traceback" not in bot.output
    assert "TEST-double-token" not in bot.output


async def test_run_keeps_the_backend_and_worker_up_while_telegram_rejects_the_token(
    bot_process, tmp_path
):
    port = free_port()
    async with (
        ComfyUIDouble(tmp_path / "comfyui") as comfyui,
        TelegramDouble(token="999:another-bots-token") as telegram,
    ):
        run = await bot_process(
            telegram.url,
            "run",
            COMFYUI_URL=comfyui.url,
            BACKEND_PORT=str(port),
            DATABASE_URL=f"sqlite:///{tmp_path}/comfygram.db",
            MEDIA_DIR=str(tmp_path / "media"),
        )
        await run.wait_for(TOKEN_LINE, timeout=60)
        await asyncio.sleep(3)
        assert run.process.returncode is None, run.output
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/healthz")
        assert response.status_code == 200
        assert await run.stop() == 0, run.output
    assert len(run.lines("BOT_TOKEN")) == 1, run.output
    assert "Traceback" not in run.output and "bot stopped" not in run.output
    assert "TEST-double-token" not in run.output


def test_a_malformed_token_is_one_line_and_an_exit(tmp_path):
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS", "DATABASE"))}
    env = {
        **keep,
        "API_TOKEN": API_TOKEN,
        "BOT_TOKEN": "not-a-token",
        "REDIS_URL": "redis://127.0.0.1:6379/9",
    }
    done = subprocess.run(
        [sys.executable, "-m", "comfygram", "bot"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    problems = [line for line in done.stderr.splitlines() if "settings:" not in line]
    assert problems == [
        "comfygram: BOT_TOKEN is malformed: a bot token is digits, a colon and about 35 "
        "letters (123456789:AAF…); copy it from @BotFather"
    ], done.stderr
    assert "not-a-token" not in done.stderr + done.stdout
