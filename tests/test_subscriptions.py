"""Monthly plans through the bot: /subscription, the invoice link with subscription_period, the
first period and each renewal credited once, cancelling with editUserStarSubscription; and the
backend's refusals (docs/payments.md#subscriptions)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from comfygram.api import BackendError
from comfygram.settings import Settings, SubscriptionPlan
from tests.bot_helpers import World, fast_chat_pace, polling_world  # noqa: F401
from tests.doubles.telegram import UserDriver

pytestmark = [pytest.mark.usefixtures("fast_chat_pace"), pytest.mark.money]

MONTHLY = SubscriptionPlan(id="monthly", credits=100, stars=300)
SIGNUP = 3


@pytest.fixture
def database_url(tmp_path) -> str:
    """SQLite, as the other bot tests: the backend rules beneath are the payments' own."""
    return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"


@pytest.fixture
def plans() -> list[SubscriptionPlan]:
    return [MONTHLY]


@pytest.fixture
async def world(settings: Settings, plans: list[SubscriptionPlan]) -> AsyncIterator[World]:
    async with polling_world(settings.model_copy(update={"subscription_plans": plans})) as w:
        yield w


def _button(message: dict[str, Any], starting: str) -> dict[str, Any]:
    rows = message["reply_markup"]["inline_keyboard"]
    return next(b for row in rows for b in row if b["text"].startswith(starting))


async def _started(world: World, telegram_id: int) -> UserDriver:
    user = world.user(telegram_id)
    await user.send_command("start")
    await world.reply(user, containing="👋")
    return user


async def _overview(world: World, user: UserDriver, containing: str) -> dict[str, Any]:
    since = world.mark()
    await user.send_command("subscription")
    return (await world.reply(user, containing=containing, since=since)).result


async def _link(world: World, user: UserDriver) -> str:
    """Pick the monthly plan: the bot answers with the invoice link as a URL button."""
    overview = await _overview(world, user, "Monthly plans")
    since = world.mark()
    await user.press(overview, _button(overview, "100 credits a month")["callback_data"])
    offer = await world.reply(user, containing="Tap the button", since=since)
    return _button(offer.result, "Subscribe for 300")["url"]


async def test_a_plan_is_paid_renewed_once_per_charge_and_cancelled(world: World) -> None:
    user = await _started(world, 7101)
    link = await _link(world, user)
    [made] = world.telegram.sent("createInvoiceLink")
    assert (made.params["subscription_period"], made.params["currency"]) == (2592000, "XTR")
    assert made.params["prices"][0]["amount"] == 300

    # Telegram asks first for the first period; the backend approves the pending plan.
    payload = made.params["payload"]
    approved = await world.backend.precheck_payment(payload, 300, "XTR", telegram_id=7101)
    assert approved.credits == 100

    since = world.mark()
    await user.subscribe(link, "sub-charge-1")
    await world.reply(user, containing="Thank you", since=since)
    assert (await world.backend.user(7101)).balance == SIGNUP + 100

    # A renewal, delivered twice by Telegram: credited once.
    since = world.mark()
    renewal = await user.renew("sub-charge-1", "sub-charge-2")
    await world.reply(user, containing="Thank you", since=since)
    await user.resend()
    await world.settle()
    assert renewal is not None
    assert (await world.backend.user(7101)).balance == SIGNUP + 200
    [sub] = await world.backend.subscriptions(7101)
    expected_end = renewal["successful_payment"]["subscription_expiration_date"]
    assert sub.state == "active"
    assert int(sub.current_period_end.timestamp()) == expected_end
    assert sub.first_charge_id == "sub-charge-1"

    # Cancel: Telegram first, then our record; the plan runs to its end.
    overview = await _overview(world, user, "Next renewal")
    since = world.mark()
    await user.press(overview, _button(overview, "Cancel")["callback_data"])
    await world.reply(user, containing="Cancelled", since=since)
    [edit] = world.telegram.sent("editUserStarSubscription")
    assert edit.params["telegram_payment_charge_id"] == "sub-charge-1"
    assert world.telegram.subscriptions["sub-charge-1"].canceled is True
    [sub] = await world.backend.subscriptions(7101)
    assert sub.state == "cancelled"
    await _overview(world, user, "is cancelled")

    # And renewed again.
    overview = await _overview(world, user, "is cancelled")
    since = world.mark()
    await user.press(overview, _button(overview, "Renew")["callback_data"])
    await world.reply(user, containing="Renewing again", since=since)
    assert world.telegram.subscriptions["sub-charge-1"].canceled is False
    assert (await world.backend.subscriptions(7101))[0].state == "active"


