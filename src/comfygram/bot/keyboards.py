"""Reply and inline keyboards. Every label comes from the locale files."""

from __future__ import annotations

from collections.abc import Sequence

from aiogram.types import InlineKeyboardMarkup, ReplyKeyboardMarkup
from aiogram.utils.keyboard import InlineKeyboardBuilder, ReplyKeyboardBuilder

from comfygram.api import Job, Preset
from comfygram.bot import drafts
from comfygram.bot.callbacks import (
    Buy,
    CancelJob,
    Language,
    OptionPick,
    OrderStep,
    Package,
    PresetChoice,
    PresetPage,
)
from comfygram.bot.drafts import Draft
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


def local(texts: dict[str, str] | None, lang: str, default: str = "") -> str:
    """A preset's own text (title of the preset, a slot, an option) in the user's language."""
    if not texts:
        return default
    return texts.get(lang) or texts.get("en") or next(iter(texts.values()), default)


def preset_title(preset: Preset, lang: str) -> str:
    return local(preset.title, lang, preset.slug)


def price_label(lang: str, price: int) -> str:
    if price == 0:
        return t(lang, "bot.order.price_free")
    return t(lang, "bot.order.price", price=price)


def presets(items: Sequence[Preset], lang: str, page: int = 0) -> InlineKeyboardMarkup:
    """One button per preset with its price, PRESETS_PER_PAGE at a time."""
    pages = max(1, -(-len(items) // PRESETS_PER_PAGE))
    page = min(max(page, 0), pages - 1)
    builder = InlineKeyboardBuilder()
    for preset in items[page * PRESETS_PER_PAGE : (page + 1) * PRESETS_PER_PAGE]:
        # Options may change the price: the button shows the least it can cost.
        price, dearest = drafts.price_range(preset.contract, preset.price)
        if price != dearest:
            key = "bot.presets.button_from"
        else:
            key = "bot.presets.button_free" if price == 0 else "bot.presets.button"
        builder.button(
            text=t(lang, key, title=preset_title(preset, lang), price=price),
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


def _order_row(builder: InlineKeyboardBuilder, lang: str, *, back: bool = True) -> None:
    row = InlineKeyboardBuilder()
    if back:
        row.button(text=t(lang, "bot.order.back"), callback_data=OrderStep(action="back"))
    row.button(text=t(lang, "bot.order.cancel"), callback_data=OrderStep(action="cancel"))
    builder.row(*row.buttons)


def question(lang: str, *, skip: bool = False) -> InlineKeyboardMarkup:
    """Under a question of the order (a photo, the prompt): Back and Cancel, and Skip for an
    optional prompt."""
    builder = InlineKeyboardBuilder()
    if skip:
        builder.button(text=t(lang, "bot.order.skip"), callback_data=OrderStep(action="skip"))
    _order_row(builder, lang)
    return builder.as_markup()


def option_choices(preset: Preset, draft: Draft, index: int, lang: str) -> InlineKeyboardMarkup:
    """One button per choice of the option; each shows the price it leads to when the choices
    of this option do not all cost the same."""
    option = preset.contract.options[index]
    prices = drafts.choice_prices(preset.contract, preset.price, draft, index)
    varies = len(set(prices)) > 1
    builder = InlineKeyboardBuilder()
    for choice, price in zip(option.choices, prices, strict=True):
        title = local(choice.title, lang, choice.id)
        label = t(lang, "bot.order.choice_price", title=title, price=price_label(lang, price))
        builder.button(
            text=label if varies else title,
            callback_data=OptionPick(option=option.id, choice=choice.id),
        )
    builder.adjust(2 if len(option.choices) > 3 else 1)
    _order_row(builder, lang)
    return builder.as_markup()


def confirmation(lang: str, price: int) -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    builder.button(
        text=t(lang, "bot.order.go", price=price_label(lang, price)),
        callback_data=OrderStep(action="go"),
    )
    _order_row(builder, lang)
    return builder.as_markup()
