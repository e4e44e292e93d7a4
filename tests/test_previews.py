"""Live previews: a preset with ``previews = true`` gets a photo status message, the worker puts
ComfyUI's preview frames into it (editMessageMedia) within the shared edit budget while the job
runs and never after the result; a preset without previews keeps its text status message. The
bot polls the Telegram double, the backend is real, the worker runs in-process against the
ComfyUI double started with previews (as ComfyUI with ``--preview-method``)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from comfygram.bot.status import status_picture
from comfygram.presets import loader
from comfygram.worker import messages as worker_messages
from comfygram.worker.main import run_worker
from comfygram.worker.messages import LivePreview
from tests.bot_helpers import World, fast_chat_pace, polling_world  # noqa: F401
from tests.doubles.comfyui import ComfyUIDouble
from tests.doubles.telegram import Call

pytestmark = pytest.mark.usefixtures("fast_chat_pace")

USER = 7272
# The user's photo: a colour no preview of another job (or grey placeholder) would have.
COLOUR = (30, 160, 220)


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


def previews_preset(root: Path) -> Path:
    """The built-in invert preset as `glimpse`, asking for previews (model-free, so the double
    runs it; its ImageInvert previews its input as a sampler would)."""
    builtin = Path(loader.__file__).parent / "builtin" / "invert"
    target = root / "glimpse"
    shutil.copytree(builtin, target)
    toml = (target / "preset.toml").read_text()
    toml = toml.replace('slug = "invert"', 'slug = "glimpse"\npreviews = true')
    toml = toml.replace('en = "Negative"', 'en = "Glimpse"')
    (target / "preset.toml").write_text(toml)
    return root


def photo(size: tuple[int, int] = (300, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, COLOUR).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def colour_of(data: bytes) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        return image.convert("RGB").getpixel((image.width // 2, image.height // 2))


def near(a: tuple[int, ...], b: tuple[int, ...], slack: int = 12) -> bool:
    return all(abs(x - y) <= slack for x, y in zip(a, b, strict=True))


@contextlib.asynccontextmanager
async def worker(world: World, root: Path, **knobs: float) -> AsyncIterator[ComfyUIDouble]:
    async with ComfyUIDouble(root / "comfyui", previews=True) as comfyui:
        for name, value in knobs.items():
            setattr(comfyui, name, value)
        settings = world.settings.model_copy(
            update={"comfyui_url": comfyui.url, "worker_name": "w1"}
        )
        stop = asyncio.Event()
        task = asyncio.create_task(run_worker(settings, stop))
        try:
            yield comfyui
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)


async def order(world: World, slug: str) -> None:
    user = world.user(USER)
    await user.send_command("start")
    await world.reply(user, containing="Hi")
    await user.send_photo(photo())
    keyboard = await world.reply(user, containing="Nice photo")
    await user.press(keyboard.result, f"ps:{slug}")


async def delivered(world: World) -> None:
    for _ in range(400):
        jobs = await world.backend.jobs(USER)
        if jobs and all(j.delivery_status == "delivered" for j in jobs):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not delivered: {await world.backend.jobs(USER)}")


def calls_to(world: World, method: str, message_id: int) -> list[Call]:
    return [
        c
        for c in world.telegram.sent(method, chat_id=USER)
        if c.ok and c.params.get("message_id") == message_id
    ]


async def test_a_previews_preset_shows_frames_in_a_photo_status_message(
    settings, tmp_path, redis, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(worker_messages, "PREVIEW_INTERVAL_SECONDS", 0.5)
    presets = previews_preset(tmp_path / "presets")
    async with (
        polling_world(settings.model_copy(update={"presets_dir": presets})) as world,
        # Each node takes 1.5 s; ImageInvert previews its input at 0.75 s and 1.5 s.
        worker(world, tmp_path, execution_delay=1.5) as comfyui,
    ):
        started = time.monotonic()
        await order(world, "glimpse")
        await delivered(world)
        took = time.monotonic() - started

        photos = world.telegram.sent("sendPhoto", chat_id=USER)
        status, result = photos[0], photos[-1]
        assert len(photos) == 2 and status.ok and result.ok
        # The status message is a photo: the user's photo, small, the status as its caption.
        assert "Queued" in status.params["caption"]
        assert status.params["reply_markup"]  # the Cancel button
        assert near(colour_of(next(iter(status.files.values()))), COLOUR)
        assert not [c for c in world.telegram.sent("sendMessage", chat_id=USER) if "Queued" in
                    str(c.params.get("text"))]  # fmt: skip
        status_id = status.result["message_id"]

        frames = calls_to(world, "editMessageMedia", status_id)
        assert frames, "no preview shown"
        assert [kind for _, kind in comfyui.previews_sent] == [4, 4]  # with prompt_id
        for frame in frames:
            assert frame.params["media"]["type"] == "photo"
            assert "Processing" in frame.params["media"]["caption"]
            (image,) = frame.files.values()
            assert near(colour_of(image), COLOUR)  # this job's photo as ComfyUI previews it
            assert frame.answered_at is not None and frame.answered_at <= result.at
        # Progress is a caption edit of the photo, never a text edit.
        captions = calls_to(world, "editMessageCaption", status_id)
        # (the bot's queue refresh may edit it first: "Queued", then only the worker's progress)
        kinds = ["Processing" in c.params["caption"] for c in sorted(captions, key=lambda c: c.at)]
        assert kinds and kinds[-1] and kinds == sorted(kinds)
        assert all(c.params["caption"].startswith(("⏳ Queued", "⚙️ Processing")) for c in captions)
        assert not calls_to(world, "editMessageText", status_id)
        # Within the budget: one edit of the chat per telegram_edit_interval at most.
        edits = sorted(c.at for c in [*frames, *captions])
        assert len(edits) <= took / world.settings.telegram_edit_interval + 1
        # ... and never more frames than ComfyUI sent, none queued up: each went at once or not.
        assert len(frames) <= len(comfyui.previews_sent)

        # The status message is gone with the result, and nothing edits it afterwards.
        assert world.telegram.message(USER, status_id).deleted
        await asyncio.sleep(1.0)
        later = [
            c
            for method in ("editMessageMedia", "editMessageCaption", "editMessageText")
            for c in calls_to(world, method, status_id)
            if c.at > result.at
        ]
        assert not later


async def test_a_preset_without_previews_keeps_its_text_status_message(settings, tmp_path, redis):
    async with (
        polling_world(settings) as world,
        worker(world, tmp_path, execution_delay=1.0) as comfyui,
    ):
        await order(world, "invert")
        await delivered(world)
        assert comfyui.previews_sent  # ComfyUI sent frames: the worker did not show them
        (status,) = [
            c
            for c in world.telegram.sent("sendMessage", chat_id=USER)
            if "Queued" in str(c.params.get("text"))
        ]
        status_id = status.result["message_id"]
        assert len(world.telegram.sent("sendPhoto", chat_id=USER)) == 1  # the result only
        assert not world.telegram.sent("editMessageMedia", chat_id=USER)
        assert not world.telegram.sent("editMessageCaption", chat_id=USER)
        assert calls_to(world, "editMessageText", status_id)  # progress, as before


async def test_cancelling_a_queued_previews_job_edits_the_photos_caption(settings, tmp_path, redis):
    presets = previews_preset(tmp_path / "presets")
    async with polling_world(settings.model_copy(update={"presets_dir": presets})) as world:
        await order(world, "glimpse")  # no worker: it stays queued
        user = world.user(USER)
        status = await world.reply(user, method="sendPhoto")
        await user.press(status.result, next(
            d for d in world.telegram.message(USER, status.result["message_id"]).callback_data
        ))  # fmt: skip
        await world.reply(user, containing="back. Balance")
        await world.settle()
        message = world.telegram.message(USER, status.result["message_id"])
        assert message.caption is not None and "Cancelled" in message.caption
        assert (await world.backend.jobs(USER))[0].status == "cancelled"


# -- LivePreview's pace, against a stand-in for the Telegram side ------------------------------


class Shown:
    """Records what LivePreview would put into the status message, and when; answers with
    ``outcomes`` in turn (True shown, False skipped, None gone), then True."""

    def __init__(self, delay: float = 0.0, outcomes: list[bool | None] | None = None) -> None:
        self.frames: list[tuple[float, bytes, int]] = []
        self.tries: list[bytes] = []
        self.delay = delay
        self.outcomes = list(outcomes or [])

    async def show_preview(self, job, preset, image: bytes, percent: int) -> bool | None:
        await asyncio.sleep(self.delay)  # an upload in flight
        self.tries.append(image)
        outcome = self.outcomes.pop(0) if self.outcomes else True
        if outcome:
            self.frames.append((time.monotonic(), image, percent))
        return outcome


async def test_the_newest_frame_wins_and_at_most_one_per_interval():
    shown = Shown()
    live = LivePreview(shown, job=None, preset=None, interval=0.3)  # type: ignore[arg-type]
    started = time.monotonic()
    for n in range(10):  # ten frames in 0.1 s
        live.percent = n * 10
        await live.offer(bytes([n]))
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    await live.close()
    # The first at once; of the nine that came within the interval, only the newest, later.
    assert [(image, percent) for _, image, percent in shown.frames] == [(b"\x00", 0), (b"\x09", 90)]
    assert shown.frames[0][0] - started < 0.1
    assert shown.frames[1][0] - shown.frames[0][0] >= 0.29


async def test_closing_waits_for_the_edit_in_flight_and_ends_the_rest():
    shown = Shown(delay=0.2)
    live = LivePreview(shown, job=None, preset=None, interval=0.1)  # type: ignore[arg-type]
    await live.offer(b"a")
    await asyncio.sleep(0.05)  # "a" is being sent
    await live.offer(b"b")  # waits for its turn
    await live.close()
    closed = time.monotonic()
    await live.offer(b"c")  # after close: ignored
    await asyncio.sleep(0.3)
    assert [image for _, image, _ in shown.frames] == [b"a"]
    assert shown.frames[0][0] <= closed


async def test_a_skipped_frame_is_tried_again_unless_a_newer_one_came():
    shown = Shown(outcomes=[False, False])
    live = LivePreview(shown, job=None, preset=None, interval=0.2)  # type: ignore[arg-type]
    await live.offer(b"a")  # skipped: no edit slot
    await asyncio.sleep(0.1)
    await live.offer(b"b")  # newer than the skipped one: it goes instead, skipped too
    await asyncio.sleep(0.5)  # ... and is tried again, shown
    await live.close()
    assert shown.tries == [b"a", b"b", b"b"]
    assert [image for _, image, _ in shown.frames] == [b"b"]


async def test_a_message_that_cannot_show_previews_ends_them():
    shown = Shown(outcomes=[None])
    live = LivePreview(shown, job=None, preset=None, interval=0.05)  # type: ignore[arg-type]
    await live.offer(b"a")  # the message is gone (or not a photo)
    await asyncio.sleep(0.1)
    await live.offer(b"b")
    await asyncio.sleep(0.1)
    await live.close()
    assert shown.tries == [b"a"]


def test_the_status_picture_is_the_photo_made_small():
    picture = status_picture(photo((2000, 1000)))
    with Image.open(io.BytesIO(picture)) as image:
        assert image.format == "JPEG" and image.size == (512, 256)
        assert near(image.getpixel((256, 128)), COLOUR)
    with Image.open(io.BytesIO(status_picture(b"not an image"))) as image:
        assert image.format == "JPEG"  # grey, but a photo all the same
