"""The model-free rich built-in presets end to end on a real ComfyUI 0.3.64: the real backend
(uvicorn on loopback), real Redis, an in-process worker and the Telegram double. Each job is
created with its photos and options as the bot would, and what reaches Telegram is checked
itself: ``pair`` one photo as wide as both photos; ``variants`` with 4 chosen one album of four
different images and its buttons after it; ``fade`` with its long choice a video that decodes
as H.264 with the chosen length's frame count and duration, with its thumbnail.
"""

from __future__ import annotations

import io
from itertools import combinations

import av
import pytest
from PIL import Image, ImageChops

from comfygram.presets import load_presets
from tests.real_comfyui import RealComfyUI, real_comfyui
from tests.stack import Stack, running_stack

__all__ = ["real_comfyui"]  # the fixture, imported for pytest
pytestmark = pytest.mark.real_comfyui

USER = 5252
START_BALANCE = 3 + 20  # signup bonus and the test's grant
PRESETS = {p.slug: p for p in load_presets()}
RED, BLUE = (220, 40, 30), (30, 60, 210)


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@pytest.fixture
async def stack(real_comfyui: RealComfyUI, settings, tmp_path, redis):
    async with running_stack(settings, tmp_path, comfyui_url=real_comfyui.url) as running:
        await running.new_user(USER, credits=20)
        running.start_worker()
        yield running


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", (width, height), color)
    image.paste((240, 240, 240), (0, 0, width // 4, height // 4))  # not symmetric
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def delivered(stack: Stack, method: str) -> list:
    return [c for c in stack.telegram.sent(method, chat_id=USER) if c.ok]


async def run_job(stack: Stack, preset: str, photos: list[bytes], options: dict[str, str]):
    files = [(data, f"photo{n}.png") for n, data in enumerate(photos)]
    job, _ = await stack.backend.create_job(USER, preset, files, options=options)
    job = await stack.settled(job.id, timeout=50)
    assert (job.status, job.delivery_status, job.attempts) == ("succeeded", "delivered", 0), (
        job.error
    )
    return job


def near(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


async def test_pair_is_one_photo_as_wide_as_both(stack: Stack):
    job = await run_job(stack, "pair", [png(384, 512, RED), png(256, 512, BLUE)], {})
    (output,) = job.outputs
    assert (output.kind, output.width, output.height) == ("image", 384 + 256, 512)
    (sent,) = delivered(stack, "sendPhoto")
    with Image.open(io.BytesIO(sent.files["photo"])) as photo:
        assert photo.format == "JPEG" and photo.size == (640, 512)
        rgb = photo.convert("RGB")
        assert near(rgb.getpixel((300, 400)), RED) and near(rgb.getpixel((600, 400)), BLUE)
    assert sent.params["reply_markup"] is not None
    price = PRESETS["pair"].contract.price(PRESETS["pair"].price, {})
    assert (await stack.backend.user(USER)).balance == START_BALANCE - price


async def test_variants_with_4_chosen_is_one_album_of_4_different_images(stack: Stack):
    job = await run_job(stack, "variants", [png(96, 64, RED)], {"count": "4"})
    assert job.options == {"count": "4"} and len(job.outputs) == 4
    (album,) = delivered(stack, "sendMediaGroup")
    photos = [m.photo for m in stack.telegram.messages(USER) if m.photo is not None]
    assert len(photos) == 4
    pictures = [Image.open(io.BytesIO(p)).convert("RGB") for p in photos]
    for a, b in combinations(pictures, 2):
        assert a.size != b.size or ImageChops.difference(a, b).getbbox() is not None
    (buttons,) = delivered(stack, "sendMessage")
    assert buttons.at >= album.at and buttons.params["reply_markup"] is not None
    preset = PRESETS["variants"]
    assert job.price == preset.contract.price(preset.price, {"count": "4"})


async def test_fade_is_a_video_of_the_chosen_length(stack: Stack):
    preset = PRESETS["fade"]
    option = preset.contract.options[0]
    longest = option.choices[-1]
    frames = next(s.value for s in longest.sets if s.input == "amount")
    job = await run_job(stack, "fade", [png(128, 96, RED)], {option.id: longest.id})
    (output,) = job.outputs
    assert output.kind == "video" and output.frames == frames
    (sent,) = delivered(stack, "sendVideo")
    with av.open(io.BytesIO(sent.files["video"])) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(stream))
        assert stream.codec_context.name == "h264"
        size = (stream.width, stream.height)
    duration = sum(float(f.duration * f.time_base) for f in decoded)
    fps = 24  # the preset's CreateVideo rate
    assert len(decoded) == frames and duration == pytest.approx(frames / fps, abs=0.05)
    params = sent.params
    assert (params["width"], params["height"]) == size
    assert params["duration"] == round(frames / fps) and params["supports_streaming"] is True
    with Image.open(io.BytesIO(sent.files["thumbnail"])) as thumbnail:
        assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 320
    # The first frame is the photo and the last its negative.
    first, last = decoded[0].to_image(), decoded[-1].to_image()
    centre = (size[0] // 2, size[1] // 2)
    assert near(first.getpixel(centre), RED, 20)
    assert near(last.getpixel(centre), tuple(255 - v for v in RED), 20)
