"""End to end on a real ComfyUI 0.3.64: the real backend (uvicorn on loopback), real Redis, a
real worker and the Telegram double; every model-free built-in preset, its output image checked
pixel by pixel, and ComfyUI going down while a job waits in it.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import pytest
from PIL import Image

from comfygram.backend.workers import WorkerRegistry
from comfygram.comfyui import ComfyUIClient
from comfygram.presets import load_presets
from comfygram.worker import workflow
from tests.real_comfyui import (
    RealComfyUI,
    absent_models,
    blocker,
    new_prompt_id,
    real_comfyui,
    second_comfyui,
)
from tests.stack import Stack, running_stack

__all__ = ["real_comfyui"]  # the fixture, imported for pytest
pytestmark = pytest.mark.real_comfyui

USER = 5151
START_BALANCE = 13  # signup bonus 3 + 10 granted by new_user
PRESETS = {p.slug: p for p in load_presets()}
PRICES = {slug: p.price for slug, p in PRESETS.items()}
LEFT, RIGHT = (200, 80, 40), (30, 160, 90)  # the photo: two colours meeting at x = 32


@pytest.fixture
def database_url(tmp_path) -> str:
    # The database layer is tested on both engines elsewhere; here SQLite, as `comfygram run`.
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


def photo(size: int = 64) -> bytes:
    image = Image.new("RGB", (size, size), LEFT)
    image.paste(RIGHT, (size // 2, 0, size, size))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


async def run_job(stack: Stack, preset: str, image: bytes, timeout: float = 30):
    job, _ = await stack.backend.create_job(USER, preset, [(image, "photo.png")])
    return await stack.settled(job.id, timeout=timeout)


def delivered(stack: Stack, method: str) -> list:
    return [c for c in stack.telegram.sent(method, chat_id=USER) if c.ok]


def close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 1) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def check_invert(source: Image.Image, result: Image.Image) -> None:
    assert result.size == source.size
    # ComfyUI computes 1 - x in float32 and truncates: 255 - x, or one less.
    for xy in ((5, 5), (60, 60), (31, 10), (32, 10)):
        got, want = result.getpixel(xy), tuple(255 - v for v in source.getpixel(xy))
        assert all(0 <= w - g <= 1 for g, w in zip(got, want, strict=True)), (xy, got, want)


def check_bw(source: Image.Image, result: Image.Image) -> None:
    assert result.size == source.size
    for xy in ((5, 5), (60, 60)):
        r, g, b = source.getpixel(xy)
        # the preset's blends: (0.34 R + 0.66 G) * 0.89 + 0.11 B
        luma = (0.34 * r + 0.66 * g) * 0.89 + 0.11 * b
        grey = result.getpixel(xy)
        assert grey[0] == grey[1] == grey[2], grey
        assert abs(grey[0] - luma) <= 2, (xy, grey, luma)
    colours = {result.getpixel((x, y)) for x in range(64) for y in range(0, 64, 8)}
    assert all(c[0] == c[1] == c[2] for c in colours)


def check_sharpen(source: Image.Image, result: Image.Image) -> None:
    assert result.size == source.size
    # Flat areas stay as they were; at the edge the contrast grows (over- and undershoot).
    assert close(result.getpixel((5, 30)), LEFT) and close(result.getpixel((60, 30)), RIGHT)
    left, right = result.getpixel((31, 30)), result.getpixel((32, 30))
    assert abs(left[1] - right[1]) > abs(LEFT[1] - RIGHT[1])
    assert left != LEFT or right != RIGHT


def check_upscale(source: Image.Image, result: Image.Image) -> None:
    assert result.size == (source.width * 2, source.height * 2)
    assert close(result.getpixel((10, 10)), LEFT, 2) and close(result.getpixel((120, 10)), RIGHT, 2)


CHECKS = {
    "invert": check_invert,
    "bw": check_bw,
    "sharpen": check_sharpen,
    "upscale2x": check_upscale,
}


# Several photos, options, albums and video: test_real_comfyui_rich_presets.py checks their
# outputs, test_real_comfyui_rich_e2e.py runs them through the whole stack.
RICH = {"fade", "pair", "variants"}


def test_every_model_free_builtin_preset_is_covered():
    model_free = {p.slug for p in load_presets() if not p.models}
    assert model_free == set(CHECKS) | RICH


@pytest.mark.parametrize("slug", sorted(CHECKS))
async def test_a_model_free_preset_runs_on_real_comfyui(
    slug: str, real_comfyui: RealComfyUI, settings, tmp_path, redis
):
    async with running_stack(settings, tmp_path, comfyui_url=real_comfyui.url) as stack:
        await stack.new_user(USER, credits=10)
        stack.start_worker()
        source = photo()
        job = await run_job(stack, slug, source)
        assert (job.status, job.delivery_status, job.attempts, job.progress) == (
            "succeeded",
            "delivered",
            0,
            100,
        ), job.error
        result, _ = await stack.backend.job_output(job.id, 0)
        CHECKS[slug](rgb(source), rgb(result))
        assert (await stack.backend.user(USER)).balance == START_BALANCE - PRICES[slug]
        [sent] = delivered(stack, "sendPhoto")
        documents = delivered(stack, "sendDocument")
        if slug == "upscale2x":  # send_document: the full-size file as well, once
            [document] = documents
            assert rgb(document.files["document"]).size == (128, 128)
            sent = document  # the buttons go under the last message
        else:
            assert documents == []
        keyboard = sent.params["reply_markup"]["inline_keyboard"]
        assert keyboard[0][0]["callback_data"] == f"again:{job.id}"
        assert not stack.telegram.sent("sendMessage", chat_id=USER)  # no apology
        # The worker's heartbeat: what this ComfyUI can run, and why not the rest.
        [worker] = await WorkerRegistry(redis, stack.settings.redis_prefix).live()
        assert worker.healthy and worker.comfyui_url == real_comfyui.url
        assert set(CHECKS) <= set(worker.runnable)
        for model_preset in ("oil", "edit"):
            files = absent_models(PRESETS[model_preset].models)
            assert (model_preset in worker.problems) == bool(files)
            assert all(m.name in worker.problems.get(model_preset, "") for m in files)


async def test_comfyui_down_before_and_during_a_job_costs_nothing(settings, tmp_path, redis):
    """A second ComfyUI (the session's one is left alone). It is not running yet when the first
    job comes: the job waits, no attempt used, and runs once ComfyUI is started. The second job's
    prompt is queued behind a blocker when ComfyUI stops, which loses its queue; once it is back,
    the worker submits the prompt again. Each job ends once: succeeded, no attempt used,
    delivered and charged once.
    """
    with second_comfyui(started=False) as comfyui:
        async with (
            running_stack(settings, tmp_path, comfyui_url=comfyui.url) as stack,
            ComfyUIClient(comfyui.url, "fault-test", timeout=5) as client,
        ):
            await stack.new_user(USER, credits=10)
            source = photo()
            stack.start_worker()
            first, _ = await stack.backend.create_job(USER, "invert", [(source, "photo.png")])
            await asyncio.sleep(2.0)
            waiting = await stack.backend.job(first.id)
            assert (waiting.status, waiting.attempts) == ("queued", 0)
            await asyncio.to_thread(comfyui.start)
            first = await stack.settled(first.id, timeout=60)
            assert (first.status, first.attempts, first.delivery_status) == (
                "succeeded",
                0,
                "delivered",
            ), first.error

            await client.submit(blocker(nodes=30), new_prompt_id())
            second, _ = await stack.backend.create_job(USER, "invert", [(source, "photo.png")])
            prompt_id = workflow.prompt_id_for(second.id, 0)
            deadline = time.monotonic() + 20
            while prompt_id not in (await client.queue())[1]:
                assert time.monotonic() < deadline, "the job never reached ComfyUI's queue"
                await asyncio.sleep(0.05)
            await asyncio.to_thread(comfyui.stop)
            await asyncio.sleep(1.5)  # the worker notices: its socket and polls fail
            waiting = await stack.backend.job(second.id)
            assert (waiting.status, waiting.attempts) == ("processing", 0)
            await asyncio.to_thread(comfyui.start)

            second = await stack.settled(second.id, timeout=60)
            assert (second.status, second.attempts, second.delivery_status) == (
                "succeeded",
                0,
                "delivered",
            ), second.error
            entry = await client.history(prompt_id)
            assert entry is not None and entry["status"]["status_str"] == "success"
            for job in (first, second):
                result, _ = await stack.backend.job_output(job.id, 0)
                check_invert(rgb(source), rgb(result))
            assert len(delivered(stack, "sendPhoto")) == 2
            balance = (await stack.backend.user(USER)).balance
            assert balance == START_BALANCE - 2 * PRICES["invert"]


def slow_preset(root: Path) -> Path:
    """A preset whose workflow takes a few seconds on CPU but is given one: blur after blur on
    the photo scaled up eight times."""
    folder = root / "presets" / "hasty"
    folder.mkdir(parents=True)
    graph: dict[str, dict] = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {
            "class_type": "ImageScaleBy",
            "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "scale_by": 8.0},
        },
    }
    previous = "2"
    for i in range(40):
        node = str(10 + i)
        graph[node] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [previous, 0], "blur_radius": 15, "sigma": 5.0},
        }
        previous = node
    graph["3"] = {
        "class_type": "SaveImage",
        "inputs": {"images": [previous, 0], "filename_prefix": "comfygram/hasty"},
    }
    (folder / "workflow.json").write_text(json.dumps(graph))
    (folder / "preset.toml").write_text(
        'slug = "hasty"\nprice = 1\ntimeout_seconds = 1\n[title]\nen = "Hasty"\nru = "Hasty"\n'
        '[description]\nen = ""\nru = ""\n[image_input]\nnode = "1"\n[output]\nnode = "3"\n'
    )
    return folder.parent


async def test_a_stage_timeout_interrupts_our_prompt_in_comfyui_and_refunds(
    real_comfyui: RealComfyUI, settings, tmp_path, redis
):
    overrides = {"presets_dir": slow_preset(tmp_path), "max_attempts": 1}
    async with (
        running_stack(settings, tmp_path, comfyui_url=real_comfyui.url, **overrides) as stack,
        ComfyUIClient(real_comfyui.url, "timeout-test", timeout=5) as client,
    ):
        await stack.new_user(USER, credits=10)
        stack.start_worker()
        job, _ = await stack.backend.create_job(USER, "hasty", [(photo(), "photo.png")])
        job = await stack.settled(job.id, timeout=30)
        assert (job.status, job.attempts) == ("failed", 1)
        assert job.error.startswith("timeout:"), job.error
        prompt_id = workflow.prompt_id_for(job.id, 0)
        deadline = time.monotonic() + 10
        while (entry := await client.history(prompt_id)) is None:
            assert time.monotonic() < deadline, "the prompt never ended in ComfyUI"
            await asyncio.sleep(0.05)
        kinds = [kind for kind, _ in entry["status"]["messages"]]
        assert "execution_interrupted" in kinds and entry["outputs"] == {}
        assert await client.queue() == ([], [])
        assert (await stack.backend.user(USER)).balance == START_BALANCE  # refunded
        [apology] = delivered(stack, "sendMessage")
        assert "took too long" in apology.params["text"]
        assert delivered(stack, "sendPhoto") == []


async def test_identical_jobs_in_a_row_each_get_their_own_file(
    real_comfyui: RealComfyUI, settings, tmp_path, redis
):
    """Same photo, same preset, one worker prefetching the next job while ComfyUI runs the
    current one: each job's photo and output go under names of its own, so no job is handed
    another's (or a cached) file."""
    async with (
        running_stack(settings, tmp_path, comfyui_url=real_comfyui.url) as stack,
        ComfyUIClient(real_comfyui.url, "cache-test", timeout=5) as client,
    ):
        await stack.new_user(USER, credits=10)
        source = photo()
        jobs = [
            (await stack.backend.create_job(USER, "invert", [(source, "p.png")]))[0] for _ in "abc"
        ]
        stack.start_worker()
        files = []
        for job in jobs:
            job = await stack.settled(job.id, timeout=30)
            assert (job.status, job.attempts, job.delivery_status) == ("succeeded", 0, "delivered")
            result, _ = await stack.backend.job_output(job.id, 0)
            check_invert(rgb(source), rgb(result))
            entry = await client.history(workflow.prompt_id_for(job.id, 0))
            [image] = next(iter(entry["outputs"].values()))["images"]
            assert image["filename"].startswith(f"{job.id}-0_")
            files.append(image["filename"])
        assert len(set(files)) == 3
        assert len(delivered(stack, "sendPhoto")) == 3
        assert (await stack.backend.user(USER)).balance == START_BALANCE - 3 * PRICES["invert"]
