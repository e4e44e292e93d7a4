"""`comfygram run` as a real process: everything on one machine, from /start to the result."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

from tests.doubles.comfyui import ComfyUIDouble
from tests.doubles.telegram import TEST_BOT_TOKEN, TelegramDouble
from tests.helpers import API_TOKEN
from tests.journeys import invert_a_photo
from tests.redis_server import free_port


def environment(tmp_path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS", "DATABASE"))}
    return {
        **keep,
        "API_TOKEN": API_TOKEN,
        "BOT_TOKEN": TEST_BOT_TOKEN,
        "DATABASE_URL": f"sqlite:///{tmp_path}/comfygram.db",
        "MEDIA_DIR": str(tmp_path / "media"),
        "REDIS_URL": "redis://127.0.0.1:6379/9",
        "REDIS_PREFIX": f"cgrun-{os.getpid()}-{time.monotonic_ns()}",
        "BACKEND_PORT": str(free_port()),
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def start(tmp_path, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "comfygram", "run"],
        cwd=tmp_path,  # no .env there
        env=environment(tmp_path, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_run_without_redis_says_what_to_do(tmp_path):
    port = free_port()
    process = start(tmp_path, REDIS_URL=f"redis://127.0.0.1:{port}/0")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert f"Redis not reachable at 127.0.0.1:{port}/0: start it or correct REDIS_URL" in output
    assert "Traceback" not in output


def test_run_without_bot_token_points_to_botfather(tmp_path):
    process = start(tmp_path, BOT_TOKEN="")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "BOT_TOKEN is not set: get one from @BotFather" in output


def test_run_with_a_malformed_bot_token_is_one_line_before_anything_starts(tmp_path):
    process = start(tmp_path, BOT_TOKEN="not-a-token", LOG_LEVEL="INFO")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output
    assert "Traceback" not in output
    assert "comfygram: BOT_TOKEN is malformed" in output
    # The backend never started, so nothing had to be torn down.
    assert "Uvicorn running" not in output
    assert "not-a-token" not in output


def test_run_with_its_port_taken_exits_and_says_so(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start(tmp_path, BACKEND_PORT=str(port))
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("comfygram: ")]
    errors = [
        line
        for line in errors
        if not line.startswith(("comfygram: warning", "comfygram: settings"))
    ]
    assert errors == [
        f"comfygram: 127.0.0.1:{port} is already in use: stop what listens there or choose "
        "another BACKEND_PORT"
    ], output
    assert "ERROR" not in output  # nothing started, so nothing logged a failure


async def test_run_serves_a_photo_from_start_to_result(tmp_path):
    async with ComfyUIDouble(tmp_path / "comfyui") as comfyui, TelegramDouble() as telegram:
        process = start(
            tmp_path,
            COMFYUI_URL=comfyui.url,
            TELEGRAM_API_URL=telegram.url,
            TELEGRAM_EDIT_INTERVAL="0.2",
        )
        try:
            await invert_a_photo(telegram, comfyui, chat_id=8001)
        finally:
            process.send_signal(signal.SIGINT)
            output, _ = await asyncio.to_thread(process.communicate, timeout=60)
        assert process.returncode == 0, output
        assert "comfygram is running: backend http://127.0.0.1:" in output
        assert "comfygram stopped." in output
