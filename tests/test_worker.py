"""The worker end to end: real backend over HTTP, real Redis, the ComfyUI and Telegram doubles."""

from __future__ import annotations

import asyncio
import io
import itertools

import pytest
from PIL import Image

from comfygram.backend import jobs
from comfygram.livestatus import LiveStatus
from comfygram.presets import BUILTIN_DIR
from tests import images
from tests.stack import Stack, eventually, running_stack

USER = 4242


@pytest.fixture
def database_url(tmp_path) -> str:
    # The database layer is tested on both engines elsewhere; here SQLite, as `comfygram run`.
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@pytest.fixture
async def stack(settings, tmp_path, redis):
    async with running_stack(settings, tmp_path) as running:
        await running.new_user(USER, credits=10)
        yield running


async def create(stack: Stack, preset: str = "invert", image: bytes | None = None) -> str:
    job, _ = await stack.backend.create_job(USER, preset, [(image or images.png(), "photo.png")])
    return job.id


async def balance(stack: Stack) -> int:
    return (await stack.backend.user(USER)).balance


def delivered_photos(stack: Stack) -> list:
    return [c for c in stack.telegram.sent("sendPhoto", chat_id=USER) if c.ok]


def pixels(data: bytes) -> list[tuple[int, int, int]]:
    with Image.open(io.BytesIO(data)) as image:
        data = image.convert("RGB").tobytes()
    return [tuple(data[i : i + 3]) for i in range(0, len(data), 3)]


async def test_a_job_runs_and_the_user_gets_the_result_once(stack: Stack):
    photo = images.png(color=(200, 80, 40))
    job_id = await create(stack, image=photo)
    assert await balance(stack) == 13 - 1  # signup bonus 3 + 10 granted, invert costs 1
    stack.start_worker()
    job = await stack.settled(job_id)
    assert (job.status, job.delivery_status, job.attempts, job.progress) == (
        "succeeded",
        "delivered",
        0,
        100,
    )
    result, _ = await stack.backend.job_output(job_id, 0)
    expected = [(255 - r, 255 - g, 255 - b) for r, g, b in pixels(photo)]
    assert all(
        abs(a - b) <= 1
        for got, want in zip(pixels(result), expected, strict=True)
        for a, b in zip(got, want, strict=True)
    )
    photos = delivered_photos(stack)
    assert len(photos) == 1
    assert "Negative" in photos[0].params["caption"]
    keyboard = photos[0].params["reply_markup"]["inline_keyboard"]
    buttons = [b["callback_data"] for row in keyboard for b in row]
    assert buttons == [f"again:{job_id}", "buy"]
    # Sent as a high-quality JPEG of the stored PNG: the same picture within JPEG's error.
    assert Image.open(io.BytesIO(photos[0].files["photo"])).format == "JPEG"
    assert all(
        abs(a - b) <= 3
        for got, want in zip(pixels(photos[0].files["photo"]), pixels(result), strict=True)
        for a, b in zip(got, want, strict=True)
    )
    assert await balance(stack) == 12


async def test_progress_is_shown_in_the_status_message_which_the_result_replaces(stack: Stack):
    stack.comfyui.execution_delay = 0.4
    job_id = await create(stack)
    status_id = await stack.status_message(USER, "Queued…")
    await stack.backend.record_status_message(job_id, USER, status_id)
    stack.start_worker()
    await stack.settled(job_id)
    edits = stack.telegram.sent("editMessageText", chat_id=USER)
    assert edits and all("Negative" in e.params["text"] for e in edits)
    assert any("%" in e.params["text"] for e in edits)
    deleted = stack.telegram.sent("deleteMessage", chat_id=USER)
    assert [d.params["message_id"] for d in deleted] == [status_id]
    live = await stack.live_status(job_id)
    assert live["status"] == "succeeded" and live["progress"] == "100"


