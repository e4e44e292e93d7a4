"""The order conversation a preset's contract drives: each photo slot in turn (or an album at
once), the options as buttons with their prices, the prompt (skippable when optional), one
confirmation with the final price, then the queue; Back and Cancel at every step; wrong media
told what is expected; a bot restarted mid-way carries on; a double tap on Start is one job;
the result's "another preset" button brings back all the job's photos.

The bot polls the Telegram double and talks to the real backend (uvicorn on loopback); real
Redis. The presets are a test folder (PRESETS_DIR): `duo` takes two photos (the first slot has
a title, the second not), an option whose "wide" choice triples the price, and an optional
prompt. No worker runs, so jobs stay queued."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup
from PIL import Image

from comfygram.settings import Settings
from comfygram.telegram import create_bot
from tests import images
from tests.bot_helpers import World, fast_chat_pace, polling_world  # noqa: F401
from tests.doubles.telegram import Call, UserDriver

pytestmark = pytest.mark.usefixtures("fast_chat_pace")

DUO_TOML = """
slug = "duo"
price = 2

[title]
en = "Duo"
ru = "Дуэт"

[description]
en = "Two photos side by side."
ru = "Два фото рядом."

[[inputs]]
name = "person"
node = "1"
title = { en = "Send the photo of the person", ru = "Пришлите фото человека" }

[[inputs]]
name = "place"
node = "2"

[prompt_input]
node = "4"
input = "value"
required = false

[[options]]
id = "gap"
title = { en = "Gap between them", ru = "Промежуток" }
default = "none"

  [[options.choices]]
  id = "none"
  title = { en = "None", ru = "Нет" }
  sets = [{ node = "3", input = "spacing_width", value = 0 }]

  [[options.choices]]
  id = "wide"
  title = { en = "Wide", ru = "Широкий" }
  sets = [{ node = "3", input = "spacing_width", value = 32 }]
  price_multiplier = 3