async def test_what_the_backend_refuses(world: World, settings: Settings) -> None:
    user = await _started(world, 7102)
    link = await _link(world, user)
    [made] = world.telegram.sent("createInvoiceLink")
    payload = made.params["payload"]
    backend = world.backend

    with pytest.raises(BackendError) as wrong_amount:
        await backend.precheck_payment(payload, 299, "XTR", telegram_id=7102)
    assert wrong_amount.value.code == "amount_mismatch"
    with pytest.raises(BackendError) as not_yours:
        await backend.precheck_payment(payload, 300, "XTR", telegram_id=7999)
    assert not_yours.value.code == "payment_not_yours"
    with pytest.raises(BackendError) as unknown_plan:
        await backend.create_subscription(7102, "weekly")
    assert (unknown_plan.value.status, unknown_plan.value.code) == (404, "plan_not_found")

    await user.subscribe(link, "c-1")
    await world.reply(user, containing="Thank you")
    # Paid: its link cannot be paid a second time, and the plan is not sold to them twice.
    with pytest.raises(BackendError) as closed:
        await backend.precheck_payment(payload, 300, "XTR", telegram_id=7102)
    assert closed.value.code == "payment_closed"
    with pytest.raises(BackendError) as twice:
        await backend.create_subscription(7102, "monthly")
    assert (twice.value.status, twice.value.code) == (409, "already_subscribed")
    # The same period confirmed again (the bot's retry) is not credited again, and a renewal
    # confirmed twice at once is credited once.
    again = await backend.confirm_payment(payload, 300, "XTR", "c-1")
    assert again.credited is False
    both = await asyncio.gather(
        *(backend.confirm_payment(payload, 300, "XTR", "c-2") for _ in range(2))
    )
    assert sorted(p.credited for p in both) == [False, True]
    assert (await backend.user(7102)).balance == SIGNUP + 200


@pytest.mark.parametrize("plans", [[]])
async def test_no_plans_sold_means_no_subscription_menu(world: World) -> None:
    user = await _started(world, 7103)
    await _overview(world, user, "No monthly plans")
    commands = world.telegram.sent("setMyCommands")
    assert commands and all(
        "subscription" not in [c["command"] for c in call.params["commands"]] for call in commands
    )


async def test_a_first_period_rewards_the_referrer_once(world: World) -> None:
    """A referred user's first payment may be a plan: the referrer's bonus, once, as for a
    package; the renewals pay nothing more."""
    backend = world.backend
    await backend.register(7104)
    code = (await backend.invite(7104)).invite_code
    await backend.register(7105, referral=f"ref_{code}")
    plan = await backend.create_subscription(7105, "monthly")
    first = await backend.confirm_payment(plan.payload, 300, "XTR", "ref-sub-1")
    assert first.referral is not None and first.referral.telegram_id == 7104
    renewal = await backend.confirm_payment(plan.payload, 300, "XTR", "ref-sub-2")
    assert renewal.credited and renewal.referral is None
    bonus = world.settings.referral_bonus
    assert (await backend.user(7104)).balance == SIGNUP + bonus
    assert (await backend.user(7105)).balance == SIGNUP + 200
