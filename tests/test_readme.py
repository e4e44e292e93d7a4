"""The README's commands, run as a newcomer runs them: on a fresh copy of the repository, in order.

Telegram and ComfyUI are the loopback doubles; everything else (the install into a new .venv,
.env written on first start, doctor, `comfygram run`) is the real thing.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.doubles.comfyui import ComfyUIDouble
from tests.doubles.telegram import TEST_BOT_TOKEN, TelegramDouble
from tests.journeys import invert_a_photo
from tests.redis_server import free_port, machine_redis_keys

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
WALKTHROUGH_TITLE = "## From nothing to a working bot"

# What the walkthrough tells a newcomer to do, in order; test_walkthrough does each of them.
WALKTHROUGH = [
    ("sh", "./scripts/start"),
    ("ini", "BOT_TOKEN=123456789:AA...\nCOMFYUI_URL=http://127.0.0.1:8188"),
    ("sh", ".venv/bin/comfygram doctor"),
    ("sh", "./scripts/start"),
]


def code_blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, comments and blank lines dropped."""
    blocks = []
    for language, body in re.findall(r"^ *```(\w+)\n(.*?)^ *```", markdown, re.M | re.S):
        lines = [line.split("#", 1)[0].strip() for line in body.splitlines()]
        blocks.append((language, "\n".join(line for line in lines if line)))
    return blocks


def walkthrough_section() -> str:
    start = README.index(WALKTHROUGH_TITLE)
    end = README.index("\n## ", start + len(WALKTHROUGH_TITLE))
    return README[start:end]


def test_the_walkthrough_is_what_this_file_runs():
    assert code_blocks(walkthrough_section()) == WALKTHROUGH


# Every command the README or a page in docs/ names (in a code block or inline), and what runs it.
RUN_BY = {
    "./scripts/start": "test_readme.py::test_walkthrough_on_a_fresh_copy",
    ".venv/bin/comfygram doctor": "test_readme.py::test_walkthrough_on_a_fresh_copy",
    "./scripts/test": "CI: .ci/run",
    "./scripts/test -k ledger -x": "CI: .ci/run (the same script; arguments go to pytest)",
    ".venv/bin/python bench/job_create.py": (
        "test_bench.py::test_job_create_bench_compares_the_databases"
    ),
    ".venv/bin/python bench/fast_path.py": (
        "test_bench.py::test_fast_path_bench_reports_every_stage_and_the_idle_fractions"
    ),
    ".venv/bin/python bench/backend_rates.py": (
        "test_bench.py::test_backend_rates_bench_measures_one_and_two_processes"
    ),
    ".venv/bin/python bench/worker_memory.py": (
        "test_bench.py::test_worker_memory_bench_samples_the_worker_and_reports_its_growth"
    ),
    ".venv/bin/python bench/goals.py": (
        "test_bench.py::test_the_goals_run_measures_every_goal_and_prints_a_verdict_for_each"
    ),
    ".venv/bin/python bench/delivery.py": (
        "test_bench.py::test_delivery_bench_reports_an_album_and_a_video"
    ),
    "comfygram backend [--host H] [--port P] [--workers N]": (
        "test_cli.py::test_backend_listens_where_told"
    ),
    "comfygram backend": "test_cli.py::test_backend_serves_and_never_logs_a_secret",
    "comfygram migrate": "test_cli.py::test_migrate_creates_the_schema",
    "comfygram run": "test_run.py::test_run_serves_a_photo_from_start_to_result",
    "comfygram worker": (
        "test_worker_crash.py::test_sigterm_finishes_the_current_job_then_releases_the_gpu"
    ),
    "comfygram bot": "test_cli.py::test_bot_polls_until_sigterm",
    "comfygram doctor": "test_doctor.py::test_cli_doctor_healthy",
    "comfygram healthcheck": "test_cli.py::test_healthcheck_of_a_backend_is_its_healthz",
    "comfygram healthcheck [--max-age S]": (
        "test_cli.py::test_healthcheck_of_a_worker_is_its_heartbeat, "
        "test_cli.py::test_healthcheck_of_a_backend_is_its_healthz"
    ),
    "comfygram payments reconcile": (
        "test_star_reconcile.py::test_comfygram_payments_reconcile_prints_what_it_found"
    ),
    "comfygram audit": (
        "test_audit.py::test_audit_is_clean_after_a_real_journey, "
        "test_audit.py::test_audit_names_each_discrepancy_of_a_database_broken_on_purpose"
    ),
    "comfygram presets list\\|check": (
        "test_doctor.py::test_cli_presets_list, "
        "test_doctor.py::test_cli_presets_check_names_what_this_comfyui_lacks"
    ),
}
COMMAND = re.compile(r"^(\./scripts/|\.venv/bin/|comfygram [a-z])")


