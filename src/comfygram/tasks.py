"""Ending asyncio tasks that loop for ever (the bot's poll and loops, the worker's keepers)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel the task and wait until it has ended, cancelling again every second: on Python
    3.11 a wait_for inside it can swallow a cancellation that lands as its call returns, and a
    loop then runs on for ever (the bot never stopped: `comfygram run` cut it short after
    60 s). Its own failure, if it had one, is raised."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    with contextlib.suppress(asyncio.CancelledError):
        await task
