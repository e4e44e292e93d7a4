"""The `comfygram` command as an operator runs it: a real process, real ports, real logs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests import images
from tests.doubles.telegram import TEST_BOT_TOKEN, TelegramDouble
from tests.redis_server import RedisServer, free_port

SECRETS = {
    "API_TOKEN": "cli-api-token-8c1d2e3f",
    "BOT_TOKEN": "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
    "WEBHOOK_SECRET": "cli_webhook_secret_4411",
}
REDIS_PASSWORD = "cli-redis-password-99"


def comfygram(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """Start the command with its output going to cwd/output.log (a pipe could fill and block)."""
    log = (cwd / "output.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "comfygram", *args],
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "VIRTUAL_ENV")}
    return {**keep, "DATABASE_URL": f"sqlite:///{tmp_path}/cg.db", "MEDIA_DIR": str(tmp_path / "m")}


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comfygram", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_migrate_creates_the_schema(base_env, tmp_path):
    result = run(["migrate"], base_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "database migrated to revision" in result.stdout
    again = run(["migrate"], base_env, tmp_path)
    assert again.returncode == 0 and again.stdout == result.stdout


def test_backend_without_api_token_says_so_in_one_line(base_env, tmp_path):
    result = run(["backend"], base_env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "comfygram: API_TOKEN is not set: add it to the environment or .env"
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [("REDIS_PORT", "six"), ("SIGNUP_BONUS", "-1"), ("WEBHOOK_SECRET", "has spaces!")],
)
def test_malformed_setting_is_named(base_env, tmp_path, name, value):
    result = run(["migrate"], {**base_env, name: value}, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"comfygram: {name} is malformed")
    assert value not in result.stderr or name != "WEBHOOK_SECRET"


def test_settings_come_from_a_dotenv_file(base_env, tmp_path):
    (tmp_path / ".env").write_text("# comment\nREDIS_PORT=notaport\n")
    result = run(["migrate"], base_env, tmp_path)
    assert "REDIS_PORT is malformed" in result.stderr


def wait_for(url: str, process: subprocess.Popen[str], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert process.poll() is None, "the process exited early"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


def test_backend_serves_and_never_logs_a_secret(base_env, tmp_path):
    redis = RedisServer(tmp_path, password=REDIS_PASSWORD)
    redis.start()
    port = free_port()
    env = {
        **base_env,
        **SECRETS,
        "REDIS_URL": redis.url,
        "BACKEND_PORT": str(port),
        "LOG_LEVEL": "DEBUG",
    }
    process = comfygram("backend", env=env, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/healthz", process)
        auth = {"Authorization": f"Bearer {SECRETS['API_TOKEN']}"}
        assert httpx.get(f"{base}/readyz").json()["redis"] == "ok"
        assert httpx.get(f"{base}/api/presets", headers=auth).status_code == 200
        assert (
            httpx.get(f"{base}/api/presets", headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
        user = httpx.post(f"{base}/api/users/register", json={"telegram_id": 42}, headers=auth)
        assert user.json()["balance"] == 3
        job = httpx.post(
            f"{base}/api/jobs/create",
            data={"telegram_id": "42", "preset": "bw"},
            files={"image": ("p.png", images.png(), "image/png")},
            headers=auth,
        )
        assert job.status_code == 201
        hook = httpx.post(
            f"{base}/webhook",
            json={"update_id": 1},
            headers={"X-Telegram-Bot-Api-Secret-Token": SECRETS["WEBHOOK_SECRET"]},
        )
        assert hook.status_code != 401
        # Errors and outages are where secrets usually leak: take Redis away mid-run.
        redis.stop()
        assert httpx.get(f"{base}/readyz").status_code == 503
        time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        redis.stop()
    output = (tmp_path / "output.log").read_text()
    # uvicorn shuts down cleanly, then re-raises SIGTERM so supervisors see how it ended.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert "backend ready" in output and "/api/jobs/create" in output
    for secret in [*SECRETS.values(), REDIS_PASSWORD]:
        assert secret not in output


def test_backend_listens_where_told(base_env, tmp_path):
    port = free_port()
    env = {**base_env, "API_TOKEN": "t" * 16, "REDIS_URL": "redis://127.0.0.1:1/0"}
    process = comfygram(
        "backend", "--host", "127.0.0.1", "--port", str(port), env=env, cwd=tmp_path
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", process)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["database"] == "ok"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


async def test_bot_polls_until_sigterm(base_env, tmp_path):
    async with TelegramDouble() as telegram:
        env = {
            **base_env,
            "API_TOKEN": SECRETS["API_TOKEN"],
            "BOT_TOKEN": TEST_BOT_TOKEN,
            "TELEGRAM_API_URL": telegram.url,
            "BACKEND_URL": f"http://127.0.0.1:{free_port()}",
            "REDIS_URL": "redis://127.0.0.1:6379/9",
            "REDIS_PREFIX": f"cgcli-{os.getpid()}-{time.monotonic_ns()}",
        }
        process = comfygram("bot", env=env, cwd=tmp_path)
        try:
            await telegram.wait_for("deleteWebhook", timeout=60)  # polling mode: no webhook
            await telegram.wait_for("setMyCommands", timeout=20)
            await telegram.wait_for("getUpdates", timeout=20)
        finally:
            process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(process.wait, 30)
    output = (tmp_path / "output.log").read_text()
    assert code == 0, output
    assert TEST_BOT_TOKEN not in output


def test_bot_refuses_to_poll_in_webhook_mode(base_env, tmp_path):
    env = {
        **base_env,
        **SECRETS,
        "WEBHOOK_URL": "https://bot.example.com/webhook",
    }
    result = run(["bot"], env, tmp_path)
    assert result.returncode == 2
    assert "WEBHOOK_URL is set: the backend receives the updates" in result.stderr