def named_commands(markdown: str) -> set[str]:
    fenced = {
        line
        for language, body in code_blocks(markdown)
        if language == "sh"
        for line in body.splitlines()
    }
    inline = set(re.findall(r"`([^`\n]+)`", markdown))
    return {command for command in fenced | inline if COMMAND.match(command)}


def documented_commands() -> set[str]:
    """The commands named by the README and by every page in docs/."""
    pages = [README, *(page.read_text() for page in sorted((ROOT / "docs").glob("*.md")))]
    return set().union(*(named_commands(page) for page in pages))


def test_every_command_in_the_docs_is_run_by_a_test_or_ci():
    assert documented_commands() == set(RUN_BY)
    assert "exec scripts/test" in (ROOT / ".ci" / "run").read_text()
    for runners in RUN_BY.values():
        if runners.startswith("CI"):
            continue
        for runner in runners.split(", "):
            module, test = runner.split("::")
            assert f"def {test}(" in (ROOT / "tests" / module).read_text(), runner


def fresh_copy(destination: Path) -> Path:
    """The repository's tracked files as they are now, without .venv, data or .env."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (item.decode() for item in listed)):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def newcomer_environment(telegram: TelegramDouble) -> dict[str, str]:
    """The shell of someone who has set nothing, no Redis either (`comfygram run` starts its
    own); the key prefix and the port are kept apart from other test runs, and Telegram is the
    double."""
    ours = ("API_TOKEN", "BOT_TOKEN", "COMFYUI", "DATABASE", "REDIS", "BACKEND", "WEBHOOK")
    keep = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    keep.pop("VIRTUAL_ENV", None)
    return {
        **keep,
        "REDIS_PREFIX": f"cgreadme-{os.getpid()}-{time.monotonic_ns()}",
        "BACKEND_PORT": str(free_port()),
        "TELEGRAM_API_URL": telegram.url,
        "TELEGRAM_EDIT_INTERVAL": "0.2",
        "LOG_LEVEL": "WARNING",
    }


def shell(command: str, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    done = subprocess.run(
        shlex.split(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return done.returncode, done.stdout + done.stderr


def launch(command: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        shlex.split(command),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def configure(env_file: Path, block: str, values: dict[str, str]) -> None:
    """Do what step 4 says: set each key of the README's block in .env (to our values)."""
    text = env_file.read_text()
    for line in block.splitlines():
        key = line.split("=", 1)[0]
        text, replaced = re.subn(rf"^#? *{key}=.*$", f"{key}={values[key]}", text, flags=re.M)
        assert replaced == 1, f"{key} is not in .env.example"
    env_file.write_text(text)


@pytest.mark.timeout(400)
async def test_walkthrough_on_a_fresh_copy(tmp_path):
    repo = fresh_copy(tmp_path / "comfygram")
    async with ComfyUIDouble(tmp_path / "comfyui") as comfyui, TelegramDouble() as telegram:
        env = newcomer_environment(telegram)
        start, configure_block, doctor, run = (body for _, body in WALKTHROUGH)

        # First start: installs, writes .env, and says what is missing.
        code, output = await asyncio.to_thread(shell, start, repo, env, 300)
        assert code == 2, output
        assert "wrote .env with a new API_TOKEN" in output
        assert "BOT_TOKEN is not set: get one from @BotFather" in output
        assert re.search(r"^API_TOKEN=\S{32,}$", (repo / ".env").read_text(), re.M)

        configure(
            repo / ".env",
            configure_block,
            {"BOT_TOKEN": TEST_BOT_TOKEN, "COMFYUI_URL": comfyui.url},
        )

        code, output = await asyncio.to_thread(shell, doctor, repo, env, 120)
        assert code == 0, output
        assert "FAIL" not in output
        assert re.search(r"^telegram +\| OK", output, re.M), output
        assert re.search(r"^redis +\| OK +\| embedded: comfygram run starts Redis", output, re.M)
        assert TEST_BOT_TOKEN not in output

        process = launch(run, repo, env)
        try:
            await invert_a_photo(telegram, comfyui, chat_id=8101)
        finally:
            process.send_signal(signal.SIGINT)  # Ctrl-C
            output, _ = await asyncio.to_thread(process.communicate, timeout=60)
            print(output)  # shown by pytest when the journey fails
        assert process.returncode == 0, output
        assert "comfygram is running" in output
        assert "comfygram stopped." in output
        # The queue was the embedded Redis's (its file in data/redis), not the machine's.
        assert "comfygram: Redis: embedded" in output
        assert any((repo / "data" / "redis").rglob("*.aof"))
        assert await machine_redis_keys(env["REDIS_PREFIX"]) in (None, [])
