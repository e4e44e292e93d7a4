"""ComfyUI's own queue kept topped up to COMFYUI_QUEUE_DEPTH, and the fast path's steps (real
backend over HTTP, real Redis, the ComfyUI and Telegram doubles)."""

from __future__ import annotations

import asyncio

import pytest

from comfygram.worker.runner import Worker
from tests import images
from tests.stack import Stack, running_stack

USERS = (7301, 7302, 7303)


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@pytest.fixture
async def stack(settings, tmp_path, redis):
    async with running_stack(settings, tmp_path) as running:
        for user in USERS:
            await running.new_user(user, credits=10)
        yield running


async def burst(stack: Stack, jobs_per_user: int = 2) -> list[str]:
    ids = []
    for _ in range(jobs_per_user):
        for user in USERS:
            job, _ = await stack.backend.create_job(user, "invert", [(images.png(), "p.png")])
            ids.append(job.id)
    return ids


async def most_waiting(stack: Stack, ids: list[str]) -> int:
    """The most prompts seen waiting in ComfyUI's queue while a prompt executes, until every
    job is delivered. (Once a prompt has succeeded, the worker submits the next as ComfyUI
    finishes its bookkeeping: that one waits for a moment, but nothing is executing.)"""
    comfyui = stack.comfyui
    most = 0
    while True:
        running = comfyui.running
        if running is not None and running[1] not in comfyui.history:
            most = max(most, len(comfyui.pending))
        jobs = [await stack.backend.job(job_id) for job_id in ids]
        if all(job.delivery_status == "delivered" for job in jobs):
            return most
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("depth", [0, 2])
async def test_comfyui_is_kept_fed_to_the_configured_depth_and_no_further(stack: Stack, depth):
    stack.comfyui.execution_delay = 0.3  # per node: about 1 s a job
    ids = await burst(stack)
    stack.start_worker(comfyui_queue_depth=depth)
    most = await asyncio.wait_for(most_waiting(stack, ids), 60)
    assert most == depth
    assert len(stack.comfyui.prompts_received) == len(ids)  # each ran once
    for user in USERS:
        assert len([c for c in stack.telegram.sent("sendPhoto", chat_id=user) if c.ok]) == 2


async def test_only_a_job_taken_up_again_is_looked_for_in_comfyui(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    """A fresh job cannot have a prompt in ComfyUI yet: its history and queue are not asked
    before the submit (a job taken up again is: tests/test_worker_crash.py)."""
    looked_for: list[str] = []
    real = Worker._in_comfyui

    async def counted(self, prompt_id: str) -> bool:
        looked_for.append(prompt_id)
        return await real(self, prompt_id)

    monkeypatch.setattr(Worker, "_in_comfyui", counted)
    stack.comfyui.execution_delay = 0.05
    ids = await burst(stack, 1)
    stack.start_worker()
    for job_id in ids:
        job = await stack.settled(job_id)
        assert (job.status, job.delivery_status) == ("succeeded", "delivered")
    assert looked_for == []
    assert len(stack.comfyui.prompts_received) == len(ids)
