"""Monthly plans paid in Telegram Stars (docs/payments.md#subscriptions).

A subscription is made pending when the user picks a plan; its invoice link's payload is on
every successful_payment of it, the first and each renewal. Each paid period is its own Payment
row (its charge id is the ledger key), so a renewal Telegram delivers twice is credited once.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from comfygram.backend import accounts, referrals
from comfygram.backend.errors import ApiError, not_found
from comfygram.backend.models import Payment, Subscription, User, as_utc, new_id, utcnow
from comfygram.domain import ledger
from comfygram.domain.ledger import Reason
from comfygram.settings import SubscriptionPlan

CURRENCY = "XTR"
PAYLOAD_PREFIX = "sub-"
# Telegram's only subscription period.
PERIOD = timedelta(days=30)


def is_subscription(payload: str) -> bool:
    return payload.startswith(PAYLOAD_PREFIX)


def state_of(subscription: Subscription, now: datetime | None = None) -> str:
    """pending | active | cancelled (paid up, not renewed) | expired."""
    end = as_utc(subscription.current_period_end)
    if subscription.status == "pending" or end is None:
        return "pending"
    if end < (now or utcnow()):
        return "expired"
    return subscription.status


async def current(session: AsyncSession, telegram_id: int) -> list[Subscription]:
    """The user's paid-up subscriptions (active or cancelled, not expired), newest first."""
    user = await accounts.get_user(session, telegram_id)
    rows = await session.scalars(
        select(Subscription)
        .where(Subscription.user_id == user.id, Subscription.status != "pending")
        .order_by(Subscription.created_at.desc())
    )
    return [s for s in rows if state_of(s) in ("active", "cancelled")]


async def create(session: AsyncSession, telegram_id: int, plan: SubscriptionPlan) -> Subscription:
    """A pending subscription to ``plan``, whose payload the invoice link carries."""
    user = await accounts.get_user(session, telegram_id)
    accounts.refuse_banned(user)
    if any(s.plan == plan.id for s in await current(session, telegram_id)):
        raise ApiError(
            409, "already_subscribed", f"User {telegram_id} already has the {plan.id} plan."
        )
    subscription = Subscription(
        user_id=user.id,
        plan=plan.id,
        credits=plan.credits,
        amount=plan.stars,
        payload=f"{PAYLOAD_PREFIX}{secrets.token_urlsafe(24)}",
    )
    session.add(subscription)
    await session.flush()
    return subscription


async def _by_payload(session: AsyncSession, payload: str) -> Subscription:
    subscription = await session.scalar(select(Subscription).where(Subscription.payload == payload))
    if subscription is None:
        raise not_found("payment", payload)
    return subscription


def _check_amount(subscription: Subscription, total_amount: int, currency: str) -> None:
    if currency != CURRENCY:
        raise ApiError(422, "currency_mismatch", f"The plan is paid in {CURRENCY}, not {currency}.")
    if total_amount != subscription.amount:
        raise ApiError(
            422,
            "amount_mismatch",
            f"The plan costs {subscription.amount} {CURRENCY} a month, not {total_amount}.",
        )


async def precheck(
    session: AsyncSession,
    payload: str,
    total_amount: int,
    currency: str,
    *,
    telegram_id: int | None,
    plans: list[SubscriptionPlan],
) -> tuple[Subscription, User]:
    """May the first period be paid now? Renewals are charged by Telegram without asking."""
    subscription = await _by_payload(session, payload)
    _check_amount(subscription, total_amount, currency)
    if subscription.status != "pending":
        raise ApiError(409, "payment_closed", "This subscription has already been paid.")
    user = await session.get(User, subscription.user_id)
    assert user is not None
    if telegram_id is not None and user.telegram_id != telegram_id:
        raise ApiError(
            403, "payment_not_yours", "This subscription was made for another Telegram account."
        )
    accounts.refuse_banned(user)
    plan = next((p for p in plans if p.id == subscription.plan), None)
    if plan is None or (plan.credits, plan.stars) != (subscription.credits, subscription.amount):
        raise ApiError(
            410,
            "payment_expired",
            f"Plan {subscription.plan} is no longer sold at {subscription.credits} credits for "
            f"{subscription.amount} {CURRENCY}; ask for a new link.",
        )
    return subscription, user


async def confirm_period(
    session: AsyncSession,
    payload: str,
    charge_id: str,
    total_amount: int,
    currency: str,
    *,
    expires_at: datetime | None = None,
    referral_bonus: int = 0,
    now: datetime | None = None,
) -> tuple[Payment, User, bool]:
    """Credit one paid period once per charge id; returns (payment, user, credited_now).

    The period's credits are the subscription's own, fixed when the user subscribed, as an
    invoice's are: a plan changed later applies to new subscribers. A first period that is the
    payer's first payment rewards their referrer, as a package does (referrals).
    """
    now = now or utcnow()
    subscription = await _by_payload(session, payload)
    _check_amount(subscription, total_amount, currency)
    user = await accounts.lock_user_by_id(session, subscription.user_id)
    await session.refresh(subscription, with_for_update=True)
    paid = await session.scalar(
        select(Payment).where(Payment.telegram_payment_charge_id == charge_id)
    )
    if paid is not None:
        if paid.subscription_id != subscription.id:
            raise ApiError(409, "charge_reused", "This Telegram charge paid something else.")
        return paid, user, False
    payment = Payment(
        id=new_id(),
        user_id=user.id,
        package=subscription.plan,
        credits=subscription.credits,
        amount=subscription.amount,
        currency=CURRENCY,
        status="paid",
        payload=f"{subscription.payload}.{secrets.token_hex(8)}",
        telegram_payment_charge_id=charge_id,
        paid_at=now,
        subscription_id=subscription.id,
    )
    session.add(payment)
    entry = await accounts.post(
        session,
        user,
        subscription.credits,
        Reason.PAYMENT,
        ledger.payment_key(charge_id),
        payment_id=payment.id,
        note=f"subscription {subscription.plan}",
    )
    if entry is None:
        raise ApiError(409, "charge_reused", "This Telegram charge was already credited.")
    if subscription.first_charge_id is None:
        subscription.first_charge_id = charge_id
    if subscription.status == "pending":
        subscription.status = "active"
    end = as_utc(subscription.current_period_end)
    subscription.current_period_end = expires_at or max(end or now, now) + PERIOD
    await session.flush()
    await referrals.reward_first_payment(session, user, payment, referral_bonus)
    return payment, user, True


async def set_cancelled(
    session: AsyncSession, subscription_id: str, telegram_id: int, cancelled: bool
) -> Subscription:
    """Record what editUserStarSubscription did: cancelled runs to its period's end."""
    subscription = await session.get(Subscription, subscription_id, with_for_update=True)
    user = await accounts.get_user(session, telegram_id)
    if subscription is None or subscription.user_id != user.id:
        raise not_found("subscription", subscription_id)
    if state_of(subscription) not in ("active", "cancelled"):
        raise ApiError(409, "subscription_not_active", "This subscription is not paid up.")
    subscription.status = "cancelled" if cancelled else "active"
    subscription.cancelled_at = utcnow() if cancelled else None
    await session.flush()
    return subscription
