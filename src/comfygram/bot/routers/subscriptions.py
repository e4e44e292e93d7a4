"""/subscription: monthly plans in Stars. A plan is an invoice link with subscription_period;
its payments (the first and each renewal) arrive as successful_payment like any other and are
credited by the payments router; cancelling is editUserStarSubscription."""

from __future__ import annotations

import logging
from datetime import datetime

from aiogram import Bot, Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Command
from aiogram.methods import CreateInvoiceLink, EditUserStarSubscription
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, LabeledPrice, Message
from aiogram.utils.keyboard import InlineKeyboardBuilder

from comfygram.api import BackendClient, BackendError, BackendUnavailable, Subscription
from comfygram.bot.callbacks import SubscriptionPlanChoice, SubscriptionSwitch
from comfygram.bot.replies import send
from comfygram.i18n import t
from comfygram.settings import Settings, SubscriptionPlan
from comfygram.telegram import TelegramSender

log = logging.getLogger(__name__)

STARS = "XTR"
# Telegram's only subscription period: 30 days.
PERIOD_SECONDS = 2592000


def _title(lang: str, credits: int) -> str:
    return t(lang, "subscription.title", credits=credits)


def _date(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d") if moment is not None else "?"


def _overview(
    lang: str, current: list[Subscription], plans: list[SubscriptionPlan]
) -> tuple[str, InlineKeyboardMarkup | None]:
    lines: list[str] = []
    builder = InlineKeyboardBuilder()
    for sub in current:
        title = _title(lang, sub.credits)
        date = _date(sub.current_period_end)
        if sub.state == "active":
            lines.append(
                t(
                    lang,
                    "subscription.active",
                    title=title,
                    credits=sub.credits,
                    stars=sub.amount,
                    date=date,
                )
            )
            builder.button(
                text=t(lang, "subscription.cancel_button", title=title),
                callback_data=SubscriptionSwitch(subscription_id=sub.id, cancel=True),
            )
        else:
            lines.append(t(lang, "subscription.cancelled", title=title, date=date))
            builder.button(
                text=t(lang, "subscription.resume_button", title=title),
                callback_data=SubscriptionSwitch(subscription_id=sub.id, cancel=False),
            )
    held = {sub.plan for sub in current}
    offered = [plan for plan in plans if plan.id not in held]
    if offered:
        lines.append(t(lang, "subscription.choose"))
        for plan in offered:
            builder.button(
                text=t(
                    lang,
                    "subscription.plan_button",
                    title=_title(lang, plan.credits),
                    credits=plan.credits,
                    stars=plan.stars,
                ),
                callback_data=SubscriptionPlanChoice(plan=plan.id),
            )
    if not lines:
        return t(lang, "subscription.none"), None
    builder.adjust(1)
    return "\n\n".join(lines), builder.as_markup()


async def show(
    message: Message, backend: BackendClient, tg: TelegramSender, lang: str, settings: Settings
) -> None:
    user = message.from_user
    assert user is not None
    try:
        await backend.register(
            user.id, username=user.username, first_name=user.first_name, language_code=lang
        )
        current = await backend.subscriptions(user.id)
    except BackendUnavailable:
        await send(tg, message.chat.id, t(lang, "subscription.unavailable"))
        return
    text, markup = _overview(lang, current, settings.subscription_plans)
    await send(tg, message.chat.id, text, markup)


async def subscribe(
    query: CallbackQuery,
    callback_data: SubscriptionPlanChoice,
    bot: Bot,
    backend: BackendClient,
    tg: TelegramSender,
    lang: str,
) -> None:
    """A plan picked: a pending subscription, and its invoice link as a button."""
    if query.message is None:
        await query.answer()
        return
    try:
        sub = await backend.create_subscription(query.from_user.id, callback_data.plan)
    except BackendError as exc:
        key = "subscription.already" if exc.code == "already_subscribed" else "subscription.gone"
        await query.answer(t(lang, key), show_alert=True)
        return
    except BackendUnavailable:
        await query.answer(t(lang, "subscription.unavailable"), show_alert=True)
        return
    await query.answer()
    title = _title(lang, sub.credits)
    link = await bot(
        CreateInvoiceLink(
            title=title,
            description=t(lang, "subscription.description", credits=sub.credits),
            payload=sub.payload,
            currency=STARS,
            prices=[LabeledPrice(label=title, amount=sub.amount)],
            subscription_period=PERIOD_SECONDS,
        )
    )
    builder = InlineKeyboardBuilder()
    builder.button(text=t(lang, "subscription.subscribe_button", stars=sub.amount), url=link)
    text = t(lang, "subscription.link", title=title, credits=sub.credits, stars=sub.amount)
    await send(tg, query.message.chat.id, text, builder.as_markup())


async def switch(
    query: CallbackQuery,
    callback_data: SubscriptionSwitch,
    bot: Bot,
    backend: BackendClient,
    tg: TelegramSender,
    lang: str,
) -> None:
    """Cancel (or renew again) at Telegram first, then record it: Telegram is what charges."""
    user_id = query.from_user.id
    try:
        current = {sub.id: sub for sub in await backend.subscriptions(user_id)}
    except BackendUnavailable:
        await query.answer(t(lang, "subscription.unavailable"), show_alert=True)
        return
    sub = current.get(callback_data.subscription_id)
    if sub is None or sub.first_charge_id is None:
        await query.answer(t(lang, "subscription.gone"), show_alert=True)
        return
    try:
        await bot(
            EditUserStarSubscription(
                user_id=user_id,
                telegram_payment_charge_id=sub.first_charge_id,
                is_canceled=callback_data.cancel,
            )
        )
    except TelegramBadRequest as exc:
        # Already in that state at Telegram (a second press): record it all the same.
        if "NOT_MODIFIED" not in exc.message:
            log.warning("editUserStarSubscription refused: %s", exc.message)
            await query.answer(t(lang, "subscription.unavailable"), show_alert=True)
            return
    try:
        sub = await backend.set_subscription_cancelled(sub.id, user_id, callback_data.cancel)
    except (BackendError, BackendUnavailable) as exc:
        log.warning("subscription %s: %s not recorded: %s", sub.id, callback_data.cancel, exc)
        await query.answer(t(lang, "subscription.unavailable"), show_alert=True)
        return
    await query.answer()
    key = "subscription.cancelled_now" if callback_data.cancel else "subscription.resumed_now"
    if query.message is not None:
        await send(tg, query.message.chat.id, t(lang, key, date=_date(sub.current_period_end)))


def create_router() -> Router:
    router = Router(name="subscriptions")
    router.message.register(show, Command("subscription"))
    router.callback_query.register(subscribe, SubscriptionPlanChoice.filter())
    router.callback_query.register(switch, SubscriptionSwitch.filter())
    return router