[output]
node = "5"
"""

DUO_WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
    "2": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
    "3": {
        "class_type": "ImageStitch",
        "inputs": {
            "image1": ["1", 0],
            "image2": ["2", 0],
            "direction": "right",
            "match_image_size": True,
            "spacing_width": 0,
            "spacing_color": "white",
        },
    },
    "4": {"class_type": "PrimitiveString", "inputs": {"value": ""}},
    "5": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "duo"}},
}


def write_presets(root: Path) -> Path:
    folder = root / "duo"
    folder.mkdir(parents=True)
    (folder / "preset.toml").write_text(DUO_TOML)
    (folder / "workflow.json").write_text(json.dumps(DUO_WORKFLOW))
    return root


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@pytest.fixture
async def world(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[World]:
    # These tests send a dozen messages in a few seconds, past the flood control's burst of 5
    # (tested in test_bot.py); a larger burst keeps them from being throttled.
    monkeypatch.setattr("comfygram.bot.app.MESSAGE_BURST", 100)
    presets = write_presets(tmp_path / "presets")
    async with polling_world(settings.model_copy(update={"presets_dir": presets})) as running:
        yield running


async def _started(world: World, telegram_id: int, credits: int = 0) -> UserDriver:
    user = world.user(telegram_id)
    await user.send_command("start")
    await world.reply(user, containing="👋")
    if credits:
        await world.backend.adjust_credits(
            telegram_id, credits, reason="tests", actor="tests", idempotency_key=f"t{telegram_id}"
        )
    return user


def _buttons(call: Call) -> dict[str, str]:
    """callback_data -> label of every button on the message."""
    rows = call.params.get("reply_markup", {}).get("inline_keyboard", [])
    return {b["callback_data"]: b["text"] for row in rows for b in row}


async def _pick(world: World, user: UserDriver, keyboard: Call, slug: str) -> None:
    """Press the preset's button, turning the keyboard's pages until it shows."""
    message_id = keyboard.result["message_id"]
    page = 0
    while f"ps:{slug}" not in world.telegram.message(user.chat_id, message_id).callback_data:
        page += 1
        assert page < 5, f"no button for {slug}"
        since = world.mark()
        await user.press(keyboard.result, f"pp:{page}")
        await world.reply(user, method="editMessageReplyMarkup", since=since)
    await user.press(keyboard.result, f"ps:{slug}")


async def _duo_first(world: World, user: UserDriver) -> Call:
    """Pick `duo` from the menu (preset first); returns the question for the first photo."""
    since = world.mark()
    await user.send_text("🎨 Presets")
    keyboard = await world.reply(user, containing="then send me the photo", since=since)
    await _pick(world, user, keyboard, "duo")
    return await world.reply(user, containing="Send the photo of the person", since=since)


async def _size(world: World, job_id: str, index: int) -> tuple[int, int]:
    data, _type = await world.backend.job_input(job_id, index)
    return Image.open(io.BytesIO(data)).size


async def _video(user: UserDriver) -> dict[str, Any]:
    stored = user.double._store_file(b"\x00\x00\x00\x18ftypmp42fake", "videos", ".mp4")
    video = {
        "file_id": stored.file_id,
        "file_unique_id": stored.file_unique_id,
        "width": 320,
        "height": 240,
        "duration": 2,
        "mime_type": "video/mp4",
        "file_size": len(stored.data),
    }
    return await user._extra({"video": video})


async def _animation(user: UserDriver) -> dict[str, Any]:
    """A GIF as Telegram sends it: an MP4 animation, also described as a document."""
    stored = user.double._store_file(b"\x00\x00\x00\x18ftypmp42anim", "animations", ".mp4")
    common = {
        "file_id": stored.file_id,
        "file_unique_id": stored.file_unique_id,
        "file_name": "funny.gif.mp4",
        "mime_type": "video/mp4",
        "file_size": len(stored.data),
    }
    animation = {**common, "width": 200, "height": 200, "duration": 1}
    return await user._extra({"animation": animation, "document": common})


async def test_two_photos_one_by_one_then_option_prompt_skipped_and_confirmation(world: World):
    user = await _started(world, 7001, credits=10)  # 13 credits
    since = world.mark()
    await user.send_text("🎨 Presets")
    keyboard = await world.reply(user, containing="then send me the photo")
    await _pick(world, user, keyboard, "duo")
    buttons = world.telegram.message(7001, keyboard.result["message_id"]).reply_markup
    labels = {b["callback_data"]: b["text"] for row in buttons["inline_keyboard"] for b in row}
    assert labels["ps:duo"] == "Duo · from 2 💎"  # the option can triple it
    first = await world.reply(user, containing="Send the photo of the person", since=since)
    assert first.params["text"] == "📷 1/2 · Send the photo of the person"
    assert list(_buttons(first)) == ["ord:back", "ord:cancel"]
    await user.send_photo(images.jpeg(64, 48))
    second = await world.reply(user, containing="photo 2 of 2", since=since)
    assert second.params["text"] == "📷 «Duo»: send me photo 2 of 2."
    await user.send_photo(images.jpeg(80, 60))
    option = await world.reply(user, containing="Gap between them", since=since)
    # Each choice shows the price it leads to (they differ).
    assert _buttons(option) == {
        "opt:gap:none": "None · 2 💎",
        "opt:gap:wide": "Wide · 6 💎",
        "ord:back": "◀️ Back",
        "ord:cancel": "✖️ Cancel",
    }
    await user.press(option.result, "opt:gap:none")
    prompt = await world.reply(user, containing="or press Skip", since=since)
    assert list(_buttons(prompt)) == ["ord:skip", "ord:back", "ord:cancel"]
    await user.press(prompt.result, "ord:skip")
    confirm = await world.reply(user, containing="Price", since=since)
    text = confirm.params["text"]
    assert "📷 2 photos" in text and "Gap between them: None" in text
    assert "no description" in text and "Price: <b>2</b> credits" in text
    assert _buttons(confirm)["ord:go"] == "✅ Start · 2 💎"
    await world.settle()
    assert await world.backend.jobs(7001) == []  # nothing is queued before Start
    await user.press(confirm.result, "ord:go")
    await world.reply(user, containing="Queued: position", since=since)
    await world.settle()
    (job,) = await world.backend.jobs(7001)
    assert (job.preset, job.options, job.prompt, job.price) == ("duo", {"gap": "none"}, None, 2)
    assert [await _size(world, job.id, i) for i in (0, 1)] == [(64, 48), (80, 60)]
    assert (await world.backend.user(7001)).balance == 13 - 2


async def test_an_album_fills_both_slots_and_the_options_change_the_price_charged(world: World):
    user = await _started(world, 7002, credits=10)  # 13 credits
    since = world.mark()
    await user.send_album([images.jpeg(64, 48), images.jpeg(80, 60)])
    keyboard = await world.reply(user, containing="Nice photos", since=since)
    await _pick(world, user, keyboard, "duo")
    # Both photos came with the album: the first question is the option.
    option = await world.reply(user, containing="Gap between them", since=since)
    await world.settle()
    asked = [c.params["text"] for c in world.telegram.sent("sendMessage", 7002)[-3:]]
    assert not [t for t in asked if "photo 2 of 2" in t or "photo of the person" in t], asked
    await user.press(option.result, "opt:gap:wide")
    prompt = await world.reply(user, containing="or press Skip", since=since)
    await user.send_text("a <b>sunny</b> day")
    confirm = await world.reply(user, containing="Price", since=since)
    assert "Price: <b>6</b> credits" in confirm.params["text"]
    assert "Gap between them: Wide" in confirm.params["text"]
    assert "«a &lt;b&gt;sunny&lt;/b&gt; day»" in confirm.params["text"]  # escaped
    assert _buttons(confirm)["ord:go"] == "✅ Start · 6 💎"
    assert prompt.result["message_id"] < confirm.result["message_id"]
    await user.press(confirm.result, "ord:go")
    await world.reply(user, containing="Queued: position", since=since)
    await world.settle()
    (job,) = await world.backend.jobs(7002)
    assert (job.options, job.prompt, job.price) == ({"gap": "wide"}, "a <b>sunny</b> day", 6)
    assert [await _size(world, job.id, i) for i in (0, 1)] == [(64, 48), (80, 60)]
    assert (await world.backend.user(7002)).balance == 13 - 6


async def test_an_album_with_more_photos_than_slots_uses_the_first_and_says_so(world: World):
    user = await _started(world, 7003, credits=10)
    first = await _duo_first(world, user)
    since = world.mark()
    await user.send_album([images.jpeg(64, 48), images.jpeg(80, 60), images.jpeg(96, 72)])
    await world.reply(user, containing="Gap between them", since=since)
    await world.settle()
    sent = [c.params["text"] for c in world.telegram.calls[since:] if c.method == "sendMessage"]
    assert "📷 You sent 3 photos; «Duo» takes 2, so I'll use the first 2." in sent
    assert first.result["message_id"] > 0


async def test_wrong_media_where_a_photo_is_needed_is_told_what_is_expected(world: World):
    user = await _started(world, 7004, credits=10)
    await _duo_first(world, user)
    senders = [
        lambda: user.send_sticker(),
        lambda: user.send_voice(),
        lambda: _video(user),
        lambda: _animation(user),
        lambda: user.send_document(b"%PDF-1.4 fake", "cv.pdf", "application/pdf"),
        lambda: user.send_document(images.gif(), "cat.gif", "image/gif"),
    ]
    for expected in ("1/2 · Send the photo of the person", "send me photo 2 of 2"):
        for send_wrong in senders:
            since = world.mark()
            await send_wrong()
            reply = await world.reply(user, containing="not a photo I can use", since=since)
            assert expected in reply.params["text"]  # which photo is expected
        since = world.mark()
        await user.send_text("where do I send it?")
        reply = await world.reply(user, containing="still waiting", since=since)
        assert expected in reply.params["text"]
        await user.send_photo(images.jpeg())  # the state did not move: the photo is taken
        await world.settle()
    option = await world.reply(user, containing="Gap between them")
    since = world.mark()
    await user.send_text("wide please")  # an option is chosen with a button
    await world.reply(user, containing="Pick one of the buttons above", since=since)
    await user.press(option.result, "opt:gap:none")
    await world.reply(user, containing="or press Skip", since=since)
    assert await world.backend.jobs(7004) == []


async def test_back_from_the_options_asks_for_the_photo_again(world: World):
    user = await _started(world, 7005, credits=10)
    await _duo_first(world, user)
    await user.send_photo(images.jpeg(64, 48))
    await world.reply(user, containing="photo 2 of 2")
    await user.send_photo(images.jpeg(80, 60))
    option = await world.reply(user, containing="Gap between them")
    since = world.mark()
    await user.press(option.result, "ord:back")
    await world.reply(user, containing="photo 2 of 2", since=since)
    # The old question's buttons no longer act.
    since = world.mark()
    await user.press(option.result, "opt:gap:wide")
    answer = await world.telegram.wait_for("answerCallbackQuery", since=since)
    assert answer[0].params["text"] == "This step is over: use the latest message."
    await user.send_photo(images.jpeg(96, 72))  # another second photo
    option = await world.reply(user, containing="Gap between them", since=since)
    await user.press(option.result, "opt:gap:none")
    prompt = await world.reply(user, containing="or press Skip", since=since)
    await user.press(prompt.result, "ord:skip")
    confirm = await world.reply(user, containing="Price", since=since)
    # Back from the confirmation to the prompt, and on: its Start no longer acts.
    since = world.mark()
    await user.press(confirm.result, "ord:back")
    prompt = await world.reply(user, containing="or press Skip", since=since)
    await user.press(confirm.result, "ord:go")
    await world.telegram.wait_for("answerCallbackQuery", since=since, count=2)
    await user.press(prompt.result, "ord:skip")
    confirm = await world.reply(user, containing="Price", since=since)
    # Ten presses in about a second: more than the bot lets a person make at once (8, then 2
    # a second; test_bot.py tests that). Someone reading the price takes longer.
    await asyncio.sleep(1.0)
    await user.press(confirm.result, "ord:go")
    await world.reply(user, containing="Queued: position", since=since)
    await world.settle()
    (job,) = await world.backend.jobs(7005)
    assert [await _size(world, job.id, i) for i in (0, 1)] == [(64, 48), (96, 72)]


async def test_back_from_the_first_question_returns_to_the_presets(world: World):
    user = await _started(world, 7006, credits=10)
    first = await _duo_first(world, user)
    since = world.mark()
    await user.press(first.result, "ord:back")
    await world.reply(user, containing="then send me the photo", since=since)
    # Photo first: the photo came with the choice, so Back from the option goes to the presets
    # for the same photos.
    since = world.mark()
    await user.send_album([images.jpeg(64, 48), images.jpeg(80, 60)])
    keyboard = await world.reply(user, containing="Nice photos", since=since)
    await _pick(world, user, keyboard, "duo")
    option = await world.reply(user, containing="Gap between them", since=since)
    await user.press(option.result, "ord:back")
    again = await world.reply(user, containing="Nice photos", since=since, count=2)
    await _pick(world, user, again, "duo")
    await world.reply(user, containing="Gap between them", since=since, count=2)


async def test_cancel_drops_the_order_at_any_step(world: World):
    user = await _started(world, 7007, credits=10)
    first = await _duo_first(world, user)
    since = world.mark()
    await user.press(first.result, "ord:cancel")
    await world.reply(user, containing="OK, forgotten", since=since)
    await user.send_text("hello")
    await world.reply(user, containing="Send me a photo", since=since)  # no order waits
    # At the confirmation: Cancel, and its Start no longer acts.
    await _duo_first(world, user)
    since = world.mark()
    await user.send_album([images.jpeg(64, 48), images.jpeg(80, 60)])
    option = await world.reply(user, containing="Gap between them", since=since)
    await user.press(option.result, "opt:gap:none")
    prompt = await world.reply(user, containing="or press Skip", since=since)
    await user.press(prompt.result, "ord:skip")
    confirm = await world.reply(user, containing="Price", since=since)
    await user.press(confirm.result, "ord:cancel")
    await world.reply(user, containing="OK, forgotten", since=since)
    await user.press(confirm.result, "ord:go")
    await world.settle()
    assert await world.backend.jobs(7007) == []
    # /cancel in the middle works the same way.
    await _duo_first(world, user)
    since = world.mark()
    await user.send_command("cancel")
    await world.reply(user, containing="OK, forgotten", since=since)
    assert (await world.backend.user(7007)).balance == 13


async def test_a_restarted_bot_carries_on_with_the_order(world: World):
    user = await _started(world, 7008, credits=10)
    await _duo_first(world, user)
    await user.send_photo(images.jpeg(64, 48))
    await world.reply(user, containing="photo 2 of 2")
    await world.restart_bot()
    since = world.mark()
    await user.send_photo(images.jpeg(80, 60))
    option = await world.reply(user, containing="Gap between them", since=since)
    await world.restart_bot()
    await user.press(option.result, "opt:gap:wide")
    prompt = await world.reply(user, containing="or press Skip", since=since)
    await world.restart_bot()
    await user.send_text("at night")
    confirm = await world.reply(user, containing="Price", since=since)
    await world.restart_bot()
    await user.press(confirm.result, "ord:go")
    await world.reply(user, containing="Queued: position", since=since)
    await world.settle()
    (job,) = await world.backend.jobs(7008)
    assert (job.options, job.prompt, job.price) == ({"gap": "wide"}, "at night", 6)
    assert [await _size(world, job.id, i) for i in (0, 1)] == [(64, 48), (80, 60)]
    assert prompt.result["message_id"] > option.result["message_id"]


async def test_a_double_tap_on_start_is_one_job_and_a_press_after_it_ended_a_new_one(world: World):
    user = await _started(world, 7009, credits=10)  # 13 credits
    since = world.mark()
    await user.send_album([images.jpeg(64, 48), images.jpeg(80, 60)])
    keyboard = await world.reply(user, containing="Nice photos", since=since)
    await _pick(world, user, keyboard, "duo")
    option = await world.reply(user, containing="Gap between them", since=since)
    await user.press(option.result, "opt:gap:none")
    prompt = await world.reply(user, containing="or press Skip", since=since)
    await user.press(prompt.result, "ord:skip")
    confirm = await world.reply(user, containing="Price", since=since)
    since = world.mark()
    await user.press(confirm.result, "ord:go")
    await user.press(confirm.result, "ord:go")
    await world.telegram.wait_for("answerCallbackQuery", count=2, since=since)
    await world.reply(user, containing="Queued: position", since=since)
    await world.settle()
    (job,) = await world.backend.jobs(7009)
    queued = [
        c for c in world.telegram.sent("sendMessage", 7009)[-5:] if "Queued" in c.params["text"]
    ]
    assert len(queued) == 1
    assert (await world.backend.user(7009)).balance == 13 - 2
    # The job ended: the same Start is a deliberate new order (the key's next generation).
    await world.backend.set_status(job.id, "cancelled")
    since = world.mark()
    await user.press(confirm.result, "ord:go")
    await world.reply(user, containing="Queued: position", since=since)
    await world.settle()
    assert len(await world.backend.jobs(7009)) == 2


async def test_the_chosen_options_price_is_checked_before_asking_for_more(world: World):
    user = await _started(world, 7010)  # 3 credits: "wide" costs 6
    since = world.mark()
    await user.send_album([images.jpeg(64, 48), images.jpeg(80, 60)])
    keyboard = await world.reply(user, containing="Nice photos", since=since)
    await _pick(world, user, keyboard, "duo")
    option = await world.reply(user, containing="Gap between them", since=since)
    since = world.mark()
    await user.press(option.result, "opt:gap:wide")
    offer = await world.reply(user, containing="Not enough credits", since=since)
    assert "you need 3 more (you have 3)" in offer.params["text"]
    await world.settle()
    assert not [c for c in world.telegram.calls[since:] if "Skip" in str(c.params.get("text"))]
    # The question stays open: the cheaper choice goes on.
    await user.press(option.result, "opt:gap:none")
    await world.reply(user, containing="or press Skip", since=since)
    assert await world.backend.jobs(7010) == []


async def test_photo_first_then_a_two_photo_preset_asks_for_the_second(world: World):
    """The built-in `pair`: one photo sent, the preset picked, the second photo asked for."""
    user = await _started(world, 7011, credits=10)  # 13 credits
    since = world.mark()
    await user.send_photo(images.jpeg(64, 48))
    keyboard = await world.reply(user, containing="Nice photo", since=since)
    await _pick(world, user, keyboard, "pair")
    second = await world.reply(user, containing="second photo", since=since)
    assert second.params["text"] == "📷 2/2 · Now send the second photo (it goes on the right)"
    await user.send_photo(images.jpeg(80, 60))
    confirm = await world.reply(user, containing="Price", since=since)
    assert "📷 2 photos" in confirm.params["text"] and "<b>2</b> credits" in confirm.params["text"]
    await user.press(confirm.result, "ord:go")
    await world.reply(user, containing="Queued: position", since=since)
    await world.settle()
    (job,) = await world.backend.jobs(7011)
    assert (job.preset, job.price) == ("pair", 2)
    assert [await _size(world, job.id, i) for i in (0, 1)] == [(64, 48), (80, 60)]


async def test_variants_four_cost_double_as_shown_and_charged(world: World):
    """The built-in `variants`: one photo, the count option on buttons with their prices."""
    user = await _started(world, 7012, credits=10)  # 13 credits
    since = world.mark()
    await user.send_photo(images.jpeg())
    keyboard = await world.reply(user, containing="Nice photo", since=since)
    await _pick(world, user, keyboard, "variants")
    option = await world.reply(user, containing="How many variants?", since=since)
    assert _buttons(option)["opt:count:2"] == "2 variants · 2 💎"
    assert _buttons(option)["opt:count:4"] == "4 variants · 4 💎"
    await user.press(option.result, "opt:count:4")
    confirm = await world.reply(user, containing="Price", since=since)
    assert "Price: <b>4</b> credits" in confirm.params["text"]
    await user.press(confirm.result, "ord:go")
    await world.reply(user, containing="Queued: position", since=since)
    await world.settle()
    (job,) = await world.backend.jobs(7012)
    assert (job.preset, job.options, job.price) == ("variants", {"count": "4"}, 4)
    assert (await world.backend.user(7012)).balance == 13 - 4


async def test_another_preset_on_a_finished_job_brings_all_its_photos(world: World):
    """The result's "again" button: the job's photos, fetched back from the backend, fill the
    next preset's slots in their order."""
    user = await _started(world, 7013, credits=10)
    since = world.mark()
    await user.send_album([images.jpeg(64, 48), images.jpeg(80, 60)])
    keyboard = await world.reply(user, containing="Nice photos", since=since)
    await _pick(world, user, keyboard, "pair")
    confirm = await world.reply(user, containing="Price", since=since)
    await user.press(confirm.result, "ord:go")
    await world.reply(user, containing="Queued: position", since=since)
    await world.settle()
    (job,) = await world.backend.jobs(7013)
    await world.backend.set_status(job.id, "cancelled")
    # What the worker sends with a result: a message with the "again" button.
    bot = create_bot(world.settings)
    try:
        markup = InlineKeyboardMarkup(
            inline_keyboard=[[InlineKeyboardButton(text="again", callback_data=f"again:{job.id}")]]
        )
        result = await bot.send_message(7013, "result", reply_markup=markup)
    finally:
        await bot.session.close()
    since = world.mark()
    await user.press(result.model_dump(), f"again:{job.id}")
    keyboard = await world.reply(user, containing="Nice photos", since=since)
    await _pick(world, user, keyboard, "duo")
    option = await world.reply(user, containing="Gap between them", since=since)
    await user.press(option.result, "opt:gap:none")
    prompt = await world.reply(user, containing="or press Skip", since=since)
    await user.press(prompt.result, "ord:skip")
    confirm = await world.reply(user, containing="Price", since=since)
    await user.press(confirm.result, "ord:go")
    await world.reply(user, containing="Queued: position", since=since)
    await world.settle()
    (new,) = [j for j in await world.backend.jobs(7013) if j.id != job.id]
    assert new.preset == "duo"
    assert [await _size(world, new.id, i) for i in (0, 1)] == [(64, 48), (80, 60)]