async def test_a_silent_websocket_does_not_hang_the_job(stack: Stack):
    stack.comfyui.drop_websocket_messages = True
    job_id = await create(stack)
    stack.start_worker()
    job = await stack.settled(job_id, timeout=30)
    assert job.status == "succeeded" and job.attempts == 0
    assert len(delivered_photos(stack)) == 1


async def test_jobs_wait_while_comfyui_is_down_and_use_no_attempt(stack: Stack):
    await stack.comfyui.stop(lose_state=False)
    job_id = await create(stack)
    stack.start_worker()
    await asyncio.sleep(2.5)
    job = await stack.backend.job(job_id)
    assert job.status == "queued" and job.attempts == 0
    await stack.comfyui.start()
    job = await stack.settled(job_id, timeout=30)
    assert (job.status, job.attempts) == ("succeeded", 0)


async def test_comfyui_going_down_mid_job_is_waited_out(stack: Stack):
    stack.comfyui.execution_delay = 1.0
    job_id = await create(stack)
    stack.start_worker()
    await eventually(lambda: _running(stack))
    await stack.comfyui.stop()  # a restart loses ComfyUI's queue and history
    await asyncio.sleep(1.5)
    await stack.comfyui.start()
    job = await stack.settled(job_id, timeout=30)
    assert (job.status, job.attempts) == ("succeeded", 0)
    assert len(delivered_photos(stack)) == 1


async def _running(stack: Stack) -> bool:
    return stack.comfyui.running is not None


async def test_a_validation_error_fails_at_once_with_one_refund(stack: Stack):
    stack.comfyui.hide_node("ImageInvert")
    job_id = await create(stack)
    stack.start_worker()
    job = await stack.settled(job_id)
    assert job.status == "failed" and job.attempts == 1
    assert job.error.startswith("validation:") and "ImageInvert" in job.error
    assert await balance(stack) == 13
    assert len(stack.comfyui.prompts_received) == 1  # no retry
    (apology,) = stack.telegram.sent("sendMessage", chat_id=USER)
    assert "Your 1 credit is back" in apology.params["text"]  # invert costs 1


async def test_a_flaky_node_is_retried_and_then_succeeds(stack: Stack):
    stack.comfyui.fail_next_with("RuntimeError", "CUDA error: an illegal memory access")
    job_id = await create(stack)
    stack.start_worker()
    job = await stack.settled(job_id)
    assert (job.status, job.attempts) == ("succeeded", 1)
    assert job.error.startswith("execution:")
    assert await balance(stack) == 12
    assert len(delivered_photos(stack)) == 1


async def test_always_failing_ends_failed_after_max_attempts_with_one_refund(stack: Stack):
    stack.comfyui.fail_always("RuntimeError", "boom")
    job_id = await create(stack)
    stack.start_worker()
    job = await stack.settled(job_id)
    assert (job.status, job.attempts) == ("failed", 3)
    assert len(stack.comfyui.prompts_received) == 3
    assert await balance(stack) == 13  # one refund: back to where it was
    assert len(stack.telegram.sent("sendMessage", chat_id=USER)) == 1
    assert not stack.telegram.sent("sendPhoto", chat_id=USER)


async def test_out_of_memory_frees_vram_and_retries_once(stack: Stack):
    stack.comfyui.out_of_memory_next()
    job_id = await create(stack)
    stack.start_worker()
    job = await stack.settled(job_id)
    assert (job.status, job.attempts) == ("succeeded", 1)
    assert len(stack.comfyui.free_calls) == 1


async def test_a_cached_identical_prompt_never_hands_back_another_jobs_file(stack: Stack):
    photo = images.png(color=(10, 20, 30))
    first = await create(stack, image=photo)
    second = await create(stack, image=photo)
    stack.start_worker()
    for job_id in (first, second):
        assert (await stack.settled(job_id)).status == "succeeded"
    outputs = [
        e[1]["images"][0]["filename"]
        for p in stack.comfyui.history.values()
        for e in p["outputs"].items()
    ]
    assert len(set(outputs)) == 2
    assert first in outputs[0] or first in outputs[1]


