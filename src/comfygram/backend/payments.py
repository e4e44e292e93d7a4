"""Telegram Stars payments: a pending payment per invoice, credited once per charge id."""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from comfygram.backend import accounts
from comfygram.backend.errors import ApiError, not_found
from comfygram.backend.models import Payment, User, utcnow
from comfygram.domain import ledger
from comfygram.domain.ledger import Reason
from comfygram.settings import CreditPackage

CURRENCY = "XTR"


async def create(session: AsyncSession, telegram_id: int, package: CreditPackage) -> Payment:
    user = await accounts.get_user(session, telegram_id)
    accounts.refuse_banned(user)
    payment = Payment(
        user_id=user.id,
        package=package.id,
        credits=package.credits,
        amount=package.stars,
        currency=CURRENCY,
        payload=f"cg-{secrets.token_urlsafe(24)}",
    )
    session.add(payment)
    await session.flush()
    return payment


async def _pending(session: AsyncSession, payload: str) -> Payment:
    payment = await session.scalar(select(Payment).where(Payment.payload == payload))
    if payment is None:
        raise not_found("payment", payload)
    return payment


def _check_amount(payment: Payment, total_amount: int, currency: str) -> None:
    if currency != payment.currency:
        raise ApiError(
            422,
            "currency_mismatch",
            f"The payment is in {payment.currency}, not {currency}.",
        )
    if total_amount != payment.amount:
        raise ApiError(
            422,
            "amount_mismatch",
            f"The invoice was for {payment.amount} {payment.currency}, not {total_amount}.",
        )


async def precheck(
    session: AsyncSession, payload: str, total_amount: int, currency: str
) -> Payment:
    """What the bot asks before answering pre_checkout_query: is this invoice still payable?"""
    payment = await _pending(session, payload)
    _check_amount(payment, total_amount, currency)
    if payment.status != "pending":
        raise ApiError(409, "payment_closed", "This invoice has already been paid.")
    # Before Telegram takes the Stars; a payment already made (confirm) is always credited.
    user = await session.get(User, payment.user_id)
    if user is not None:
        accounts.refuse_banned(user)
    return payment


async def confirm(
    session: AsyncSession, payload: str, charge_id: str, total_amount: int, currency: str
) -> tuple[Payment, User, bool]:
    """Credit the payment once per charge id; returns (payment, user, credited_now)."""
    payment = await _pending(session, payload)
    _check_amount(payment, total_amount, currency)
    user = await accounts.lock_user_by_id(session, payment.user_id)
    await session.refresh(payment, with_for_update=True)
    if payment.status == "paid":
        if payment.telegram_payment_charge_id != charge_id:
            raise ApiError(
                409, "payment_closed", "This invoice was already paid with another charge."
            )
        return payment, user, False
    entry = await accounts.post(
        session,
        user,
        payment.credits,
        Reason.PAYMENT,
        ledger.payment_key(charge_id),
        payment_id=payment.id,
    )
    if entry is None:
        raise ApiError(409, "charge_reused", "This Telegram charge was already credited.")
    payment.status = "paid"
    payment.telegram_payment_charge_id = charge_id
    payment.paid_at = utcnow()
    await session.flush()
    return payment, user, True
