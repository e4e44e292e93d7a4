"""Rich presets through the worker end to end: the real backend over HTTP, real Redis, the ComfyUI
and Telegram doubles. Presets with several photos and options fill every slot and choice; an
album goes as one sendMediaGroup and its buttons after it, a video as sendVideo with its facts
and a thumbnail, an animated WebP as an H.264 MP4 sendAnimation; a result over the upload limit
is encoded smaller, or the job fails with one refund and one apology. A worker killed (SIGKILL)
between the downloads of an album's files, or in the middle of its delivery, still leaves the
user exactly one album."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import av
import pytest
from PIL import Image, ImageChops

from comfygram.api import BackendClient, BackendUnavailable
from comfygram.worker import encode
from comfygram.worker.messages import UserMessages
from tests import images
from tests.stack import Stack, eventually, running_stack
from tests.test_worker_crash import _gpu_holder, _workers

USER = 7373
START_BALANCE = 3 + 20  # the signup bonus and the test's grant


def node(kind: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": kind, "inputs": inputs}


def write_preset(root: Path, slug: str, manifest: str, workflow: dict[str, Any]) -> None:
    folder = root / slug
    folder.mkdir(parents=True)
    (folder / "preset.toml").write_text(f'slug = "{slug}"\n{manifest}')
    (folder / "workflow.json").write_text(json.dumps(workflow))


COMMON = """
enabled = true
timeout_seconds = 30
send_document = false
[title]
en = "{title}"
ru = "{title}"
[description]
en = "A test preset."
ru = "A test preset."
"""

# Four different images from one photo: as it is, negative, upside down, and both.
ALBUM = {
    "1": node("LoadImage", image="x.png"),
    "2": node("ImageInvert", image=["1", 0]),
    "3": node("ImageFlip", image=["1", 0], flip_method="x-axis: vertically"),
    "4": node("ImageFlip", image=["2", 0], flip_method="x-axis: vertically"),
    "5": node("ImageBatch", image1=["1", 0], image2=["2", 0]),
    "6": node("ImageBatch", image1=["3", 0], image2=["4", 0]),
    "7": node("ImageBatch", image1=["5", 0], image2=["6", 0]),
    "8": node("SaveImage", images=["7", 0], filename_prefix="album"),
}

# The photo and its negative, repeated: 2 frames x amount, at 6 fps.
FRAMES = {
    "1": node("LoadImage", image="x.png"),
    "2": node("ImageInvert", image=["1", 0]),
    "3": node("ImageBatch", image1=["1", 0], image2=["2", 0]),
    "4": node("RepeatImageBatch", image=["3", 0], amount=3),
}
CLIP = {
    **FRAMES,
    "5": node("CreateVideo", images=["4", 0], fps=6.0),
    "6": node("SaveVideo", video=["5", 0], filename_prefix="clip", format="mp4", codec="h264"),
}
LOOP = {
    **FRAMES,
    "5": node(
        "SaveAnimatedWEBP",
        images=["4", 0],
        filename_prefix="loop",
        fps=4.0,
        lossless=False,
        quality=80,
        method="default",
    ),
}
PAIR = {
    "1": node("LoadImage", image="x.png"),
    "2": node("LoadImage", image="x.png"),
    "3": node(
        "ImageStitch",
        image1=["1", 0],
        image2=["2", 0],
        direction="right",
        match_image_size=True,
        spacing_width=0,
        spacing_color="white",
    ),
    "4": node("SaveImage", images=["3", 0], filename_prefix="pair"),
}

MANY = {
    "1": node("LoadImage", image="x.png"),
    "2": node("RepeatImageBatch", image=["1", 0], amount=12),
    "3": node("SaveImage", images=["2", 0], filename_prefix="many"),
}
COUNT_OPTION = """
[[options]]
id = "count"
title = { en = "Count", ru = "Count" }
default = "12"
  [[options.choices]]
  id = "12"
  title = { en = "12", ru = "12" }
  sets = [{ node = "2", input = "amount", value = 12 }]
  [[options.choices]]
  id = "21"
  title = { en = "21", ru = "21" }
  sets = [{ node = "2", input = "amount", value = 21 }]