async def test_a_one_photo_preset_with_a_required_prompt_keeps_the_short_way(world: World):
    """`edit` picked first: its photo, then its prompt, and the job is queued on the prompt
    (no confirmation). A photo too large to take leaves the question where it was."""
    user = await _started(world, 7014, credits=20)
    since = world.mark()
    await user.send_text("🎨 Presets")
    keyboard = await world.reply(user, containing="then send me the photo", since=since)
    await _pick(world, user, keyboard, "edit")
    await world.reply(user, containing="Now send me the photo for", since=since)
    big = images.png(1400, 1400) + b"\x00" * (3 * 1024 * 1024)  # over MAX_UPLOAD_BYTES (2 MB)
    await user.send_document(big, "big.png", "image/png")
    await world.reply(user, containing="That file is too big", since=since)
    await user.send_photo(images.jpeg(80, 60))
    ask = await world.reply(user, containing="describe the edit", since=since)
    assert "ord:skip" not in _buttons(ask)  # required: no Skip
    await user.send_text("make it snowy")
    await world.reply(user, containing="Queued: position", since=since)
    await world.settle()
    texts = [c.params["text"] for c in world.telegram.sent("sendMessage", 7014)]
    assert not [t for t in texts if "Price:" in t]
    (job,) = await world.backend.jobs(7014)
    assert (job.preset, job.prompt, job.options) == ("edit", "make it snowy", {})
    assert await _size(world, job.id, 0) == (80, 60)