async def test_the_next_job_is_in_comfyui_before_the_current_one_ends(stack: Stack):
    stack.comfyui.execution_delay = 0.5
    ids = [await create(stack) for _ in range(3)]
    stack.start_worker()
    for job_id in ids:
        assert (await stack.settled(job_id, timeout=30)).status == "succeeded"
    ends = {pid: at for at, kind, pid, _ in stack.comfyui.timeline if kind == "end"}
    order = [pid for _, kind, pid, _ in stack.comfyui.timeline if kind == "start"]
    received = stack.comfyui.queued_at
    # Prefetch: each next prompt reached ComfyUI while the one before it was still running.
    for previous, following in itertools.pairwise(order):
        assert received[following] < ends[previous]


async def test_two_workers_on_one_comfyui_never_drive_it_together(stack: Stack):
    stack.comfyui.execution_delay = 0.2
    ids = [await create(stack) for _ in range(3)]
    stack.start_worker("w1")
    stack.start_worker("w2")
    for job_id in ids:
        assert (await stack.settled(job_id, timeout=30)).status == "succeeded"
    clients = {body.get("client_id") for body in stack.comfyui.prompts_received}
    assert len(clients) == 1  # the lock holder alone submitted
    # The holder goes away; the other takes the GPU over.
    holder = next(iter(clients)).removeprefix("comfygram-")
    await stack.stop_worker(holder)
    job_id = await create(stack)
    assert (await stack.settled(job_id, timeout=30)).status == "succeeded"
    last = stack.comfyui.prompts_received[-1]["client_id"]
    assert last != f"comfygram-{holder}"


async def test_sigterm_hands_the_running_job_back_and_the_next_worker_finishes_it(stack: Stack):
    stack.comfyui.execution_delay = 1.5
    job_id = await create(stack)
    stack.start_worker("w1", worker_grace_seconds=0.2)
    await eventually(lambda: _running(stack))
    await stack.stop_worker("w1")
    stack.start_worker("w2")
    job = await stack.settled(job_id, timeout=30)
    assert (job.status, job.attempts) == ("succeeded", 0)
    # Re-attached to the same prompt rather than running it again.
    assert len(stack.comfyui.prompts_received) == 1
    assert len(delivered_photos(stack)) == 1


async def test_a_user_who_blocked_the_bot_is_marked_and_not_retried(stack: Stack):
    stack.telegram.block(USER)
    job_id = await create(stack)
    stack.start_worker()
    job = await stack.settled(job_id)
    assert (job.status, job.delivery_status) == ("succeeded", "blocked")
    assert (await stack.backend.user(USER)).blocked_bot
    assert len(stack.telegram.sent("sendPhoto", chat_id=USER)) == 1  # tried once, not again


async def test_telegram_429_on_delivery_is_waited_out_not_rerun(stack: Stack):
    stack.telegram.fail("sendPhoto", 429, "Too Many Requests: retry after 1", retry_after=1)
    job_id = await create(stack)
    stack.start_worker()
    job = await stack.settled(job_id)
    assert (job.status, job.delivery_status) == ("succeeded", "delivered")
    calls = stack.telegram.sent("sendPhoto", chat_id=USER)
    assert len(calls) == 2 and calls[1].at - calls[0].at >= 0.9
    assert len(stack.comfyui.prompts_received) == 1


async def test_presets_this_comfyui_cannot_run_are_not_sold(stack: Stack):
    stack.start_worker()

    async def reported() -> bool:
        return bool(await stack.backend.workers())

    await eventually(reported)
    available = {p.slug for p in await stack.backend.presets(available_only=True)}
    assert "invert" in available and "upscale2x" in available
    assert "oil" not in available and "edit" not in available  # no models on the double


@pytest.fixture
def slow_preset_dir(tmp_path):
    """An extra preset like invert with a 1-second deadline."""
    folder = tmp_path / "presets" / "hasty"
    folder.mkdir(parents=True)
    source = BUILTIN_DIR / "invert"
    (folder / "workflow.json").write_text((source / "workflow.json").read_text())
    manifest = (source / "preset.toml").read_text()
    manifest = manifest.replace('slug = "invert"', 'slug = "hasty"')
    manifest = manifest.replace("timeout_seconds = 60", "timeout_seconds = 1")
    (folder / "preset.toml").write_text(manifest)
    return tmp_path / "presets"


