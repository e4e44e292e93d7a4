"""One user's photo from /start to the result, driven through the Telegram double."""

from __future__ import annotations

import asyncio
import time

from tests import images
from tests.doubles.comfyui import ComfyUIDouble
from tests.doubles.telegram import TelegramDouble


async def bot_polling(telegram: TelegramDouble, timeout: float = 60) -> None:
    """Wait until the bot's first getUpdates has reached the double: it is polling. The call
    still waiting counts: with no update to return it ends only after its long-poll timeout
    (25 s), and an update sent meanwhile is what ends it."""
    deadline = time.monotonic() + timeout
    while not telegram.sent("getUpdates"):
        assert time.monotonic() < deadline, f"the bot did not poll within {timeout} s"
        await asyncio.sleep(0.05)


async def invert_a_photo(telegram: TelegramDouble, comfyui: ComfyUIDouble, chat_id: int) -> None:
    """/start, a photo, the "invert" preset: the negative comes back as one photo."""
    await bot_polling(telegram)
    user = telegram.user(chat_id, first_name="Ivan")
    await user.send_command("start")
    await telegram.wait_for("sendMessage", chat_id=chat_id, timeout=20)
    await user.send_photo(images.jpeg(160, 120))
    [menu] = await telegram.wait_for(
        "sendMessage",
        chat_id=chat_id,
        timeout=20,
        predicate=lambda c: "ps:invert" in str(c.params.get("reply_markup")),
    )
    prompts_before = len(comfyui.prompts_received)
    await user.press(menu.result, "ps:invert")
    [result] = await telegram.wait_for("sendPhoto", chat_id=chat_id, timeout=30)
    assert result.ok and "Negative" in result.params["caption"]
    assert len(comfyui.prompts_received) == prompts_before + 1
