"""The conversation states kept in aiogram's FSM storage (Redis, under the bot's prefix)."""

from __future__ import annotations

from aiogram.fsm.state import State, StatesGroup


class Order(StatesGroup):
    """Photo, preset and prompt may come in either order; these wait for the missing part.

    Data: ``preset`` (slug), ``prompt`` (text or None), ``source`` (a PhotoSource or None).
    """

    waiting_photo = State()
    waiting_prompt = State()
