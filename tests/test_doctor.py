"""comfygram doctor: each check against real Redis/SQLite and the ComfyUI/Telegram doubles."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import httpx
import pytest
from redis.asyncio import Redis

from comfygram import doctor
from comfygram.backend import db
from comfygram.backend.schemas import WorkerReport
from comfygram.backend.workers import WorkerRegistry
from comfygram.settings import Settings
from tests.doubles.comfyui import ComfyUIDouble
from tests.doubles.telegram import TEST_BOT_TOKEN, TelegramDouble
from tests.redis_server import RedisServer

REDIS_URL = "redis://127.0.0.1:6379/9"


async def _migrated(tmp_path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path}/doctor.db"
    engine = db.create_engine(url)
    try:
        await db.migrate(engine)
    finally:
        await engine.dispose()
    return url


def _settings(**kw) -> Settings:
    values = dict(
        redis_url=REDIS_URL,
        redis_prefix=f"cgdoc-{uuid.uuid4().hex[:8]}",
        api_token="doctor-api-token-1234",
    )
    values.update(kw)
    return Settings(_env_file=None, **values)


def _by_name(checks):
    return {c.name: c for c in checks}


async def _heartbeat(settings: Settings, name: str, comfyui_url: str, healthy: bool = True):
    """What a worker's heartbeat leaves in Redis (PUT /api/workers/{name} in the backend)."""
    redis = Redis.from_url(settings.redis_dsn)
    try:
        report = WorkerReport(
            comfyui_url=comfyui_url,
            healthy=healthy,
            runnable=["invert", "bw"] if healthy else [],
            problems={"oil": "missing model file checkpoints/v1-5-pruned-emaonly.safetensors"},
            ttl_seconds=60,
        )
        await WorkerRegistry(redis, settings.redis_prefix).record(name, report)
    finally:
        await redis.aclose()


async def test_healthy_setup_is_all_ok(tmp_path):
    async with (
        ComfyUIDouble(tmp_path / "comfy", gc_extension=True) as comfy,
        ComfyUIDouble(tmp_path / "comfy2", gc_extension=True) as second_gpu,
        TelegramDouble() as tg,
    ):
        settings = _settings(
            database_url=await _migrated(tmp_path),
            comfyui_url=comfy.url,
            telegram_api_url=tg.url,
            bot_token=TEST_BOT_TOKEN,
            admin_username="operator",
            admin_password="correct-horse-battery",
        )
        await _heartbeat(settings, "gpu-1", comfy.url)
        await _heartbeat(settings, "gpu-2", second_gpu.url)
        checks = await doctor.run_doctor(settings)
    table = doctor.render(checks)
    # The double lacks the nodes of the GPU presets: those WARN, everything else is OK.
    assert all(c.status == doctor.OK for c in checks if not c.name.startswith("preset")), table
    assert _by_name(checks)["preset invert"].status == doctor.OK
    # Each ComfyUI a worker drives is probed, not only COMFYUI_URL.
    assert "0.3.64" in _by_name(checks)[f"comfyui {second_gpu.url}"].detail
    gpu_2 = _by_name(checks)["worker gpu-2"].detail
    assert second_gpu.url in gpu_2 and "runs invert, bw" in gpu_2 and "cannot run oil" in gpu_2
    assert doctor.exit_code(checks) == 0
    assert table.splitlines()[0].startswith("check")
    assert TEST_BOT_TOKEN not in table


async def test_missing_model_file_names_preset_and_file(tmp_path):
    async with ComfyUIDouble(tmp_path / "comfy") as comfy:
        comfy.models = {"checkpoints": []}
        checks = await doctor.check_comfyui(_settings(comfyui_url=comfy.url))
    oil = _by_name(checks)["preset oil"]
    assert oil.status in (doctor.WARN, doctor.FAIL)
    assert ".safetensors" in oil.detail or "checkpoint" in oil.detail.lower(), oil.detail


async def test_wrong_redis_password(tmp_path):
    server = RedisServer(tmp_path, password="right")
    server.start()
    try:
        wrong = server.url.replace("right", "wrong") if "right" in server.url else server.url
        if "wrong" not in wrong:
            port = server.url.rsplit(":", 1)[1].split("/")[0]
            wrong = f"redis://:wrong@127.0.0.1:{port}/0"
        checks = await doctor.check_redis(_settings(redis_url=wrong))
    finally:
        server.stop()
    assert checks[0].status == doctor.FAIL
    assert "password" in checks[0].detail
    assert "wrong" not in checks[0].detail


async def test_bad_bot_token(tmp_path):
    async with TelegramDouble(token="999:other-token") as tg:
        checks = await doctor.check_telegram(
            _settings(telegram_api_url=tg.url, bot_token=TEST_BOT_TOKEN)
        )
    assert checks[0].status == doctor.FAIL
    assert "BOT_TOKEN rejected" in checks[0].detail


