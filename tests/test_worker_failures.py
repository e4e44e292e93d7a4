"""Every job ends: what the worker does when the backend refuses, a finisher dies, or ComfyUI
dies under a job (real backend over HTTP, real Redis, the ComfyUI and Telegram doubles)."""

from __future__ import annotations

import asyncio
import io
import random
import sqlite3

import pytest
from PIL import Image

from comfygram.queue import JobQueue, connect_redis
from comfygram.worker.messages import UserMessages
from tests import images
from tests.stack import Stack, eventually, running_stack

USER = 6161
START_BALANCE = 13  # signup bonus 3 + 10 granted


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@pytest.fixture
async def stack(settings, tmp_path, redis):
    async with running_stack(settings, tmp_path) as running:
        await running.new_user(USER, credits=10)
        yield running


def noisy_jpeg(side: int = 96) -> bytes:
    """Noise compresses badly: enlarged and saved as PNG it grows far more than 4×."""
    rng = random.Random(7)
    image = Image.frombytes(
        "RGB", (side, side), bytes(rng.randrange(256) for _ in range(side**2 * 3))
    )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=30)
    return buffer.getvalue()


async def create(stack: Stack, preset: str = "invert", image: bytes | None = None) -> str:
    job, _ = await stack.backend.create_job(USER, preset, [(image or images.png(), "photo.png")])
    return job.id


async def balance(stack: Stack) -> int:
    return (await stack.backend.user(USER)).balance


async def queue_is_empty(stack: Stack) -> bool:
    """Nothing pending or waiting on the queue: the job was acknowledged, not just left."""
    redis = connect_redis(stack.settings)
    try:
        queue = JobQueue(redis, prefix=stack.settings.redis_prefix)
        pending = await redis.xpending(queue.stream, queue.group)
        return pending["pending"] == 0 and await queue.length() == 0
    finally:
        await redis.aclose()


def apologies(stack: Stack) -> list:
    return [c for c in stack.telegram.sent("sendMessage", chat_id=USER) if c.ok]


async def test_a_result_the_backend_refuses_fails_the_job_with_one_refund_and_one_apology(
    settings, tmp_path, redis
):
    photo = noisy_jpeg()
    limit = len(photo) + 1024  # the photo is taken; its enlargement is over 4× that
    async with running_stack(settings, tmp_path, max_upload_bytes=limit) as stack:
        await stack.new_user(USER, credits=10)
        job_id = await create(stack, "upscale2x", photo)
        assert await balance(stack) == START_BALANCE - 2
        stack.start_worker()
        job = await stack.settled(job_id, timeout=30)
        assert job.status == "failed" and job.error.startswith("refused:")
        assert "over the backend's limit" in job.error and not job.has_result
        assert job.delivery_status == "delivered"
        assert await balance(stack) == START_BALANCE  # refunded, once
        (apology,) = apologies(stack)
        assert "could not be saved" in apology.params["text"]
        assert "Your 2 credits are back" in apology.params["text"]  # upscale2x costs 2
        assert not stack.telegram.sent("sendPhoto", chat_id=USER)
        assert not stack.telegram.sent("sendDocument", chat_id=USER)
        await eventually(lambda: queue_is_empty(stack))
        await asyncio.sleep(2 * stack.settings.worker_lease_seconds)
        assert await balance(stack) == START_BALANCE
        assert len(apologies(stack)) == 1


