"""Static checks of the deployment files: Dockerfile, docker-compose.yml, .env.example.

No image is built. `docker compose config` runs only where docker compose is installed;
the YAML checks need PyYAML and are skipped without it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
APP_SERVICES = {"backend": "backend", "worker": "worker", "bot": "bot"}

DUMMY_ENV = {
    "API_TOKEN": "dummy-api-token",
    "BOT_TOKEN": "123456:dummy",
    "COMFYUI_URL": "http://comfyui:8188",
    "REDIS_PASSWORD": "dummy-redis",
    "POSTGRES_PASSWORD": "dummy-postgres",
}


def _compose() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed: YAML checks skipped")
    return yaml.safe_load(COMPOSE.read_text())


def _env_example_names() -> set[str]:
    # Settings in .env.example, set or shown commented out (`# WORKER_NAME=gpu-1`).
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))


def _command(service: dict) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else list(command)


def _cli_commands() -> set[str]:
    out = subprocess.run(
        [sys.executable, "-m", "comfygram", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    match = re.search(r"\{([a-z,-]+)\}", out)
    if match:
        return set(match.group(1).split(","))
    return set(re.findall(r"^\s{4}([a-z][a-z-]*)\s", out, re.MULTILINE))


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def test_docker_compose_config_is_valid(tmp_path: Path) -> None:
    if not _docker_compose_available():
        pytest.skip("docker compose is not installed: `docker compose config` not run")
    env = {k: v for k, v in os.environ.items() if k not in DUMMY_ENV} | DUMMY_ENV
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
        cwd=tmp_path,  # no .env here: the dummy environment must be enough
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_compose_services_and_commands() -> None:
    services = _compose()["services"]
    assert {"postgres", "redis", "backend", "worker", "bot"} <= set(services)
    assert str(services["postgres"]["image"]).startswith("postgres:16")
    assert str(services["redis"]["image"]).startswith("redis:7")
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name], name
    for name, command in APP_SERVICES.items():
        service = services[name]
        assert service.get("build") in (".", {"context": "."}), name
        assert _command(service)[0] == command, name
    assert _command(services["backend"])[1:] == ["--host", "0.0.0.0"]
    assert any("8000" in str(port) for port in services["backend"]["ports"])
    env = {name: services[name]["environment"] for name in APP_SERVICES}
    assert env["worker"]["BACKEND_API_URL"] == "http://backend:8000"
    assert env["bot"]["BACKEND_URL"] == "http://backend:8000"
    assert "${COMFYUI_URL" in env["worker"]["COMFYUI_URL"]
    for name in APP_SERVICES:
        assert env[name]["REDIS_HOST"] == "redis"
        assert env[name]["DATABASE_URL"].startswith("postgresql://comfygram:")
        assert env[name]["DATABASE_URL"].endswith("@postgres:5432/comfygram")
    depends = services["backend"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"


def test_compose_variables_are_known_settings() -> None:
    known = _env_example_names()
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text()))
    assert used, "expected ${VAR} references in docker-compose.yml"
    unknown = {v for v in used if v not in known and not v.startswith("POSTGRES_")}
    assert not unknown, f"not in .env.example: {sorted(unknown)}"
    # And every environment key set on an app service is a setting too.
    services = _compose()["services"]
    for name in APP_SERVICES:
        keys = set(services[name]["environment"])
        assert keys <= known, (name, sorted(keys - known))


def test_dockerfile_runs_comfygram() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["comfygram"\]', text, re.MULTILINE)
    assert re.search(r'^CMD \["backend", "--host", "0\.0\.0\.0"\]', text, re.MULTILINE)
    assert re.search(r"^USER (?!root)\S+", text, re.MULTILINE)
    assert "EXPOSE 8000" in text
    assert "MEDIA_DIR=/data/media" in text
    assert "sqlite:////data/comfygram.db" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored and "data" in ignored


def test_commands_used_exist_in_cli() -> None:
    commands = _cli_commands()
    assert {"backend", "worker", "bot", "migrate"} <= commands
    cmd = re.search(r"^CMD \[\"([a-z-]+)\"", DOCKERFILE.read_text(), re.MULTILINE)
    assert cmd and cmd.group(1) in commands
    services = _compose()["services"]
    for name in APP_SERVICES:
        assert _command(services[name])[0] in commands, name


# The scripts: running needs no database server; only the tests change one's authentication.

SCRIPTS = ROOT / "scripts"


def _code(script: str) -> str:
    """The script without its comments."""
    lines = (SCRIPTS / script).read_text().splitlines()
    return "\n".join(line.split(" #", 1)[0] for line in lines if not line.lstrip().startswith("#"))


def test_running_installs_no_database_server() -> None:
    for script in ("start", "install"):
        code = _code(script)
        assert "postgresql" not in code and "apt-get" not in code, script
        assert "services" not in code, script  # nor calls a script that would
    assert not (SCRIPTS / "services").exists(), "the tests' servers live in scripts/test-services"


def test_only_the_test_script_sets_up_test_servers_and_it_says_so() -> None:
    assert "scripts/test-services" in _code("test")
    code = _code("test-services")
    assert "postgresql" in code and "redis-server" in code
    header = (SCRIPTS / "test-services").read_text().split("set -euo pipefail")[0]
    assert "test" in header.lower() and "trust" in header  # what it is for, and what it changes
    # Before it touches pg_hba.conf, it says so on stderr, with the rule and the file.
    before_edit = code.split("sed -i")[0]
    assert re.search(r'echo "[^"]*trust[^"]*\$hba[^"]*" >&2', before_edit), before_edit
    assert os.access(SCRIPTS / "test-services", os.X_OK)


def test_test_services_leaves_running_servers_alone(tmp_path: Path) -> None:
    """With PostgreSQL and Redis answering (as here), it changes nothing and says nothing."""
    if not (shutil.which("pg_isready") and shutil.which("redis-cli")):
        pytest.skip("pg_isready or redis-cli not installed")
    done = subprocess.run(
        [str(SCRIPTS / "test-services")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_install_runs_pip_only_when_the_dependencies_change(tmp_path: Path) -> None:
    """scripts/install (run by every scripts/start) against a stand-in .venv/bin/python that
    records each call: pip runs on the first install, when pyproject.toml changes, and when the
    dev tools are first asked for; never on a plain restart."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy2(SCRIPTS / "install", repo / "scripts" / "install")
    shutil.copy2(ROOT / "pyproject.toml", repo / "pyproject.toml")
    calls = tmp_path / "calls"
    python = repo / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    python.chmod(0o755)

    def install(*args: str) -> list[str]:
        calls.write_text("")
        done = subprocess.run(
            ["bash", str(repo / "scripts" / "install"), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return [line for line in calls.read_text().splitlines() if " install " in f" {line} "]

    assert install() == ["-m pip install --quiet --upgrade pip", "-m pip install --quiet -e ."]
    assert install() == []  # a restart: nothing to do
    assert install("dev")[-1] == "-m pip install --quiet -e .[dev]"
    assert install("dev") == [] and install() == []  # a dev install serves both
    with (repo / "pyproject.toml").open("a") as pyproject:
        pyproject.write("# a changed dependency list\n")
    assert install()[-1] == "-m pip install --quiet -e ."
    assert install() == []


def test_each_role_gets_a_health_check_of_its_own() -> None:
    """The image's check adapts to the role (`comfygram healthcheck`: a worker or bot by its
    heartbeat file, the backend by /healthz), so a standalone `docker run … worker` is not
    judged by the backend's port; compose leaves it on for every app service."""
    text = DOCKERFILE.read_text()
    check = re.search(r"^HEALTHCHECK .*\\\n\s+CMD (.+)$", text, re.MULTILINE)
    assert check and check.group(1) == '["comfygram", "healthcheck"]'
    assert "healthcheck" in _cli_commands()
    assert re.search(r"HEARTBEAT_FILE=/\S+", text)
    assert "8000" not in check.group(0)
    services = _compose()["services"]
    for name in APP_SERVICES:
        health = services[name].get("healthcheck", {})
        assert not health.get("disable"), name
        assert "8000" not in str(health.get("test", "")) or name == "backend", name
    for name in ("worker", "bot"):
        assert services[name]["depends_on"]["backend"]["condition"] == "service_healthy"