async def test_a_timeout_interrupts_exactly_our_prompt_and_fails_after_max_attempts(
    settings, tmp_path, redis, slow_preset_dir
):
    overrides = {"presets_dir": slow_preset_dir, "max_attempts": 1}
    async with running_stack(settings, tmp_path, **overrides) as stack:
        await stack.new_user(USER, credits=10)
        stack.comfyui.execution_delay = 2.0
        job_id = await create(stack, preset="hasty")
        stack.start_worker()
        job = await stack.settled(job_id)
        assert (job.status, job.attempts) == ("failed", 1)
        assert job.error.startswith("timeout:")
        (prompt,) = stack.comfyui.prompts_received
        assert stack.comfyui.interrupts == [prompt["prompt_id"]]
        assert await balance(stack) == 13
        (apology,) = stack.telegram.sent("sendMessage", chat_id=USER)
        assert "took too long" in apology.params["text"]


@pytest.mark.parametrize("ride_max_jobs", [4, 0])
async def test_a_photo_that_rode_along_with_its_job_is_not_fetched_from_the_backend(
    settings, tmp_path, redis, monkeypatch: pytest.MonkeyPatch, ride_max_jobs: int
):
    """A job taken while the queue is short reads its photo from Redis; with
    PHOTO_RIDE_MAX_JOBS=0 (or once it is gone) the worker asks the backend. Either way ComfyUI
    gets the photo as stored."""
    fetched: list[str] = []
    find = jobs.stored_file

    async def counting(session, job_id, role, index):
        fetched.append(f"{role}:{index}")
        return await find(session, job_id, role, index)

    monkeypatch.setattr(jobs, "stored_file", counting)
    async with running_stack(settings, tmp_path, photo_ride_max_jobs=ride_max_jobs) as stack:
        await stack.new_user(USER, credits=10)
        photo = images.png(color=(10, 200, 90))
        job_id = await create(stack, image=photo)
        stack.start_worker()
        assert (await stack.settled(job_id)).status == "succeeded"
        asked = [f for f in fetched if f.startswith("input")]
        stored, _ = await stack.backend.job_input(job_id, 0)
        (uploaded,) = [p for p in stack.comfyui.dirs["input"].iterdir() if job_id in p.name]
        assert uploaded.read_bytes() == stored
    assert asked == ([] if ride_max_jobs else ["input:0"])


async def test_a_delivered_result_leaves_the_result_cache(
    settings, tmp_path, redis, redis_prefix, monkeypatch: pytest.MonkeyPatch
):
    """The outputs are cached while the result is sent (a worker taking the job up again
    after a crash finds them there) and dropped once it went out: kept for
    RESULT_CACHE_SECONDS after every job, an hour of results sat in Redis's memory."""
    cached: list[str] = []
    cache = LiveStatus.cache_results

    async def recording(self, job_id, files, ttl_seconds, **options):
        kept = await cache(self, job_id, files, ttl_seconds, **options)
        cached.extend([job_id] if kept else [])
        return kept

    monkeypatch.setattr(LiveStatus, "cache_results", recording)
    async with running_stack(settings, tmp_path) as stack:
        await stack.new_user(USER, credits=10)
        job_id = await create(stack)
        stack.start_worker()
        job = await stack.settled(job_id)
        assert (job.status, job.delivery_status) == ("succeeded", "delivered")
        key = f"{redis_prefix}:job:{job_id}:result"

        async def cached_then_dropped() -> bool:  # the cache is written while the photo goes
            return bool(cached) and not await redis.exists(key)

        await eventually(cached_then_dropped)
        assert cached == [job_id]
        assert await redis.exists(f"{redis_prefix}:job:{job_id}:status")  # the status stays
