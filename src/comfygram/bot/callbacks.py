"""Inline button payloads (``callback_data``, at most 64 bytes each).

``again:<job_id>`` and ``buy`` are also put on result messages by the worker, so their format
is fixed; the others are the bot's own.
"""

from __future__ import annotations

from aiogram.filters.callback_data import CallbackData


class Again(CallbackData, prefix="again"):
    """Another preset on the photo of a finished job (worker's result message)."""

    job_id: str


class Buy(CallbackData, prefix="buy"):
    """Show the top-up packages (worker's result message, not-enough-credits replies)."""


class Package(CallbackData, prefix="pkg"):
    """Send the invoice for one credit package."""

    package: str


class PresetChoice(CallbackData, prefix="ps"):
    """A preset picked on a preset keyboard; the photo is found by the keyboard's message."""

    slug: str


class PresetPage(CallbackData, prefix="pp"):
    """Turn a preset keyboard to another page."""

    page: int


class CancelJob(CallbackData, prefix="cancel"):
    """Cancel a queued job (the button on its status message)."""

    job_id: str


class Language(CallbackData, prefix="lang"):
    """Switch the bot's language (/lang)."""

    code: str


class OptionPick(CallbackData, prefix="opt"):
    """A choice of one of the preset's options (ids are at most 16 characters each, so this
    stays well within 64 bytes: ``opt:<option>:<choice>``)."""

    option: str
    choice: str


class OrderStep(CallbackData, prefix="ord"):
    """The order's own buttons: ``back``, ``cancel``, ``skip`` (an optional prompt), ``go``
    (the confirmation)."""

    action: str


class SubscriptionPlanChoice(CallbackData, prefix="subp"):
    """Make the invoice link for a monthly plan (/subscription)."""

    plan: str


class SubscriptionSwitch(CallbackData, prefix="subx"):
    """Cancel a subscription's renewals, or renew it again (``cancel`` false)."""

    subscription_id: str
    cancel: bool
