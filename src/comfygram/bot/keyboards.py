"""Reply and inline keyboards. Every label comes from the locale files."""

from __future__ import annotations

from collections.abc import Sequence

from aiogram.types import InlineKeyboardMarkup, ReplyKeyboardMarkup
from aiogram.utils.keyboard import InlineKeyboardBuilder, ReplyKeyboardBuilder

from comfygram.api import Job, Preset
from comfygram.bot.callbacks import Buy, CancelJob, Language, Package, PresetChoice, PresetPage
from comfygram.i18n import LANGUAGES, t
from comfygram.settings import CreditPackage

# Presets per page: a keyboard that fits a phone screen without scrolling.
PRESETS_PER_PAGE = 6
MENU_ITEMS = ("presets", "balance", "top_up", "help")


def menu_labels(item: str) -> set[str]:
    """The menu button's label in every language (the menu is matched by its text)."""
    return {t(language, f"bot.menu.{item}") for language in LANGUAGES}


def main_menu(lang: str) -> ReplyKeyboardMarkup:
    builder = ReplyKeyboardBuilder()
    for item in MENU_ITEMS:
        builder.button(text=t(lang, f"bot.menu.{item}"))
    builder.adjust(2)
    return builder.as_markup(resize_keyboard=True, is_persistent=True)


def preset_title(preset: Preset, lang: str) -> str:
    return preset.title.get(lang) or preset.title.get("en") or preset.slug


def presets(items: Sequence[Preset], lang: str, page: int = 0) -> InlineKeyboardMarkup:
    """One button per preset with its price, PRESETS_PER_PAGE at a time."""
    pages = max(1, -(-len(items) // PRESETS_PER_PAGE))
    page = min(max(page, 0), pages - 1)
    builder = InlineKeyboardBuilder()
    for preset in items[page * PRESETS_PER_PAGE : (page + 1) * PRESETS_PER_PAGE]:
        key = "bot.presets.button_free" if preset.price == 0 else "bot.presets.button"
        builder.button(
            text=t(lang, key, title=preset_title(preset, lang), price=preset.price),
            callback_data=PresetChoice(slug=preset.slug),
        )
    builder.adjust(1)
    if pages > 1:
        nav = InlineKeyboardBuilder()
        if page > 0:
            nav.button(
                text=t(lang, "bot.presets.previous"), callback_data=PresetPage(page=page - 1)
            )
        nav.button(
            text=t(lang, "bot.presets.page", page=page + 1, pages=pages),
            callback_data=PresetPage(page=page),
        )
        if page < pages - 1:
            nav.button(text=t(lang, "bot.presets.next"), callback_data=PresetPage(page=page + 1))
        builder.row(*nav.buttons)
    return builder.as_markup()


def packages(items: Sequence[CreditPackage], lang: str) -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    for package in items:
        builder.button(
            text=t(lang, "bot.buy.button", credits=package.credits, stars=package.stars),
            callback_data=Package(package=package.id),
        )
    builder.adjust(1)
    return builder.as_markup()


def top_up(lang: str) -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    builder.button(text=t(lang, "bot.menu.top_up"), callback_data=Buy())
    return builder.as_markup()


def languages() -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    for code in LANGUAGES:
        builder.button(text=t(code, "bot.lang.button"), callback_data=Language(code=code))
    return builder.as_markup()


def status_markup(job_id: str, lang: str) -> InlineKeyboardMarkup:
    """Under a queued job's status message: cancel it (the worker's edits drop the button)."""
    builder = InlineKeyboardBuilder()
    builder.button(text=t(lang, "bot.status.cancel_button"), callback_data=CancelJob(job_id=job_id))
    return builder.as_markup()


def cancel_choices(jobs: Sequence[Job], titles: dict[str, str], lang: str) -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    for job in jobs:
        builder.button(
            text=t(
                lang,
                "bot.cancel.choice",
                title=titles.get(job.preset, job.preset),
                position=job.position,
            ),
            callback_data=CancelJob(job_id=job.id),
        )
    builder.adjust(1)
    return builder.as_markup()
