"""What an uploaded photo may be: still images only, damaged files refused cleanly, and the
cheap refusals (account, preset, balance) answered before any pixel is decoded."""

from __future__ import annotations

import contextlib
import io
import random

import httpx
import pytest
from PIL import Image

from comfygram.images import (
    MAX_PIXEL_FRAMES,
    ImageRejected,
    check_pixel_frames,
    inspect_image,
    prepare_input,
    read_header,
)
from tests import images
from tests.helpers import balance, create_job, grant, register

MAX_PIXELS = 20_000_000


def frames_of(data: bytes) -> tuple[str, int, bool]:
    with Image.open(io.BytesIO(data)) as image:
        return image.format, getattr(image, "n_frames", 1), getattr(image, "is_animated", False)


def color_of(data: bytes) -> tuple[int, ...]:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").getpixel((5, 5))


# -- animated inputs reach ComfyUI as one still frame ---------------------------------------


@pytest.mark.parametrize(
    ("fmt", "stored_as", "mime"),
    [("PNG", "PNG", "image/png"), ("WEBP", "PNG", "image/png"), ("MPO", "JPEG", "image/jpeg")],
)
async def test_an_animated_input_is_stored_as_its_first_frame(
    api: httpx.AsyncClient, fmt: str, stored_as: str, mime: str
) -> None:
    """ComfyUI's LoadImage loads every frame into one batch: only the first may reach it."""
    await register(api)
    upload = images.animated(fmt, frames=4)
    assert frames_of(upload)[1] == 4
    response = await create_job(api, image=upload)
    assert response.status_code == 201, response.text

    stored = (await api.get(f"/api/jobs/{response.json()['id']}/input")).content
    assert frames_of(stored) == (stored_as, 1, False)
    assert stored != upload
    red = color_of(stored)
    assert red[0] > 150 and red[1] < 80 and red[2] < 80, red  # frame 0 is red
    assert (await api.get(f"/api/jobs/{response.json()['id']}/input")).headers[
        "content-type"
    ] == mime


async def test_a_still_input_is_stored_unchanged(api: httpx.AsyncClient) -> None:
    await register(api)
    photo = images.jpeg(120, 80)
    response = await create_job(api, image=photo)
    assert (await api.get(f"/api/jobs/{response.json()['id']}/input")).content == photo


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_other_multi_frame_formats_stay_unsupported(fmt: str) -> None:
    with pytest.raises(ImageRejected) as refused:
        prepare_input(images.animated(fmt), MAX_PIXELS)
    assert refused.value.kind == "unsupported"


def test_prepare_input_keeps_the_exif_rotation_of_the_first_frame() -> None:
    """A re-encoded photo is turned the way the camera said, not lying on its side."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    pictures = [Image.new("RGB", (40, 20), images.FRAME_COLORS[n]) for n in range(2)]
    buffer = io.BytesIO()
    pictures[0].save(buffer, "PNG", save_all=True, append_images=pictures[1:], exif=exif)
    stored, info = prepare_input(buffer.getvalue(), MAX_PIXELS)
    assert (info.width, info.height, info.frames) == (20, 40, 1)
    assert frames_of(stored) == ("PNG", 1, False)


def test_pixels_times_frames_are_bounded() -> None:
    """The one bound for media that moves: 2000x2000x300 (the ~13 GiB APNG) is refused."""
    check_pixel_frames(512, 512, 120)  # a short clip fits
    check_pixel_frames(8000, 5000, 1)
    with pytest.raises(ImageRejected) as refused:
        check_pixel_frames(2000, 2000, 300)
    assert refused.value.kind == "unreadable" and "300 frames" in refused.value.message
    with pytest.raises(ImageRejected):
        check_pixel_frames(1, 1, MAX_PIXEL_FRAMES + 1)
    with pytest.raises(ImageRejected):
        check_pixel_frames(100, 0, 1)


def test_a_large_declared_animation_costs_one_frame() -> None:
    """A many-frame animation is brought down to frame 0 without decoding the others."""
    upload = images.animated("PNG", frames=60, width=400, height=300)
    assert read_header(upload, MAX_PIXELS).frames == 60
    stored, info = prepare_input(upload, MAX_PIXELS)
    assert (info.frames, frames_of(stored)[1]) == (1, 1)


# -- damaged files: always a clean refusal, never a crash ------------------------------------


def _samples() -> dict[str, bytes]:
    return {
        "jpeg": images.jpeg(256, 256),
        "png": images.png(64, 48),
        "webp": images.webp(64, 64),
        "apng": images.animated("PNG", frames=3),
        "animated-webp": images.animated("WEBP", frames=3),
    }


@pytest.mark.parametrize("name", list(_samples()))
def test_every_truncation_is_refused_or_read(name: str) -> None:
    """Each prefix of a good file is accepted or refused with ImageRejected (the 415/422),
    never another exception (the 500 a damaged JPEG or WebP header used to cause)."""
    data = _samples()[name]
    # Every prefix through the headers (a JPEG's reach 346 bytes and more), then a sample.
    for end in [*range(min(len(data), 700)), *range(700, len(data), 97)]:
        for check in (read_header, inspect_image, prepare_input):
            try:
                check(data[:end], MAX_PIXELS)
            except ImageRejected as refused:
                assert refused.kind in ("unsupported", "unreadable")
        if 3 <= end < 20:  # a known signature, then nothing readable: damaged, not "not an image"
            with pytest.raises(ImageRejected) as refused:
                read_header(data[:end], MAX_PIXELS)
            assert refused.value.kind == "unreadable", (name, end)


@pytest.mark.parametrize("name", list(_samples()))
def test_corrupted_bytes_are_refused_or_read(name: str) -> None:
    """Random bytes overwritten anywhere in a good file: never anything but ImageRejected."""
    data = _samples()[name]
    chance = random.Random(f"corrupt-{name}")
    for _ in range(300):
        damaged = bytearray(data)
        for _ in range(chance.randint(1, 8)):
            damaged[chance.randrange(len(damaged))] = chance.randrange(256)
        with contextlib.suppress(ImageRejected):
            prepare_input(bytes(damaged), MAX_PIXELS)


def test_the_header_is_read_without_decoding_pixels() -> None:
    damaged = images.damaged_png(8000, 5000)
    header = read_header(damaged, 40_000_000)
    assert (header.format, header.width, header.height) == ("PNG", 8000, 5000)
    with pytest.raises(ImageRejected) as refused:
        inspect_image(damaged, 40_000_000)
    assert refused.value.kind == "unreadable"


# -- cheap refusals before the decode -------------------------------------------------------


async def test_a_replayed_request_is_answered_before_the_photo_is_decoded(
    api: httpx.AsyncClient,
) -> None:
    """The same Idempotency-Key again gets the job it made, even with a balance that would no
    longer pay for it; the key covers the photo's bytes, so one whose header passes but whose
    pixels would not decode is told the key was used for something else, not decoded."""
    await register(api)
    first = await create_job(api, key="order-1")
    assert first.status_code == 201
    await grant(api, 1001, -2, "spend-the-rest")
    again = await create_job(api, key="order-1")
    assert again.status_code == 201, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await create_job(api, image=images.damaged_png(), key="order-1")
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert await balance(api) == 0
