"""The model-free rich presets (pair, variants, fade) on a real ComfyUI 0.3.64.

Each test loads the built-in preset, fills its workflow through its contract (photos, chosen
options, output prefix) as the worker does, uploads real photos, runs it and checks the output
files themselves: the pair is as wide as both photos at one height, the variants come as
distinct images in the number chosen, the fade is an H.264 MP4 whose frame count, duration and
colours match the length chosen.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import av
import pytest
from PIL import Image, ImageChops, ImageStat

from comfygram.comfyui import ComfyUIClient
from comfygram.presets import MediaKind, Preset, load_presets
from tests import images
from tests.real_comfyui import RealComfyUI, new_prompt_id, real_comfyui

__all__ = ["real_comfyui"]  # the fixture, imported for pytest
pytestmark = pytest.mark.real_comfyui

PRESETS = {p.slug: p for p in load_presets()}
RED, BLUE = (220, 40, 30), (30, 60, 210)


@pytest.fixture
async def client(real_comfyui: RealComfyUI) -> AsyncIterator[ComfyUIClient]:
    async with ComfyUIClient(real_comfyui.url, f"rich-{uuid.uuid4().hex}", timeout=30) as c:
        yield c


async def run(
    client: ComfyUIClient, preset: Preset, photos: list[bytes], options: Mapping[str, str]
) -> list[bytes]:
    """Upload ``photos`` into the preset's slots, run it with ``options``, return each output
    file's bytes in ComfyUI's order."""
    chosen = preset.contract.resolve(photos=len(photos), prompt=None, options=options)
    tag = uuid.uuid4().hex
    names = [
        await client.upload_image(data, f"rich-{tag}-{slot.name}.png")
        for slot, data in zip(preset.contract.photos, photos, strict=True)
    ]
    built = preset.contract.apply(
        preset.workflow,
        photos=names,
        prompt=None,
        chosen=chosen,
        output_prefix=f"comfygram/test-{preset.slug}-{tag}",
    )
    prompt_id = new_prompt_id()
    await client.submit(built, prompt_id)
    outputs = await client.wait(prompt_id, deadline=time.monotonic() + preset.timeout_seconds)
    return [await client.download(output) for output in outputs]


def colourful_photo(width: int, height: int) -> bytes:
    """A PNG with a different picture in each channel: red grows to the right, blue downwards,
    green is noise (so a tint, a grey tone and a mirror image each change it)."""
    size = (width, height)
    red = Image.linear_gradient("L").rotate(90)
    blue = Image.linear_gradient("L")
    channels = (red.resize(size), Image.effect_noise(size, 60), blue.resize(size))
    buffer = io.BytesIO()
    Image.merge("RGB", channels).save(buffer, "PNG")
    return buffer.getvalue()


def picture(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel value, 0..255."""
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def mp4_facts(data: bytes, probe_frames: list[int]) -> dict[str, Any]:
    """Codec, frame count, rate, duration and size of an MP4, and the mean RGB colour of the
    decoded frames ``probe_frames``."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_image() for frame in container.decode(video=0)]
        return {
            "codec": stream.codec_context.name,
            "frames": stream.frames,
            "decoded": len(frames),
            "fps": float(stream.average_rate or 0),
            "duration": (container.duration or 0) / 1e6,
            "width": stream.width,
            "height": stream.height,
            "colours": {k: ImageStat.Stat(frames[k]).mean for k in probe_frames},
        }


async def test_pair_puts_both_photos_side_by_side_at_one_height(client: ComfyUIClient):
    preset = PRESETS["pair"]
    assert [slot.name for slot in preset.contract.photos] == ["first", "second"]
    assert preset.contract.output.kind is MediaKind.IMAGE
    assert preset.contract.price(preset.price, {}) == 2
    [result] = await run(
        client, preset, [images.png(300, 200, RED), images.png(200, 400, BLUE)], {}
    )
    pair = picture(result)
    # The first photo is scaled to 512 px high (300x200 -> 768x512), the second to the same
    # height (200x400 -> 256x512), and nothing else: no spacing, no padding.
    assert pair.size == (768 + 256, 512)
    left, right = pair.getpixel((384, 256)), pair.getpixel((768 + 128, 256))
    assert all(abs(a - b) <= 3 for a, b in zip(left, RED, strict=True)), left
    assert all(abs(a - b) <= 3 for a, b in zip(right, BLUE, strict=True)), right
    # the seam: the last column is the first photo's, the next the second's
    assert pair.getpixel((767, 256))[0] > 200 and pair.getpixel((768, 256))[2] > 200


async def test_variants_give_as_many_distinct_images_as_chosen(client: ComfyUIClient):
    preset = PRESETS["variants"]
    assert preset.contract.output.kind is MediaKind.IMAGE
    assert [preset.contract.price(preset.price, {"count": c}) for c in ("2", "4")] == [2, 4]
    photo = colourful_photo(640, 480)
    original = picture(photo).resize((512, 384))
    albums = {}
    for count in ("2", "4"):
        albums[count] = [picture(f) for f in await run(client, preset, [photo], {"count": count})]
        assert len(albums[count]) == int(count)
        assert all(v.size == (512, 384) for v in albums[count])  # longest side 512
        for i, variant in enumerate(albums[count]):
            assert mean_difference(variant, original) > 5, f"variant {i} is the photo itself"
            for j, other in enumerate(albums[count][:i]):
                assert mean_difference(variant, other) > 5, f"variants {j} and {i} look alike"
    # 2 variants are the first two of the 4 (warm and cool), not other pictures
    for two, four in zip(albums["2"], albums["4"], strict=False):
        assert mean_difference(two, four) < 0.5


@pytest.mark.parametrize(("length", "frames", "price"), [("2s", 48, 2), ("4s", 96, 3)])
async def test_fade_is_an_h264_mp4_of_the_chosen_length(
    client: ComfyUIClient, length: str, frames: int, price: int
):
    preset = PRESETS["fade"]
    assert preset.contract.output.kind is MediaKind.VIDEO
    assert preset.contract.price(preset.price, {"length": length}) == price
    [video] = await run(client, preset, [images.png(300, 200, RED)], {"length": length})
    assert video[4:8] == b"ftyp"  # an MP4 container
    middle = (frames - 1) // 2
    facts = mp4_facts(video, [0, middle, frames - 1])
    assert facts["codec"] == "h264"
    assert facts["frames"] == facts["decoded"] == frames
    assert facts["fps"] == 24.0
    assert facts["duration"] == pytest.approx(frames / 24, abs=0.05)
    # 300x200 -> longest side 256 (256x171) -> doubled: even sides, as H.264 needs
    assert (facts["width"], facts["height"]) == (512, 342)
    # from the photo to its negative, linearly
    negative = [255 - c for c in RED]
    for k, expected in (
        (0, RED),
        (
            middle,
            [
                (a * (frames - 1 - middle) + b * middle) / (frames - 1)
                for a, b in zip(RED, negative, strict=True)
            ],
        ),
        (frames - 1, negative),
    ):
        colour = facts["colours"][k]
        assert all(abs(a - b) <= 6 for a, b in zip(colour, expected, strict=True)), (k, colour)
