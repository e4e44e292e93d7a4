"""`comfygram healthcheck`: is the comfygram process in this container (or on this host) alive?

Each role is checked for itself. The backend (and `comfygram run`, which contains one) answers
`GET /healthz` on its port. The worker and the bot serve nothing, so while their event loop runs
they rewrite a heartbeat file (HEARTBEAT_FILE) every few seconds, naming their role; a file not
rewritten for `max_age` seconds means a process that hangs. The check reads the file first: a
container whose file names a worker is judged by the file alone, never by the backend's port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx

from comfygram.settings import Settings

HEARTBEAT_SECONDS = 5.0
MAX_AGE_SECONDS = 30.0


def _write(path: Path, role: str) -> None:
    # Written beside and renamed, so a reader never sees half a file.
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(f"{role} {os.getpid()}\n")
    partial.replace(path)


async def beat(path: Path, role: str, interval: float = HEARTBEAT_SECONDS) -> None:
    """Rewrite the heartbeat file every `interval` seconds until cancelled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        await asyncio.to_thread(_write, path, role)
        await asyncio.sleep(interval)


async def alive_while(work: Coroutine[Any, Any, Any], settings: Settings, role: str) -> Any:
    """Run `work`, keeping the heartbeat file (if HEARTBEAT_FILE is set) while it runs."""
    if settings.heartbeat_file is None:
        return await work
    heart = asyncio.create_task(beat(settings.heartbeat_file, role), name="heartbeat")
    try:
        return await work
    finally:
        heart.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heart
        settings.heartbeat_file.unlink(missing_ok=True)  # a stopped process is not alive


def check(settings: Settings, max_age: float = MAX_AGE_SECONDS) -> tuple[bool, str]:
    """(healthy, one line saying why)."""
    path = settings.heartbeat_file
    if path is not None and path.is_file():
        role = (path.read_text().split() or ["?"])[0]
        age = time.time() - path.stat().st_mtime
        if age > max_age:
            return False, f"{role}: no heartbeat for {age:.0f} s ({path}): the process hangs"
        return True, f"{role}: alive (heartbeat {age:.0f} s ago)"
    return _check_backend(settings, path)


def _check_backend(settings: Settings, heartbeat: Path | None) -> tuple[bool, str]:
    host = settings.backend_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{f'[{host}]' if ':' in host else host}:{settings.backend_port}/healthz"
    nothing = f"no heartbeat file at {heartbeat}, and " if heartbeat else ""
    try:
        answer = httpx.get(url, timeout=4)
    except httpx.HTTPError as exc:
        return False, f"{nothing}backend: {url} does not answer ({type(exc).__name__})"
    if answer.status_code != 200:
        return False, f"backend: {url} answered {answer.status_code}"
    return True, f"backend: {url} answered 200"
