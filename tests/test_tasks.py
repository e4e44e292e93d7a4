"""Ending tasks that loop for ever."""

from __future__ import annotations

import asyncio

import pytest

from comfygram.tasks import cancelled


async def test_a_task_is_cancelled_again_until_it_ends():
    """On Python 3.11 a wait_for can swallow a cancellation that lands as its call returns;
    the task is then cancelled again, so the bot and the worker still stop (a loop that ran
    on kept `comfygram run` from stopping: it cut the bot short after 60 s)."""
    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # as a wait_for that returned its call's answer instead

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.05)
    await asyncio.wait_for(cancelled(task), 5)
    assert task.cancelled() and swallowed == 1


async def test_a_task_that_failed_has_its_failure_raised():
    async def broken() -> None:
        raise ValueError("broken")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="broken"):
        await cancelled(task)
