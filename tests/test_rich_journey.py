"""Issue 12's "done when", in the bot: a person puts two photos into `pair`, chooses 4 variants
and gets an album, and gets a video from `fade` of the length they chose. Every part runs: the
bot (polling), the real backend over HTTP, real Redis, a worker, and the ComfyUI and Telegram
doubles (the same presets on the real ComfyUI: tests/test_real_comfyui_rich_e2e.py)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from itertools import combinations
from pathlib import Path

import av
import pytest
from PIL import Image, ImageChops

from comfygram.settings import Settings
from tests import images
from tests.bot_helpers import World, fast_chat_pace, polling_world  # noqa: F401
from tests.doubles.comfyui import ComfyUIDouble
from tests.doubles.telegram import UserDriver
from tests.test_bot_slots import _pick, _started
from tests.test_journey import worker_for

pytestmark = pytest.mark.usefixtures("fast_chat_pace")


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@pytest.fixture
async def world(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[World]:
    # A conversation sends several messages in a second, past the flood control's burst.
    monkeypatch.setattr("comfygram.bot.app.MESSAGE_BURST", 100)
    async with (
        ComfyUIDouble(tmp_path / "comfyui") as comfyui,
        polling_world(settings) as running,
        worker_for(running, comfyui),
    ):
        yield running


def solid(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


async def _photo_then_preset(world: World, user: UserDriver, photo: bytes, slug: str) -> int:
    since = world.mark()
    await user.send_photo(photo)
    keyboard = await world.reply(user, containing="Nice photo", since=since)
    await _pick(world, user, keyboard, slug)
    return since


async def _confirm(world: World, user: UserDriver, since: int) -> None:
    confirm = await world.reply(user, containing="Price", since=since)
    await user.press(confirm.result, "ord:go")


async def test_two_photos_into_pair_come_back_side_by_side(world: World):
    user = await _started(world, 7101, credits=10)
    since = await _photo_then_preset(world, user, solid(120, 90, (220, 40, 30)), "pair")
    await world.reply(user, containing="second photo", since=since)
    await user.send_photo(solid(90, 90, (30, 60, 210)))
    await _confirm(world, user, since)

    (sent,) = await world.telegram.wait_for("sendPhoto", chat_id=7101, since=since, timeout=30)
    picture = Image.open(io.BytesIO(sent.files["photo"]))
    # Both photos scaled to 512 high, side by side: 4:3 and 1:1 make 683 + 512 wide.
    assert picture.format == "JPEG" and picture.size[1] == 512
    assert abs(picture.size[0] - (683 + 512)) <= 2
    left, right = picture.convert("RGB").getpixel((100, 256)), picture.getpixel((1000, 256))
    assert left[0] > 150 > left[2] and right[2] > 150 > right[0]
    job = await world.ended_job(7101)
    assert (job.preset, job.status, len(job.inputs)) == ("pair", "succeeded", 2)


async def test_four_variants_come_back_as_one_album(world: World):
    user = await _started(world, 7102, credits=10)
    since = await _photo_then_preset(world, user, images.jpeg(160, 120), "variants")
    option = await world.reply(user, containing="How many variants?", since=since)
    await user.press(option.result, "opt:count:4")
    await _confirm(world, user, since)

    (album,) = await world.telegram.wait_for(
        "sendMediaGroup", chat_id=7102, since=since, timeout=30
    )
    assert album.ok and len(album.params["media"]) == 4
    photos = [m.photo for m in world.telegram.messages(7102) if m.from_bot and m.photo]
    pictures = [Image.open(io.BytesIO(p)).convert("RGB") for p in photos]
    assert len(pictures) == 4
    for a, b in combinations(pictures, 2):
        assert ImageChops.difference(a, b).getbbox() is not None
    # Albums take no keyboard: the buttons follow in a message of their own.
    await world.telegram.wait_for(
        "sendMessage",
        chat_id=7102,
        since=since,
        predicate=lambda c: c.at >= album.at and bool(c.params.get("reply_markup")),
    )
    (job,) = await world.backend.jobs(7102)
    assert (job.options, job.price, len(job.outputs)) == ({"count": "4"}, 4, 4)
    assert (await world.backend.user(7102)).balance == 13 - 4


async def test_fade_gives_a_video_of_the_chosen_length(world: World):
    user = await _started(world, 7103, credits=10)
    since = await _photo_then_preset(world, user, images.jpeg(160, 120), "fade")
    option = await world.reply(user, containing="How long a video?", since=since)
    await user.press(option.result, "opt:length:4s")
    await _confirm(world, user, since)

    (sent,) = await world.telegram.wait_for("sendVideo", chat_id=7103, since=since, timeout=60)
    with av.open(io.BytesIO(sent.files["video"])) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert stream.codec_context.name == "h264"
    assert frames == 96  # 4 s at 24 fps
    assert sent.params["duration"] == 4 and sent.params["supports_streaming"] is True
    assert "thumbnail" in sent.files
    job = await world.ended_job(7103)
    assert (job.preset, job.options, job.status) == ("fade", {"length": "4s"}, "succeeded")
