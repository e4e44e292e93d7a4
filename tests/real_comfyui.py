"""A real ComfyUI 0.3.64 (CPU) for the real-ComfyUI test tier (``tests/test_real_comfyui*.py``).

The server comes from the project's shared folder (``../shared/comfyui`` beside the repository,
or ``COMFYUI_SHARED_DIR``): ``install`` puts it in ``COMFYUI_HOME`` (default
``/opt/comfyui-0.3.64``) once, ``start PORT`` runs it detached with its own ``input/``,
``output/`` and ``user/`` under ``$COMFYUI_HOME/io/PORT`` and returns once ``/system_stats``
answers, ``stop PORT`` ends exactly that process. ``models/`` is shared by every server.

Each server loads comfygram's ComfyUI extension (``comfyui/custom_nodes``) unless started with
``extension=False``. One server serves the whole test run (``real_comfyui``); a test that must
stop or restart ComfyUI starts its own on another port (``RealComfyUI(free_port())``). Without
the shared folder or the install the tests skip and say why, unless ``CI=true`` or
``COMFYGRAM_REQUIRE_COMFYUI=1`` (``scripts/test`` sets it): then they fail, so CI cannot pass by
skipping them.

Model presets are validated without weights: ComfyUI checks a loader's file name only against
the names in its models folder, so ``model_placeholders`` creates empty files with the names the
presets ask for, and removes exactly the ones it created.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from comfygram.presets import ModelFile
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("COMFYUI_SHARED_DIR") or ROOT.parent / "shared" / "comfyui")
COMFYUI_HOME = Path(os.environ.get("COMFYUI_HOME") or "/opt/comfyui-0.3.64")
MODELS_DIR = COMFYUI_HOME / "ComfyUI" / "models"
# comfygram's ComfyUI extension, loaded as docs/deploy.md says.
EXTENSION_PATHS = ROOT / "comfyui" / "extra_model_paths.yaml"
START_TIMEOUT = 180  # the script itself gives up after about 120 s


def required() -> bool:
    """Whether a missing ComfyUI is a failure (CI) rather than a reason to skip."""
    return (
        os.environ.get("CI", "").lower() == "true"
        or os.environ.get("COMFYGRAM_REQUIRE_COMFYUI") == "1"
    )


def missing() -> str | None:
    """Why the real ComfyUI cannot run here, or None."""
    for script in ("install", "start", "stop"):
        if not os.access(SHARED_DIR / script, os.X_OK):
            return (
                f"{SHARED_DIR / script} not found: the shared ComfyUI folder is missing "
                "(set COMFYUI_SHARED_DIR to it)"
            )
    if (
        not (COMFYUI_HOME / "venv" / "bin" / "python").exists()
        or not (COMFYUI_HOME / "ComfyUI" / "main.py").exists()
    ):
        return f"ComfyUI is not installed in {COMFYUI_HOME}: run {SHARED_DIR / 'install'}"
    return None


def unavailable(reason: str) -> NoReturn:
    if required():
        pytest.fail(f"a real ComfyUI is required here (CI) but {reason}", pytrace=False)
    pytest.skip(reason)


class RealComfyUI:
    """One real ComfyUI process on 127.0.0.1:``port``, driven by the shared scripts."""

    def __init__(
        self, port: int, *, extension: bool = True, extra_configs: Sequence[Path] = ()
    ) -> None:
        self.port = port
        self.extension = extension  # comfygram's (comfyui/custom_nodes), as deployed
        self.extra_configs = list(extra_configs)  # more extra_model_paths.yaml (the bench's)
        self.url = f"http://127.0.0.1:{port}"
        self.io_dir = COMFYUI_HOME / "io" / str(port)
        self.input_dir = self.io_dir / "input"
        self.output_dir = self.io_dir / "output"
        self.log = self.io_dir / "comfyui.log"
        self._owns_io_dir = not self.io_dir.exists()

    def _script(self, name: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "COMFYUI_HOME": str(COMFYUI_HOME)}
        configs = [EXTENSION_PATHS] if self.extension else []
        configs += self.extra_configs
        if configs:
            paths = f"--extra-model-paths-config {' '.join(map(str, configs))}"
            env["COMFY_EXTRA_ARGS"] = f"{paths} {env.get('COMFY_EXTRA_ARGS', '')}".strip()
        return subprocess.run(
            [str(SHARED_DIR / name), str(self.port)],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            env=env,
        )

    def start(self) -> None:
        """Start it and return once it answers; a failure shows the end of its log."""
        result = self._script("start")
        if result.returncode != 0:
            pytest.fail(
                f"ComfyUI did not start on port {self.port}:\n{result.stdout}{result.stderr}",
                pytrace=False,
            )

    def stop(self) -> None:
        self._script("stop")

    def close(self) -> None:
        """Stop it and remove its folders, if this run made them."""
        self.stop()
        if self._owns_io_dir:
            shutil.rmtree(self.io_dir, ignore_errors=True)

    def is_up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/system_stats", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


_session_server: RealComfyUI | None = None
_session_failure: str | None = None


@pytest.fixture(scope="session")
def real_comfyui(request: pytest.FixtureRequest) -> RealComfyUI:
    """The run's one real ComfyUI, started on first use and stopped when pytest ends.

    Kept in a module global, so test modules that import this fixture share one server.
    """
    global _session_server, _session_failure
    if (reason := missing()) is not None:
        unavailable(reason)
    if _session_failure is not None:  # one failed start is enough: do not wait again per test
        pytest.fail(_session_failure, pytrace=False)
    if _session_server is None:
        server = RealComfyUI(free_port())
        request.config.add_cleanup(server.close)
        try:
            server.start()
        except pytest.fail.Exception as exc:
            _session_failure = str(exc)
            raise
        _session_server = server
    elif not _session_server.is_up():  # a test stopped it by mistake: bring it back
        _session_server.start()
    return _session_server


@contextlib.contextmanager
def second_comfyui(*, started: bool = True) -> Iterator[RealComfyUI]:
    """Another real ComfyUI, for tests that stop or restart it (or start it late: ``started``
    false); stopped and its folders removed afterwards."""
    if (reason := missing()) is not None:
        unavailable(reason)
    server = RealComfyUI(free_port())
    try:
        if started:
            server.start()
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def model_placeholders(files: Iterable[ModelFile]) -> Iterator[list[Path]]:
    """Empty model files with these names in the shared models folder while the block runs.

    Files that already exist (real weights, or another run's placeholders) are left alone;
    only the ones created here are removed.
    """
    created: list[Path] = []
    try:
        for model in files:
            path = MODELS_DIR / model.folder / model.name
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            created.append(path)
        yield created
    finally:
        for path in created:
            path.unlink(missing_ok=True)


def absent_models(files: Iterable[ModelFile]) -> list[ModelFile]:
    """The model files the shared models folder does not have."""
    return [m for m in files if not (MODELS_DIR / m.folder / m.name).exists()]


def blocker(nodes: int = 20, size: int = 1024) -> dict[str, Any]:
    """A model-free prompt that keeps ComfyUI busy (about 0.3 s per node on 2 CPU cores).

    Interrupts take effect between nodes, so a chain of short nodes stops promptly. A random
    colour keeps ComfyUI's cache from answering it without running.
    """
    color = random.randint(0, 0xFFFFFF)
    workflow: dict[str, Any] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": color},
        }
    }
    previous = "1"
    for i in range(nodes):
        node = str(10 + i)
        workflow[node] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [previous, 0], "blur_radius": 15, "sigma": 5.0},
        }
        previous = node
    workflow["99"] = {"class_type": "PreviewImage", "inputs": {"images": [previous, 0]}}
    return workflow


def new_prompt_id() -> str:
    return str(uuid.uuid4())
