from __future__ import annotations

from fastapi import APIRouter

from comfygram import metrics
from comfygram.backend import payments
from comfygram.backend.deps import SessionDep, SettingsDep
from comfygram.backend.errors import ApiError
from comfygram.backend.models import User
from comfygram.backend.schemas import (
    Invoice,
    PaymentCheck,
    PaymentConfirm,
    PaymentCreate,
    PaymentOut,
)

router = APIRouter(prefix="/api/payments", tags=["payments"])


@router.post("/create", status_code=201, response_model=Invoice)
async def create_payment(
    body: PaymentCreate, session: SessionDep, settings: SettingsDep
) -> Invoice:
    """A pending payment for a credit package, with what the bot's sendInvoice needs."""
    package = settings.package(body.package)
    if package is None:
        known = ", ".join(p.id for p in settings.credit_packages)
        raise ApiError(
            404, "package_not_found", f"No package {body.package}; choose one of: {known}."
        )
    payment = await payments.create(session, body.telegram_id, package)
    await session.commit()
    return Invoice(
        payment_id=payment.id,
        payload=payment.payload,
        title=f"{package.credits} credits",
        description=f"{package.credits} credits for photo edits",
        currency=payment.currency,
        amount=payment.amount,
        credits=payment.credits,
    )


@router.post("/precheck", response_model=PaymentOut)
async def precheck_payment(body: PaymentCheck, session: SessionDep) -> PaymentOut:
    """Whether an invoice can still be paid, for answering pre_checkout_query."""
    payment = await payments.precheck(session, body.payload, body.total_amount, body.currency)
    user = await session.get(User, payment.user_id)
    return PaymentOut.of(payment, user.balance, credited=False)


@router.post("/confirm", response_model=PaymentOut)
async def confirm_payment(body: PaymentConfirm, session: SessionDep) -> PaymentOut:
    """Credit a successful Stars payment once per telegram_payment_charge_id."""
    payment, user, credited = await payments.confirm(
        session, body.payload, body.telegram_payment_charge_id, body.total_amount, body.currency
    )
    await session.commit()
    if credited:
        metrics.PAYMENTS.labels(payment.package).inc()
        metrics.CREDITS_SOLD.inc(payment.credits)
        metrics.STARS_RECEIVED.inc(payment.amount)
    return PaymentOut.of(payment, user.balance, credited)