async def test_a_result_the_backend_answers_4xx_to_fails_the_job_with_one_refund(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    from comfygram.comfyui import ComfyUIClient

    async def not_an_image(self, image):
        return b"this is not an image"  # as a new output type the backend does not take

    monkeypatch.setattr(ComfyUIClient, "download", not_an_image)
    job_id = await create(stack)
    stack.start_worker()
    job = await stack.settled(job_id)
    assert job.status == "failed" and job.error.startswith("refused:")
    assert ("415" in job.error or "422" in job.error) and not job.has_result
    assert await balance(stack) == START_BALANCE
    (apology,) = apologies(stack)
    assert "could not be saved" in apology.params["text"]
    await eventually(lambda: queue_is_empty(stack))
    limits = await stack.backend.result_limits()
    assert limits.result_max_bytes == 4 * stack.settings.max_upload_bytes
    assert limits.result_max_pixels == 4 * stack.settings.max_image_pixels


async def test_a_photo_that_cannot_be_rendered_gives_its_claim_back_for_the_apology(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    """The message is claimed while the photo is rendered; when the render fails, the claim
    is given back, and the apology is claimed and sent as for any failed job."""
    from comfygram.worker import encode

    def unreadable(data: bytes, **_: int) -> bytes:
        raise encode.EncodeError("not a readable image: broken PNG")

    monkeypatch.setattr(encode, "to_jpeg", unreadable)
    job_id = await create(stack)
    stack.start_worker()
    job = await stack.settled(job_id)
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.error.startswith("refused:") and "broken PNG" in job.error
    assert job.delivery_status == "delivered"  # the apology
    assert await balance(stack) == START_BALANCE
    assert len(apologies(stack)) == 1
    assert stack.telegram.sent("sendPhoto", chat_id=USER) == []


async def test_a_finisher_that_dies_unforeseen_after_the_claim_never_sends_twice(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    """The success and the claim of the message are one step: a finisher that dies after it
    lets the job go, and its successor records the delivery failed instead of sending."""
    real = UserMessages.deliver_result
    calls = 0

    async def dies_once(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug nobody foresaw")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(UserMessages, "deliver_result", dies_once)
    job_id = await create(stack)
    stack.start_worker()
    # Its lease is no longer renewed: after it lapses the job is taken up again.
    job = await stack.settled(job_id, timeout=30)
    assert (job.status, job.delivery_status) == ("succeeded", "failed")
    assert "not sent again" in job.delivery_error
    assert calls == 2  # the successor found the message claimed and sent nothing
    assert stack.telegram.sent("sendPhoto", chat_id=USER) == []
    assert len(stack.comfyui.prompts_received) == 1  # re-attached, not run again
    await eventually(lambda: queue_is_empty(stack))


async def test_an_unforeseen_error_storing_the_result_is_a_failed_run_that_is_retried(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    from comfygram.api import BackendClient

    real = BackendClient.put_outputs
    calls = 0

    async def dies_once(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug nobody foresaw")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(BackendClient, "put_outputs", dies_once)
    job_id = await create(stack)
    stack.start_worker()
    job = await stack.settled(job_id, timeout=30)
    assert (job.status, job.delivery_status, job.attempts) == ("succeeded", "delivered", 1)
    assert job.error.startswith("execution:") and "nobody foresaw" in job.error
    assert await balance(stack) == START_BALANCE - 1  # charged once, not refunded
    await eventually(lambda: queue_is_empty(stack))


async def test_a_finisher_that_keeps_dying_ends_the_job_after_max_attempts(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    """The photo leaves while the result is stored, so the user has it although no store
    ever succeeds: the job fails after its attempts (refunded), with no apology and no second
    photo after it."""
    from comfygram.api import BackendClient

    async def always_dies(self, *args, **kwargs):
        raise RuntimeError("a bug nobody foresaw")

    monkeypatch.setattr(BackendClient, "put_outputs", always_dies)
    job_id = await create(stack)
    stack.start_worker()
    job = await stack.settled(job_id, timeout=40)
    assert (job.status, job.attempts) == ("failed", stack.settings.max_attempts)
    assert job.delivery_status == "delivered"
    assert await balance(stack) == START_BALANCE
    assert apologies(stack) == []
    assert len([c for c in stack.telegram.sent("sendPhoto", chat_id=USER) if c.ok]) == 1
    await eventually(lambda: queue_is_empty(stack))


async def _executing(stack: Stack) -> bool:
    return stack.comfyui.running is not None


async def _kill_comfyui_mid_run(stack: Stack) -> None:
    """ComfyUI dies (losing its queue, as a process killed for memory does) while it runs."""
    await eventually(lambda: _executing(stack), timeout=20)
    await asyncio.sleep(0.3)  # the worker has seen it start
    await stack.comfyui.stop()
    await asyncio.sleep(1.0)


async def test_a_job_under_which_comfyui_dies_twice_fails_with_one_refund(stack: Stack):
    stack.comfyui.execution_delay = 3.0
    job_id = await create(stack)
    stack.start_worker()
    await _kill_comfyui_mid_run(stack)
    await stack.comfyui.start()
    await _kill_comfyui_mid_run(stack)  # the same job, resubmitted, kills it again
    job = await stack.settled(job_id, timeout=30)
    assert job.status == "failed" and job.error.startswith("comfyui_crash:")
    assert job.comfyui_crashes == 2
    assert await balance(stack) == START_BALANCE
    (apology,) = apologies(stack)
    assert "could not be processed" in apology.params["text"]
    submitted = len(stack.comfyui.prompts_received)
    assert submitted == 2
    await stack.comfyui.start()
    await asyncio.sleep(1.5)
    assert len(stack.comfyui.prompts_received) == submitted  # never given to ComfyUI again
    assert await balance(stack) == START_BALANCE
    await eventually(lambda: queue_is_empty(stack))


async def test_a_job_under_which_comfyui_dies_once_succeeds_when_it_is_back(stack: Stack):
    stack.comfyui.execution_delay = 1.5
    job_id = await create(stack)
    stack.start_worker()
    await _kill_comfyui_mid_run(stack)
    await stack.comfyui.start()
    job = await stack.settled(job_id, timeout=30)
    assert (job.status, job.attempts, job.comfyui_crashes) == ("succeeded", 0, 1)
    assert await balance(stack) == START_BALANCE - 1


async def test_a_comfyui_down_before_the_job_was_submitted_does_not_count(stack: Stack):
    await stack.comfyui.stop()
    job_id = await create(stack)
    stack.start_worker()
    await asyncio.sleep(2.0)
    await stack.comfyui.start()
    await asyncio.sleep(1.0)
    await stack.comfyui.stop()  # down again, still before anything ran
    await asyncio.sleep(1.5)
    await stack.comfyui.start()
    job = await stack.settled(job_id, timeout=30)
    assert (job.status, job.attempts, job.comfyui_crashes) == ("succeeded", 0, 0)


async def test_a_comfyui_death_reported_twice_counts_once_and_only_while_running(stack: Stack):
    from comfygram.api import BackendError

    job_id = await create(stack)
    with pytest.raises(BackendError) as refused:  # queued: nothing ran, nothing to count
        await stack.backend.record_comfyui_crash(job_id, seen=0)
    assert (refused.value.status, refused.value.code) == (409, "job_not_processing")
    await stack.backend.set_status(job_id, "processing", worker="tests")
    first = await stack.backend.record_comfyui_crash(job_id, seen=0)
    again = await stack.backend.record_comfyui_crash(job_id, seen=0)  # a retried report
    assert first.comfyui_crashes == again.comfyui_crashes == 1
    assert (await stack.backend.record_comfyui_crash(job_id, seen=1)).comfyui_crashes == 2


async def test_a_failed_job_removes_its_status_message_once_the_apology_is_sent(stack: Stack):
    stack.comfyui.hide_node("ImageInvert")  # the workflow is refused: failed at once
    job_id = await create(stack)
    status_id = await stack.status_message(USER, "⏳ Queued: position 1")
    await stack.backend.record_status_message(job_id, USER, status_id)
    stack.start_worker()
    job = await stack.settled(job_id)
    assert (job.status, job.delivery_status) == ("failed", "delivered")
    assert stack.telegram.message(USER, status_id).deleted
    (left,) = [m for m in stack.telegram.messages(USER) if m.from_bot and not m.deleted]
    assert "Sorry" in left.text  # the apology alone


async def test_a_free_job_that_fails_says_sorry_without_promising_credits_back(
    settings, tmp_path, redis
):
    async with running_stack(settings, tmp_path) as stack:
        await stack.new_user(USER, credits=10)
        database = str(stack.settings.database_url).split(":///", 1)[1]
        with sqlite3.connect(database) as db:  # as an operator who made the preset free
            db.execute("UPDATE presets SET price = 0 WHERE slug = 'invert'")
        stack.comfyui.hide_node("ImageInvert")
        job_id = await create(stack)
        stack.start_worker()
        job = await stack.settled(job_id)
        assert (job.status, job.price) == ("failed", 0)
        (apology,) = apologies(stack)
        assert "Sorry" in apology.params["text"] and "credit" not in apology.params["text"]
        assert await balance(stack) == START_BALANCE


async def test_a_telegram_outage_longer_than_the_senders_retries_still_delivers_the_result(
    stack: Stack,
):
    # Seven dropped sendPhoto calls: more than one call's five tries (about 8 s of Telegram down).
    stack.telegram.drop_connections("sendPhoto", times=7)
    job_id = await create(stack)
    stack.start_worker()
    job = await stack.settled(job_id, timeout=60)
    assert (job.status, job.delivery_status) == ("succeeded", "delivered")
    photos = [c for c in stack.telegram.sent("sendPhoto", chat_id=USER) if c.ok]
    assert len(photos) == 1
    assert len(stack.comfyui.prompts_received) == 1  # ComfyUI is never run again for it


async def test_a_job_waiting_in_comfyuis_queue_when_it_dies_is_resubmitted_without_an_attempt(
    stack: Stack,
):
    stack.comfyui.execution_delay = 2.0
    running = await create(stack)
    waiting = await create(stack)
    stack.start_worker()

    async def both_in_comfyui() -> bool:
        return stack.comfyui.running is not None and len(stack.comfyui.pending) == 1

    await eventually(both_in_comfyui, timeout=20)  # the next job was submitted ahead
    await asyncio.sleep(0.3)
    await stack.comfyui.stop()  # the restart loses the queue: the waiting prompt vanishes
    await asyncio.sleep(1.0)
    await stack.comfyui.start()
    first = await stack.settled(running, timeout=40)
    second = await stack.settled(waiting, timeout=40)
    assert (first.status, first.attempts, first.comfyui_crashes) == ("succeeded", 0, 1)
    assert (second.status, second.attempts, second.comfyui_crashes) == ("succeeded", 0, 0)
    assert await balance(stack) == START_BALANCE - 2


async def test_an_upload_that_never_gets_an_answer_from_a_live_backend_ends_the_job(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    from comfygram.api import BackendClient, BackendUnavailable

    async def cut_off(self, *args, **kwargs):
        # What an over-limit body gets from a backend that closes the connection on it.
        raise BackendUnavailable("backend unreachable: ReadError")

    monkeypatch.setattr(BackendClient, "put_outputs", cut_off)
    monkeypatch.setattr("comfygram.worker.runner.random.random", lambda: 0.0)  # short pauses
    job_id = await create(stack)
    stack.start_worker()
    job = await stack.settled(job_id, timeout=90)
    assert (job.status, job.attempts) == ("failed", stack.settings.max_attempts)
    assert "did not take the result" in job.error
    assert await balance(stack) == START_BALANCE
    # The photo left while the first upload was tried: it is all the user hears.
    assert (job.delivery_status, apologies(stack)) == ("delivered", [])
    assert len([c for c in stack.telegram.sent("sendPhoto", chat_id=USER) if c.ok]) == 1


async def test_a_job_whose_preset_cannot_be_read_ends_after_its_attempts(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    def unreadable(manifest, workflow):
        raise ValueError("a manifest this worker cannot read")

    monkeypatch.setattr("comfygram.worker.runner.Preset.from_manifest", unreadable)
    job_id = await create(stack)
    stack.start_worker()
    job = await stack.settled(job_id, timeout=40)
    assert (job.status, job.attempts) == ("failed", stack.settings.max_attempts)
    assert "cannot read" in job.error
    assert await balance(stack) == START_BALANCE
    (apology,) = apologies(stack)
    assert "invert" in apology.params["text"]  # named by its slug: its title is unknown
    await eventually(lambda: queue_is_empty(stack))
