"""The conversation states kept in aiogram's FSM storage (Redis, under the bot's prefix)."""

from __future__ import annotations

from aiogram.fsm.state import State, StatesGroup


class Order(StatesGroup):
    """An order being put together, one question at a time (see ``bot.drafts``).

    Data: ``draft`` (a Draft: the preset, the photos, options and prompt given so far, and the
    message asking the current question). Data written before drafts existed (``preset``,
    ``prompt``, ``source``) is read as a draft too.
    """

    waiting_photo = State()
    choosing_option = State()
    waiting_prompt = State()
    confirming = State()