"""

LENGTH_OPTION = """
[[options]]
id = "length"
title = { en = "Length", ru = "Length" }
default = "short"
  [[options.choices]]
  id = "short"
  title = { en = "Short", ru = "Short" }
  sets = [{ node = "4", input = "amount", value = 1 }]
  [[options.choices]]
  id = "long"
  title = { en = "Long", ru = "Long" }
  sets = [{ node = "4", input = "amount", value = 6 }]
  price_add = 2
"""


ONE_PHOTO = '[[inputs]]\nname = "photo"\nnode = "1"\n'
TWO_PHOTOS = (
    '[[inputs]]\nname = "left"\nnode = "1"\ntitle = { en = "Left", ru = "Left" }\n'
    '[[inputs]]\nname = "right"\nnode = "2"\ntitle = { en = "Right", ru = "Right" }\n'
)


def manifest(price: int, title: str, output: str, inputs: str = ONE_PHOTO, extra: str = "") -> str:
    return (
        f"price = {price}\n"
        + COMMON.format(title=title)
        + inputs
        + extra
        + (f'[output]\nnode = "{output}"\n')
    )


@pytest.fixture
def presets_dir(tmp_path: Path) -> Path:
    root = tmp_path / "presets"
    write_preset(root, "album4", manifest(2, "Album", "8"), ALBUM)
    write_preset(root, "clip", manifest(1, "Clip", "6", extra=LENGTH_OPTION), CLIP)
    write_preset(root, "loop", manifest(1, "Loop", "5", extra=LENGTH_OPTION), LOOP)
    write_preset(root, "pair2", manifest(2, "Pair", "4", inputs=TWO_PHOTOS), PAIR)
    write_preset(root, "many", manifest(1, "Many", "3", extra=COUNT_OPTION), MANY)
    return root


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@pytest.fixture
async def stack(settings, tmp_path, redis, presets_dir):
    async with running_stack(settings, tmp_path, presets_dir=presets_dir) as running:
        await running.new_user(USER, credits=20)
        yield running


def photo(width: int = 64, height: int = 48) -> bytes:
    """Not symmetric, so a flip differs from the original."""
    image = Image.new("RGB", (width, height), (200, 80, 40))
    image.paste((20, 160, 90), (0, 0, width // 3, height // 2))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


async def create(
    stack: Stack,
    preset: str,
    photos: list[bytes] | None = None,
    options: dict[str, str] | None = None,
) -> str:
    files = [(p, f"p{n}.png") for n, p in enumerate(photos or [photo()])]
    job, _ = await stack.backend.create_job(USER, preset, files, options=options)
    return job.id


async def balance(stack: Stack) -> int:
    return (await stack.backend.user(USER)).balance


def ok(stack: Stack, method: str) -> list:
    return [c for c in stack.telegram.sent(method, chat_id=USER) if c.ok]


def decoded(data: bytes) -> dict[str, Any]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return {
            "codec": stream.codec_context.name,
            "size": (stream.width, stream.height),
            "frames": len(frames),
            "duration": round(sum(float(f.duration * f.time_base) for f in frames), 3),
        }


async def test_an_album_of_4_is_one_media_group_then_one_message_with_the_buttons(stack: Stack):
    job_id = await create(stack, "album4")
    status_id = await stack.status_message(USER, "Queued…")
    await stack.backend.record_status_message(job_id, USER, status_id)
    stack.start_worker()
    job = await stack.settled(job_id)
    assert (job.status, job.delivery_status, job.attempts) == ("succeeded", "delivered", 0)
    assert [o.kind for o in job.outputs] == ["image"] * 4
    (album,) = ok(stack, "sendMediaGroup")
    assert stack.telegram.sent("sendPhoto") == []
    messages = [m for m in stack.telegram.messages(USER) if m.from_bot and not m.deleted]
    photos = [m for m in messages if m.photo is not None]
    assert len(photos) == 4 and len({m.photo for m in photos}) == 4  # four different images
    assert all(Image.open(io.BytesIO(m.photo)).format == "JPEG" for m in photos)
    assert photos[0].caption == "✨ Album" and all(m.caption is None for m in photos[1:])
    assert all(m.reply_markup is None for m in photos)  # albums take no keyboard
    # The stored outputs are the originals, in ComfyUI's order (original, negative, flips).
    stored = [await stack.backend.job_output(job_id, n) for n in range(4)]
    assert [mime for _, mime in stored] == ["image/png"] * 4
    first = Image.open(io.BytesIO(stored[0][0])).convert("RGB")
    negative = Image.open(io.BytesIO(stored[1][0])).convert("RGB")
    expected = ImageChops.invert(first).getpixel((5, 5))
    # ComfyUI computes 1 - x in float32 and truncates: 255 - x, or one less.
    assert all(0 <= e - g <= 1 for e, g in zip(expected, negative.getpixel((5, 5)), strict=True))
    queued, buttons = ok(stack, "sendMessage")  # the status message, then the buttons
    assert queued.params["text"] == "Queued…" and buttons.at >= album.at
    keyboard = buttons.params["reply_markup"]["inline_keyboard"]
    assert [b["callback_data"] for row in keyboard for b in row] == [f"again:{job_id}", "buy"]
    assert "Album" in buttons.params["text"]
    deleted = stack.telegram.sent("deleteMessage", chat_id=USER)
    assert [d.params["message_id"] for d in deleted] == [status_id]
    assert await balance(stack) == START_BALANCE - 2


async def test_two_photos_fill_their_slots_in_order(stack: Stack):
    left, right = photo(64, 48), images.png(32, 48, (10, 20, 250))
    job_id = await create(stack, "pair2", [left, right])
    stack.start_worker()
    job = await stack.settled(job_id)
    assert job.status == "succeeded"
    uploaded = sorted(p.name for p in stack.comfyui.dirs["input"].iterdir())
    assert uploaded == [f"comfygram-{job_id}-0-1.png", f"comfygram-{job_id}-0.png"]
    result, _ = await stack.backend.job_output(job_id, 0)
    with Image.open(io.BytesIO(result)) as stitched:
        assert stitched.size == (64 + 32, 48)
        assert stitched.convert("RGB").getpixel((80, 10)) == (10, 20, 250)  # right is right
    (sent,) = ok(stack, "sendPhoto")
    assert sent.params["reply_markup"] is not None


async def test_a_video_goes_with_its_size_length_streaming_and_a_thumbnail(stack: Stack):
    job_id = await create(stack, "clip", options={"length": "long"})
    assert await balance(stack) == START_BALANCE - 3  # 1 + the long choice's 2
    stack.start_worker()
    job = await stack.settled(job_id)
    assert (job.status, job.delivery_status, job.options) == (
        "succeeded",
        "delivered",
        {"length": "long"},
    )
    (output,) = job.outputs
    assert (output.kind, output.mime, output.frames) == ("video", "video/mp4", 12)
    (sent,) = ok(stack, "sendVideo")
    params = sent.params
    assert (params["width"], params["height"], params["duration"]) == (64, 48, 2)
    assert params["supports_streaming"] is True
    assert params["reply_markup"] is not None and params["caption"] == "✨ Clip"
    facts = decoded(sent.files["video"])
    assert facts == {"codec": "h264", "size": (64, 48), "frames": 12, "duration": 2.0}
    thumbnail = sent.files["thumbnail"]
    with Image.open(io.BytesIO(thumbnail)) as opened:
        assert opened.format == "JPEG" and max(opened.size) <= 320
    assert len(thumbnail) < 200_000
    (message,) = [m for m in stack.telegram.messages(USER) if m.video is not None]
    assert message.thumbnail == thumbnail  # the double kept it: Telegram would show it


async def test_an_animated_webp_goes_as_an_h264_mp4_animation(stack: Stack):
    job_id = await create(stack, "loop", options={"length": "short"})
    stack.start_worker()
    job = await stack.settled(job_id)
    assert (job.status, job.delivery_status) == ("succeeded", "delivered")
    (output,) = job.outputs
    assert (output.kind, output.mime) == ("animation", "image/webp")
    (sent,) = ok(stack, "sendAnimation")
    assert stack.telegram.sent("sendDocument") == []
    facts = decoded(sent.files["animation"])
    # 2 frames at 4 fps (250 ms each, as SaveAnimatedWEBP writes them), kept.
    assert facts == {"codec": "h264", "size": (64, 48), "frames": 2, "duration": 0.5}
    (message,) = [m for m in stack.telegram.messages(USER) if m.animation is not None]
    assert message.media["animation"]["mime_type"] == "video/mp4"  # Telegram animates it
    assert sent.params["reply_markup"] is not None


async def test_a_video_over_the_upload_limit_is_sent_smaller(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    noisy = Image.effect_noise((256, 192), 90).convert("RGB")
    buffer = io.BytesIO()
    noisy.save(buffer, "PNG")
    job_id = await create(stack, "clip", [buffer.getvalue()], options={"length": "long"})
    stack.start_worker()
    job = await stack.settled(job_id)
    stored, _ = await stack.backend.job_output(job_id, 0)
    (sent,) = ok(stack, "sendVideo")
    assert sent.files["video"] == stored  # under the limit: the file itself
    # The same job's video again, with a limit it does not fit: encoded smaller, same timing.
    monkeypatch.setattr(encode, "UPLOAD_MAX_BYTES", len(stored) // 2)
    await stack.stop_worker()
    limit = len(stored) // 2
    second = await create(stack, "clip", [buffer.getvalue()], options={"length": "long"})
    stack.start_worker("w2")
    await stack.settled(second)
    smaller = ok(stack, "sendVideo")[-1].files["video"]
    assert len(smaller) <= limit < len(stored)
    assert decoded(smaller)["frames"] == 12 and decoded(smaller)["duration"] == 2.0
    assert job.status == "succeeded"


async def test_a_result_that_cannot_fit_fails_with_one_refund_and_one_apology(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(encode, "UPLOAD_MAX_BYTES", 500)  # nothing fits in 500 bytes
    job_id = await create(stack, "clip", options={"length": "long"})
    stack.start_worker()
    job = await stack.settled(job_id)
    assert job.status == "failed" and job.error.startswith("too_large:")
    assert job.attempts == 1  # one run, not retried: no retry can help
    assert await balance(stack) == START_BALANCE  # refunded once
    assert ok(stack, "sendVideo") == []
    (apology,) = ok(stack, "sendMessage")
    assert "too large to send" in apology.params["text"]
    assert len(stack.comfyui.prompts_received) == 1


async def test_more_than_10_images_go_as_even_albums_then_the_buttons(stack: Stack):
    job_id = await create(stack, "many", options={"count": "12"})
    stack.start_worker()
    job = await stack.settled(job_id)
    assert (job.status, job.delivery_status, len(job.outputs)) == ("succeeded", "delivered", 12)
    albums = ok(stack, "sendMediaGroup")
    assert [len(a.files) for a in albums] == [6, 6]  # never 10 and a lone 2
    (buttons,) = ok(stack, "sendMessage")
    assert buttons.at >= albums[-1].at and buttons.params["reply_markup"] is not None


async def test_more_outputs_than_the_backend_takes_fail_with_one_refund(stack: Stack):
    job_id = await create(stack, "many", options={"count": "21"})
    stack.start_worker()
    job = await stack.settled(job_id)
    assert job.status == "failed" and job.error.startswith("refused:")
    assert "21 files, over the backend's limit of 20" in job.error
    assert job.outputs == [] and await balance(stack) == START_BALANCE
    assert ok(stack, "sendMediaGroup") == []
    (apology,) = ok(stack, "sendMessage")
    assert "could not be saved" in apology.params["text"]


@pytest.mark.parametrize("cached", [True, False], ids=["from the Redis cache", "from the backend"])
async def test_a_video_recorded_but_not_sent_is_sent_once_from_the_stored_output(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, cached: bool
):
    """The answer to "succeeded, and the message is mine" is lost (the worker marks it
    succeeded on its own), then the finisher dies before claiming and sending: after its lease
    the job is taken up again and the video rendered from what was stored. (A preset of stills
    stores, succeeds and claims in one step, so it never leaves a job succeeded and unclaimed.)"""
    real = UserMessages.deliver_result
    real_status = BackendClient.set_status
    calls = 0

    async def answer_lost(self, job_id, status, **kwargs):
        if kwargs.get("deliver"):
            raise BackendUnavailable("the answer was lost")
        return await real_status(self, job_id, status, **kwargs)

    async def dies_once(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug nobody foresaw")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(BackendClient, "set_status", answer_lost)
    monkeypatch.setattr(UserMessages, "deliver_result", dies_once)
    job_id = await create(stack, "clip")
    stack.start_worker(result_cache_seconds=3600 if cached else 0)
    job = await stack.settled(job_id, timeout=30)
    assert (job.status, job.delivery_status, calls) == ("succeeded", "delivered", 2)
    (video,) = ok(stack, "sendVideo")
    assert decoded(video.files["video"])["frames"] == job.outputs[0].frames
    assert len(stack.comfyui.prompts_received) == 1  # not run again


# -- a worker killed (SIGKILL) in the middle of a multi-output job ------------------------------


async def _killed_and_taken_over(stack: Stack, arrange, reached, restore) -> str:
    """Two worker processes share the ComfyUI; the one holding the GPU is killed once
    ``reached(job_id)``; the other must finish the job. Returns the job id."""
    processes = await _workers(stack, "a", "b")
    arrange()
    job_id = await create(stack, "album4")
    await eventually(lambda: reached(job_id), timeout=30)
    stack.kill(processes[await _gpu_holder(stack)])
    restore()
    job = await stack.settled(job_id, timeout=40)
    assert (job.status, job.attempts) == ("succeeded", 0)
    assert len(job.outputs) == 4
    assert await balance(stack) == START_BALANCE - 2  # charged once, never refunded
    assert len(stack.comfyui.prompts_received) == 1  # re-attached, not run again
    assert len(ok(stack, "sendMediaGroup")) == 1  # the album exactly once
    return job_id


async def test_killed_while_an_album_is_downloaded_delivers_it_once(stack: Stack):
    def arrange() -> None:
        stack.comfyui.http_delay = 0.5  # every HTTP answer (the history, each /view) is slow

    async def finished_not_stored(job_id: str) -> bool:
        done = any(entry.get("outputs") for entry in stack.comfyui.history.values())
        return done and not (await stack.backend.job(job_id)).outputs

    def restore() -> None:
        stack.comfyui.http_delay = 0.0

    job_id = await _killed_and_taken_over(stack, arrange, finished_not_stored, restore)
    job = await stack.backend.job(job_id)
    assert job.delivery_status == "delivered"
    assert len(ok(stack, "sendMessage")) == 1


async def test_killed_between_the_album_and_its_buttons_sends_neither_again(stack: Stack):
    def arrange() -> None:
        stack.telegram.fail("sendMessage", 500, "Internal Server Error", times=1000)

    async def album_sent(_job_id: str) -> bool:
        return bool(ok(stack, "sendMediaGroup"))

    def restore() -> None:
        stack.telegram._faults.clear()  # Telegram is healthy again

    job_id = await _killed_and_taken_over(stack, arrange, album_sent, restore)
    job = await stack.backend.job(job_id)
    # It may have arrived: recorded as not delivered rather than sent a second time.
    assert job.delivery_status == "failed"
    assert ok(stack, "sendMessage") == []
