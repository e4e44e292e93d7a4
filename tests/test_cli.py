"""The `comfygram` command as an operator runs it: a real process, real ports, real logs."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests import images
from tests.doubles.telegram import TEST_BOT_TOKEN, TelegramDouble
from tests.journeys import bot_polling
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
            await bot_polling(telegram)  # a long poll waiting: SIGTERM comes mid-poll
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


# A mistake in the environment: one actionable line on stderr, no traceback, a non-zero exit.


def the_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed start printed on stderr (warnings aside)."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not line.startswith("comfygram: warning:")
    ]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("comfygram: "), lines[0]
    return lines[0]


class PostgresRejectingPasswords:
    """Speaks just enough of PostgreSQL's wire protocol to ask for a password and refuse it,
    as a server with `md5`/`scram` authentication does for a wrong one (28P01)."""

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # SSLRequest / GSSENCRequest are declined; then the StartupMessage
                length = int.from_bytes(await reader.readexactly(4), "big")
                body = await reader.readexactly(length - 4)
                if int.from_bytes(body[:4], "big") not in (80877103, 80877104):
                    break
                writer.write(b"N")
            writer.write(b"R" + (8).to_bytes(4, "big") + (3).to_bytes(4, "big"))  # cleartext
            await reader.readexactly(1)  # the PasswordMessage
            await reader.readexactly(int.from_bytes(await reader.readexactly(4), "big") - 4)
            fields = b'SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user "cg"\0\0'
            writer.write(b"E" + (len(fields) + 4).to_bytes(4, "big") + fields)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


CLOSED_PORT = free_port()
PG = "postgresql://postgres@127.0.0.1:5432"
MISCONFIGURED = [
    # (command, settings, what the line must say)
    ("migrate", {"DATABASE_URL": "mysql://u:p@localhost/db"}, ["DATABASE_URL", "postgresql://"]),
    ("backend", {"DATABASE_URL": "mysql://u:p@localhost/db"}, ["DATABASE_URL", "sqlite:///"]),
    ("migrate", {"DATABASE_URL": "not a url"}, ["DATABASE_URL", "postgresql://"]),
    ("migrate", {"DATABASE_URL": "postgresql://u@db:port/x"}, ["DATABASE_URL", "port"]),
    (
        "migrate",
        {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{CLOSED_PORT}/cg"},
        ["DATABASE_URL", f"127.0.0.1:{CLOSED_PORT}", "PostgreSQL is running"],
    ),
    (
        "backend",
        {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{CLOSED_PORT}/cg"},
        ["DATABASE_URL", f"127.0.0.1:{CLOSED_PORT}"],
    ),
    (
        "run",
        {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{CLOSED_PORT}/cg"},
        ["DATABASE_URL", f"127.0.0.1:{CLOSED_PORT}"],
    ),
    (
        "migrate",
        {"DATABASE_URL": "postgresql://postgres@no-such-host.invalid/cg"},
        ["DATABASE_URL", "no-such-host.invalid", "host name"],
    ),
    (
        "migrate",
        {"DATABASE_URL": "postgresql://no_such_role_cg@127.0.0.1:5432/postgres"},
        ["DATABASE_URL", '"no_such_role_cg"', "user name"],
    ),
    (
        "backend",
        {"DATABASE_URL": f"{PG}/no_such_database_cg"},
        ["DATABASE_URL", '"no_such_database_cg"', "createdb"],
    ),
    (
        "run",
        {"DATABASE_URL": f"{PG}/no_such_database_cg"},
        ["DATABASE_URL", '"no_such_database_cg"'],
    ),
    ("backend", {"REDIS_URL": "127.0.0.1:6379"}, ["REDIS_URL", "redis://"]),
    ("worker", {"REDIS_URL": "127.0.0.1:6379/0"}, ["REDIS_URL", "redis://"]),
    ("backend", {"REDIS_URL": "redis://127.0.0.1:6379/x"}, ["REDIS_URL", "database"]),
    (
        "backend",
        {"REDIS_URL": "redis://127.0.0.1:6379/99"},
        ["REDIS_URL", "database 99", "out of range"],
    ),
    ("run", {"REDIS_URL": "redis://127.0.0.1:6379/99"}, ["REDIS_URL", "database 99"]),
    ("backend", {"REDIS_DB": "99"}, ["REDIS_DB", "database 99", "out of range"]),
    (
        "migrate",
        {"ADMIN_TELEGRAM_IDS": "123,456"},
        ["ADMIN_TELEGRAM_IDS", "[123456789, 987654321]"],
    ),
    ("bot", {"ADMIN_TELEGRAM_IDS": '["me"]'}, ["ADMIN_TELEGRAM_IDS", "[123456789, 987654321]"]),
    (
        "backend",
        {"CREDIT_PACKAGES": "small=10"},
        ["CREDIT_PACKAGES", '[{"id": "small", "credits": 10, "stars": 50}'],
    ),
    ("worker", {"COMFYUI_URL": "gpu-box:8188"}, ["COMFYUI_URL", "http://"]),
    ("bot", {"BACKEND_URL": "backend"}, ["BACKEND_URL", "http://"]),
    ("migrate", {"LOG_LEVEL": "LOUD"}, ["LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR"]),
    ("backend", {"MEDIA_DIR": "/proc/comfygram-media"}, ["MEDIA_DIR", "/proc/comfygram-media"]),
    ("run", {"MEDIA_DIR": "/proc/comfygram-media"}, ["MEDIA_DIR", "/proc/comfygram-media"]),
    (
        "migrate",
        {"DATABASE_URL": "sqlite:////proc/comfygram/cg.db"},
        ["DATABASE_URL", "/proc/comfygram/cg.db"],
    ),
    ("backend", {"DATABASE_URL": "sqlite:///from-a-newer-version.db"}, ["DATABASE_URL", "ffff"]),
    ("run", {"DATABASE_URL": "sqlite:///from-a-newer-version.db"}, ["DATABASE_URL", "ffff"]),
    (
        "doctor",
        {"CREDIT_PACKAGES": '[{"id": "small"}]'},
        ["CREDIT_PACKAGES", '[{"id": "small", "credits": 10, "stars": 50}'],
    ),
]


@pytest.mark.parametrize(
    ("command", "settings", "says"),
    MISCONFIGURED,
    # The closed port is named, not numbered: ids must be the same in every xdist worker.
    ids=[
        f"{c}-{'-'.join(s)}={next(iter(s.values()))}".replace(str(CLOSED_PORT), "CLOSED_PORT")
        for c, s, _ in MISCONFIGURED
    ],
)
def test_a_misconfiguration_is_one_line_without_a_traceback(
    base_env, tmp_path, command, settings, says
):
    env = {
        **base_env,
        **SECRETS,
        "REDIS_URL": "redis://127.0.0.1:6379/9",
        "BACKEND_PORT": str(free_port()),
        "COMFYUI_URL": f"http://127.0.0.1:{CLOSED_PORT}",
        **settings,
    }
    if "REDIS_DB" in settings:
        del env["REDIS_URL"]
    if "newer-version" in settings.get("DATABASE_URL", ""):  # a schema this version lacks
        with sqlite3.connect(tmp_path / "from-a-newer-version.db") as newer:
            newer.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
            newer.execute("INSERT INTO alembic_version VALUES ('ffff')")
    line = the_one_error_line(run([command], env, tmp_path))
    for fragment in says:
        assert fragment in line
    assert SECRETS["API_TOKEN"] not in line and "u:p@" not in line


async def test_a_wrong_database_password_is_named(base_env, tmp_path):
    async with PostgresRejectingPasswords() as where:
        env = {**base_env, "DATABASE_URL": f"postgresql://cg:wrong-pw-31@{where}/cg"}
        result = await asyncio.to_thread(run, ["migrate"], env, tmp_path)
    line = the_one_error_line(result)
    assert "DATABASE_URL" in line and "password" in line and where in line
    assert "wrong-pw-31" not in line


def test_debug_shows_the_traceback(base_env, tmp_path):
    env = {**base_env, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{CLOSED_PORT}/cg"}
    for args, extra in ((["--debug", "migrate"], {}), (["migrate"], {"LOG_LEVEL": "DEBUG"})):
        result = run(args, {**env, **extra}, tmp_path)
        assert result.returncode != 0
        assert "Traceback" in result.stderr
        assert f"127.0.0.1:{CLOSED_PORT}" in result.stderr.strip().splitlines()[-1]


def test_backend_with_its_port_taken_is_one_line(base_env, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **base_env,
            **SECRETS,
            "BACKEND_PORT": str(port),
            "REDIS_URL": "redis://127.0.0.1:6379/9",
        }
        line = the_one_error_line(run(["backend"], env, tmp_path))
    assert f"127.0.0.1:{port} is already in use" in line and "BACKEND_PORT" in line


# Where the settings come from.


def test_env_file_chooses_the_settings_file(base_env, tmp_path):
    chosen = tmp_path / "conf" / "prod.env"
    chosen.parent.mkdir()
    chosen.write_text(f"DATABASE_URL=sqlite:///{tmp_path}/from-env-file.db\n")
    (tmp_path / ".env").write_text("DATABASE_URL=mysql://not/this/one\n")
    env = {k: v for k, v in base_env.items() if k != "DATABASE_URL"}
    result = run(["--env-file", str(chosen), "migrate"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-env-file.db").exists()


def test_a_missing_env_file_is_an_error(base_env, tmp_path):
    result = run(["--env-file", "nowhere.env", "migrate"], base_env, tmp_path)
    assert result.returncode == 2
    assert the_one_error_line(result) == "comfygram: --env-file nowhere.env: no such file"


@pytest.mark.parametrize("with_dotenv", [True, False])
def test_long_running_commands_say_where_the_settings_came_from(base_env, tmp_path, with_dotenv):
    if with_dotenv:
        (tmp_path / ".env").write_text("WEBHOOK_URL=https://bot.example.com/webhook\n")
    env = {**base_env, **SECRETS, "REDIS_URL": "redis://127.0.0.1:6379/9"}
    if not with_dotenv:
        env["WEBHOOK_URL"] = "https://bot.example.com/webhook"
    result = run(["bot"], env, tmp_path)  # stops at once: webhook mode
    assert "WEBHOOK_URL is set" in result.stderr
    said = [line for line in result.stdout.splitlines() if line.startswith("comfygram: settings")]
    if with_dotenv:
        assert said == [
            f"comfygram: settings: {tmp_path / '.env'} and the environment (which wins)"
        ]
    else:
        assert said == [f"comfygram: settings: the environment only (no .env in {tmp_path})"]


def test_short_commands_do_not_announce_their_settings(base_env, tmp_path):
    result = run(["migrate"], base_env, tmp_path)
    assert result.returncode == 0 and "settings:" not in result.stdout


# The command line itself.


def test_version(base_env, tmp_path):
    from comfygram import __version__

    result = run(["--version"], base_env, tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, f"comfygram {__version__}")


def test_comfygram_alone_prints_the_help(base_env, tmp_path):
    result = run([], base_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: comfygram")
    for command in ("run", "backend", "worker", "bot", "migrate", "doctor", "presets"):
        assert f"\n    {command} " in result.stdout


def test_every_command_describes_itself_in_one_line(base_env, tmp_path):
    from comfygram.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert len(commands) >= 7
    for name in commands:
        result = run([name, "--help"], base_env, tmp_path)
        assert result.returncode == 0, name
        # usage, a blank line, then the description: one sentence on one line
        lines = result.stdout.splitlines()
        description = lines[lines.index("") + 1]
        assert description[0].isupper() and description.endswith("."), (name, description)
        assert lines[lines.index("") + 2] == "", (name, "the description is one line")


def test_presets_list_shows_what_an_operator_knows(base_env, tmp_path):
    result = run(["presets", "list"], base_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == run(["presets"], base_env, tmp_path).stdout
    header, *rows = result.stdout.splitlines()
    assert [c.strip() for c in header.split("|")] == [
        "preset",
        "title",
        "price",
        "on",
        "photos",
        "asks for text",
        "options",
        "gives",
        "model files",
    ]
    by_slug = {row.split("|")[0].strip(): [c.strip() for c in row.split("|")] for row in rows}
    assert by_slug["invert"][1:8] == ["Negative", "1 credit", "yes", "1", "no", "none", "image"]
    assert by_slug["kontext"][3:6] == ["no", "1", "yes"]
    assert by_slug["oil"][8] == "checkpoints/v1-5-pruned-emaonly.safetensors"
    # No Python values or internal keys (workflow node ids, field names) leak into the table.
    for word in ("True", "False", "takes_prompt", "slug", "node", "None"):
        assert word not in result.stdout


# `comfygram healthcheck`: each role checked for itself.


def healthcheck(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["healthcheck", *args], env, cwd)


def wait_for_file(path: Path, process: subprocess.Popen[str], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not path.exists():
        assert process.poll() is None, "the process exited early"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_healthcheck_of_a_worker_is_its_heartbeat(base_env, tmp_path):
    """A standalone worker (no backend anywhere) is healthy while its loop runs; frozen, it is
    not; stopped, its file is gone."""
    heartbeat = tmp_path / "run" / "comfygram.heartbeat"
    env = {
        **base_env,
        **SECRETS,
        "HEARTBEAT_FILE": str(heartbeat),
        "REDIS_URL": "redis://127.0.0.1:6379/9",
        "REDIS_PREFIX": f"cghealth-{os.getpid()}-{time.monotonic_ns()}",
        "BACKEND_API_URL": f"http://127.0.0.1:{CLOSED_PORT}",
        "BACKEND_PORT": str(CLOSED_PORT),  # the backend's check would fail: it is not used
        "COMFYUI_URL": f"http://127.0.0.1:{CLOSED_PORT}",
    }
    process = comfygram("worker", env=env, cwd=tmp_path)
    try:
        wait_for_file(heartbeat, process)
        alive = healthcheck(env, tmp_path)
        assert alive.returncode == 0, alive.stdout + alive.stderr
        assert alive.stdout.startswith("comfygram: worker: alive")
        process.send_signal(signal.SIGSTOP)  # a hung process: the file stops changing
        time.sleep(2.5)
        hung = healthcheck(env, tmp_path, "--max-age", "2")
        assert hung.returncode == 1
        assert hung.stdout.startswith("comfygram: worker: no heartbeat for")
        process.send_signal(signal.SIGCONT)
    finally:
        process.send_signal(signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert not heartbeat.exists()


def test_healthcheck_of_a_backend_is_its_healthz(base_env, tmp_path):
    port = free_port()
    env = {
        **base_env,
        **SECRETS,
        "REDIS_URL": "redis://127.0.0.1:6379/9",
        "BACKEND_PORT": str(port),
        "HEARTBEAT_FILE": str(tmp_path / "none-here"),  # the backend keeps no heartbeat
    }
    down = healthcheck(env, tmp_path)
    assert down.returncode == 1
    assert f"127.0.0.1:{port}/healthz does not answer" in down.stdout
    process = comfygram("backend", env=env, cwd=tmp_path)
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", process)
        up = healthcheck(env, tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        assert (
            up.stdout.strip() == f"comfygram: backend: http://127.0.0.1:{port}/healthz answered 200"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def test_the_worker_s_startup_objects_are_left_out_of_garbage_collection():
    """What the long-running commands call before they serve: a full collection walked the
    ~200,000 objects the worker's imports make (150 ms here); frozen, it walks none of them."""
    code = (
        "import gc\n"
        "import comfygram.worker.main\n"
        "from comfygram import startup\n"
        "startup.keep_startup_objects_out_of_gc()\n"
        "print(gc.get_freeze_count(), len(gc.get_objects()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    frozen, tracked = map(int, done.stdout.split())
    assert frozen > 100_000 and tracked < 1_000, done.stdout