async def test_missing_bot_token():
    checks = await doctor.check_telegram(_settings())
    assert checks[0].status == doctor.FAIL and "@BotFather" in checks[0].detail


async def test_database_not_migrated(tmp_path):
    checks = await doctor.check_database(
        _settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/empty.db", auto_migrate=False)
    )
    assert checks[0].status == doctor.FAIL
    assert "comfygram migrate" in checks[0].detail


async def test_database_not_migrated_yet_is_a_warning_when_the_backend_migrates(tmp_path):
    checks = await doctor.check_database(
        _settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/new.db", auto_migrate=True)
    )
    assert checks[0].status == doctor.WARN
    assert "migrates it when it starts" in checks[0].detail


@pytest.mark.timeout(30)
async def test_cli_doctor_healthy(tmp_path):
    async with ComfyUIDouble(tmp_path / "comfy") as comfy, TelegramDouble() as tg:
        env = {
            **os.environ,
            "DATABASE_URL": await _migrated(tmp_path),
            "REDIS_URL": REDIS_URL,
            "COMFYUI_URL": comfy.url,
            "TELEGRAM_API_URL": tg.url,
            "BOT_TOKEN": TEST_BOT_TOKEN,
            "API_TOKEN": "doctor-api-token-1234",
            "WEBHOOK_URL": "",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "comfygram",
            "doctor",
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await proc.communicate()
    assert proc.returncode == 0, out.decode() + err.decode()
    assert out.decode().splitlines()[0].startswith("check")


@pytest.mark.parametrize(
    ("values", "status", "detail"),
    [
        ({}, doctor.SKIP, "off (set ADMIN_USERNAME"),
        ({"admin_username": "operator"}, doctor.WARN, "set both"),
        (
            {"admin_username": "operator", "admin_password": "correct-horse-battery"},
            doctor.OK,
            "on at /admin for operator",
        ),
        ({"admin_username": "operator", "admin_password": "short"}, doctor.FAIL, "too short"),
        (
            {
                "admin_username": "o",
                "admin_password": "the-api-token-1",
                "api_token": "the-api-token-1",
            },
            doctor.FAIL,
            "must not be the API_TOKEN",
        ),
    ],
)
def test_admin_panel_settings(values, status, detail):
    [check] = doctor.check_admin(_settings(**values))
    assert check.status == status
    assert detail in check.detail
    assert "correct-horse" not in check.detail


async def test_workers_missing_or_with_their_comfyui_down(tmp_path):
    settings = _settings()
    checks, others = await doctor.check_workers(settings)
    assert [(c.name, c.status) for c in checks] == [("workers", doctor.WARN)]
    assert "comfygram worker" in checks[0].detail and others == []

    await _heartbeat(settings, "gpu-9", "http://10.0.0.9:8188", healthy=False)
    [check], others = await doctor.check_workers(settings)
    assert (check.name, check.status) == ("worker gpu-9", doctor.FAIL)
    assert "ComfyUI http://10.0.0.9:8188 is down" in check.detail
    assert others == ["http://10.0.0.9:8188"]


async def test_this_machines_comfyui_with_credentials_is_not_probed_twice(tmp_path):
    # Heartbeats keep no password, so the worker of COMFYUI_URL reports it without one.
    settings = _settings(comfyui_url="http://op:secret@10.0.0.7:8188")
    await _heartbeat(settings, "gpu-7", "http://op:secret@10.0.0.7:8188", healthy=True)
    [check], others = await doctor.check_workers(settings)
    assert "secret" not in check.detail
    assert others == []


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comfygram", *args],
        env={**os.environ, "API_TOKEN": "t", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_presets_list():
    listed = _cli("presets", "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split(" | ")[0].strip(): line for line in listed.stdout.splitlines()[1:]}
    assert {"bw", "invert", "oil", "edit"} <= set(rows)
    assert "checkpoints/" in rows["oil"] and rows["invert"].endswith("| none")


async def test_cli_presets_check_names_what_this_comfyui_lacks(tmp_path):
    async with ComfyUIDouble(tmp_path / "comfy") as comfy:
        checked = await asyncio.to_thread(_cli, "presets", "check", COMFYUI_URL=comfy.url)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    rows = {line.split(" | ")[0].strip(): line for line in checked.stdout.splitlines()}
    assert "| OK" in rows["preset invert"]
    assert "safetensors" in rows["preset oil"]  # the missing model file, by name
    assert "preset kontext" not in rows  # disabled presets are not checked


def _cli_in(cwd, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    ours = ("API_TOKEN", "BOT_TOKEN", "DATABASE", "REDIS", "MEDIA", "COMFYUI", "WEBHOOK")
    keep = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    return subprocess.run(
        [sys.executable, "-m", "comfygram", "doctor", *args],
        env={**keep, "REDIS_URL": REDIS_URL, "COMFYUI_URL": "http://127.0.0.1:9", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.parametrize("api_token", ["", None])
def test_doctor_fails_without_an_api_token(tmp_path, api_token):
    env = {} if api_token is None else {"API_TOKEN": api_token}
    result = _cli_in(tmp_path, **env)
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {line.split(" | ")[0].strip(): line for line in result.stdout.splitlines()}
    assert "| FAIL" in rows["settings"] and "API_TOKEN is not set" in rows["settings"]


def test_doctor_creates_nothing_where_it_runs(tmp_path):
    """With the default SQLite file and media folder under ./data, doctor only looks."""
    result = _cli_in(tmp_path, API_TOKEN="doctor-api-token-1234")
    assert "Traceback" not in result.stdout + result.stderr
    rows = {line.split(" | ")[0].strip(): line for line in result.stdout.splitlines()}
    assert "| WARN" in rows["database"] and "no database yet" in rows["database"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("database", "says"),
    [
        ("postgresql://postgres@127.0.0.1:9/cg", "nothing answers at 127.0.0.1:9"),
        ("postgresql://postgres@127.0.0.1:5432/no_such_database_cg", "createdb"),
    ],
)
async def test_database_problems_are_explained(database, says):
    [check] = await doctor.check_database(_settings(database_url=database))
    assert check.status == doctor.FAIL
    assert check.detail.startswith("DATABASE_URL: ") and says in check.detail


@pytest.mark.parametrize(
    ("argv", "method"),
    [
        (["main.py", "--cpu"], "none"),
        (["main.py", "--preview-method", "latent2rgb", "--cpu"], "latent2rgb"),
        (["main.py", "--preview-method=auto"], "auto"),
        (["main.py", "--preview-method"], "none"),  # a dangling flag: ComfyUI would not start
    ],
)
def test_the_preview_method_is_read_from_comfyuis_command_line(argv, method):
    from comfygram.comfyui import SystemStats

    assert SystemStats(version="0.3.64", argv=tuple(argv)).preview_method == method


async def test_doctor_says_whether_comfyui_sends_previews(tmp_path):
    # The double, as ComfyUI by default, runs without --preview-method: no frames are sent;
    # the presets that want previews (animate, scene) need models the double lacks.
    async with ComfyUIDouble(tmp_path / "comfy") as comfy:
        checks = _by_name(await doctor.check_comfyui(_settings(comfyui_url=comfy.url)))
    previews = checks["comfyui previews"]
    assert (previews.status, previews.detail) == (
        doctor.OK,
        "not sent (no preset it can run asks for them)",
    )
    async with ComfyUIDouble(tmp_path / "previewing", previews=True) as comfy:
        checks = _by_name(await doctor.check_comfyui(_settings(comfyui_url=comfy.url)))
    previews = checks["comfyui previews"]
    assert (previews.status, previews.detail) == (doctor.OK, "sent (--preview-method auto)")


async def test_doctor_says_whether_comfyuis_gc_is_frozen(tmp_path):
    """comfygram's ComfyUI extension: not loaded (stock ComfyUI) is a WARN naming it; loaded,
    before and after the first prompt, is OK with what it did."""
    async with ComfyUIDouble(tmp_path / "stock") as comfy:
        line = _by_name(await doctor.check_comfyui(_settings(comfyui_url=comfy.url)))["comfyui GC"]
    assert line.status == doctor.WARN
    assert "comfyui/custom_nodes/comfygram_gc_freeze" in line.detail
    async with ComfyUIDouble(tmp_path / "extended", gc_extension=True) as comfy:
        settings = _settings(comfyui_url=comfy.url)
        fresh = _by_name(await doctor.check_comfyui(settings, presets=False))["comfyui GC"]
        async with httpx.AsyncClient() as http:
            await http.post(f"{comfy.url}/prompt", json={"prompt": {}})
        used = _by_name(await doctor.check_comfyui(settings, presets=False))["comfyui GC"]
    assert (fresh.status, fresh.detail) == (
        doctor.OK,
        "start-up objects frozen at the first prompt",
    )
    assert (used.status, used.detail) == (
        doctor.OK,
        "start-up objects frozen (586,852); full collections since: at most 1.1 ms",
    )


def test_the_previews_line_by_method_and_presets():
    from comfygram.presets import load_presets

    presets = load_presets()
    wanting = [p for p in presets if p.contract.previews]
    assert wanting, "a built-in preset asks for previews"
    sent = doctor._previews_check("comfyui", "latent2rgb", presets)
    assert (sent.status, sent.detail) == (doctor.OK, "sent (--preview-method latent2rgb)")
    unwanted = doctor._previews_check("comfyui", "none", [p for p in presets if p not in wanting])
    assert unwanted.status == doctor.OK and "not sent" in unwanted.detail
    missing = doctor._previews_check("comfyui", "none", presets)
    assert missing.status == doctor.WARN
    assert all(p.slug in missing.detail for p in wanting)
    assert "--preview-method auto" in missing.detail
