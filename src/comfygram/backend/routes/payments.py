from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Path, Query, Request

from comfygram import metrics
from comfygram.backend import payment_refunds, payments, referrals, subscriptions, support
from comfygram.backend.deps import SessionDep, SettingsDep
from comfygram.backend.errors import ApiError
from comfygram.backend.models import User
from comfygram.backend.schemas import (
    ChargeRefundCreate,
    ChargeRefundOut,
    ChargeRefundResult,
    Invoice,
    PaymentCheck,
    PaymentConfirm,
    PaymentCreate,
    PaymentOut,
    PaymentRefundOut,
    PaymentRefundPreview,
    PaymentRefundRequest,
    RecentPaymentOut,
    ReferralRewardOut,
    RefundedPayment,
    SupportRequestCreate,
    SupportRequestOut,
)

router = APIRouter(prefix="/api/payments", tags=["payments"])

ChargeId = Path(min_length=1, max_length=200)


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
async def precheck_payment(
    body: PaymentCheck, session: SessionDep, settings: SettingsDep
) -> PaymentOut:
    """Whether an invoice can be paid now, for answering pre_checkout_query; yes holds it."""
    if subscriptions.is_subscription(body.payload):
        subscription, user = await subscriptions.precheck(
            session,
            body.payload,
            body.total_amount,
            body.currency,
            telegram_id=body.telegram_id,
            plans=settings.subscription_plans,
        )
        return PaymentOut(
            id=subscription.id,
            status="pending",
            package=subscription.plan,
            credits=subscription.credits,
            amount=subscription.amount,
            currency=subscriptions.CURRENCY,
            telegram_payment_charge_id=None,
            credited=False,
            balance=user.balance,
        )
    payment = await payments.precheck(
        session,
        body.payload,
        body.total_amount,
        body.currency,
        telegram_id=body.telegram_id,
        packages=settings.credit_packages,
        ttl_seconds=settings.payment_invoice_ttl_seconds,
    )
    await session.commit()
    user = await session.get(User, payment.user_id)
    return PaymentOut.of(payment, user.balance, credited=False)


@router.post("/confirm", response_model=PaymentOut)
async def confirm_payment(
    body: PaymentConfirm, session: SessionDep, settings: SettingsDep
) -> PaymentOut:
    """Credit a successful Stars payment once per telegram_payment_charge_id (a subscription's
    first period and each renewal alike)."""
    if subscriptions.is_subscription(body.payload):
        expires = body.subscription_expiration_date
        payment, user, credited = await subscriptions.confirm_period(
            session,
            body.payload,
            body.telegram_payment_charge_id,
            body.total_amount,
            body.currency,
            expires_at=datetime.fromtimestamp(expires, UTC) if expires else None,
            referral_bonus=settings.referral_bonus,
        )
    else:
        payment, user, credited = await payments.confirm(
            session,
            body.payload,
            body.telegram_payment_charge_id,
            body.total_amount,
            body.currency,
            packages=settings.credit_packages,
            ttl_seconds=settings.payment_invoice_ttl_seconds,
            referral_bonus=settings.referral_bonus,
        )
    reward = await referrals.reward_of(session, payment) if credited else None
    await session.commit()
    if credited:
        metrics.PAYMENTS.labels(payment.package).inc()
        metrics.CREDITS_SOLD.inc(payment.credits)
        metrics.STARS_RECEIVED.inc(payment.amount)
    referral = ReferralRewardOut(**vars(reward)) if reward is not None else None
    return PaymentOut.of(payment, user.balance, credited, referral)


@router.post("/refunds", response_model=ChargeRefundOut)
async def record_refund(
    body: ChargeRefundCreate, session: SessionDep, settings: SettingsDep
) -> ChargeRefundOut:
    """A charge confirm refused: record it once for a refund and hand it to the caller
    (``claimed``) if nobody else is refunding it right now."""
    refund, claimed = await payments.record_refund(
        session,
        payload=body.payload,
        charge_id=body.telegram_payment_charge_id,
        total_amount=body.total_amount,
        currency=body.currency,
        telegram_id=body.telegram_id,
        chat_id=body.chat_id,
        language=body.language,
        packages=settings.credit_packages,
        ttl_seconds=settings.payment_invoice_ttl_seconds,
    )
    await session.commit()
    return ChargeRefundOut.of(refund, claimed=claimed)


@router.get("/refunds", response_model=list[ChargeRefundOut])
async def due_refunds(
    session: SessionDep, limit: int = Query(default=50, ge=1, le=500)
) -> list[ChargeRefundOut]:
    """Refunds still to make that nobody holds now, oldest first (the bot's retry loop)."""
    return [ChargeRefundOut.of(r) for r in await payments.due_refunds(session, limit=limit)]


@router.post("/refunds/{charge_id}/claim", response_model=ChargeRefundOut)
async def claim_refund(session: SessionDep, charge_id: str = ChargeId) -> ChargeRefundOut:
    refund, claimed = await payments.claim_refund(session, charge_id)
    await session.commit()
    return ChargeRefundOut.of(refund, claimed=claimed)


@router.post("/refunds/{charge_id}/result", response_model=ChargeRefundOut)
async def refund_result(
    body: ChargeRefundResult, session: SessionDep, charge_id: str = ChargeId
) -> ChargeRefundOut:
    """What refundStarPayment answered; ``changed`` tells the one caller to inform the user."""
    refund, changed = await payments.finish_refund(session, charge_id, body.outcome, body.error)
    await session.commit()
    if changed and body.outcome == "refunded":
        metrics.STARS_REFUNDED.inc(refund.amount)
    return ChargeRefundOut.of(refund, changed=changed)


# -- operator refunds of credited payments, refunded_payment, /paysupport (issue 14) -----------


@router.get("/{ref}/refund", response_model=PaymentRefundPreview)
async def refund_preview(
    session: SessionDep, ref: str = Path(min_length=1, max_length=200)
) -> PaymentRefundPreview:
    """What refunding this payment (charge id or payment id) would take back now."""
    return PaymentRefundPreview.of(await payment_refunds.preview(session, ref))


@router.post("/{ref}/refund", response_model=PaymentRefundOut)
async def refund_payment(
    body: PaymentRefundRequest,
    request: Request,
    settings: SettingsDep,
    ref: str = Path(min_length=1, max_length=200),
) -> PaymentRefundOut:
    """An operator's refund: refundStarPayment once, the credits taken back once."""
    payment_refunds.require_bot(settings)
    done = await payment_refunds.refund(
        request.app.state.sessions,
        ref,
        actor=body.actor,
        reason=body.reason,
        call_telegram=payment_refunds.telegram_refunder(settings),
    )
    if done.changed and done.payment is not None:
        metrics.STARS_REFUNDED.inc(done.payment.amount)
        # The one call that marked it refunded tells the user (else the bot's refunded_payment did).
        await support.tell_refunded(settings, request.app.state.redis, done)
    return PaymentRefundOut.of(done)


@router.post("/refunded", response_model=PaymentRefundOut)
async def payment_refunded(body: RefundedPayment, session: SessionDep) -> PaymentRefundOut:
    """A refunded_payment service message (our refund or Telegram's): credits taken back once."""
    done = await payment_refunds.refunded_by_telegram(
        session,
        charge_id=body.telegram_payment_charge_id,
        payload=body.payload,
        total_amount=body.total_amount,
        currency=body.currency,
        telegram_id=body.telegram_id,
        chat_id=body.chat_id,
        language=body.language,
    )
    await session.commit()
    if done.changed and done.payment is not None:
        metrics.STARS_REFUNDED.inc(done.payment.amount)
    return PaymentRefundOut.of(done)


@router.get("/recent", response_model=list[RecentPaymentOut])
async def recent_payments(
    session: SessionDep,
    telegram_id: int = Query(gt=0, le=2**63 - 1),
    limit: int = Query(default=support.RECENT_PAYMENTS, ge=1, le=20),
) -> list[RecentPaymentOut]:
    """A user's latest paid or refunded payments (for /paysupport)."""
    rows = await support.recent_payments(session, telegram_id, limit)
    return [RecentPaymentOut.of(p) for p in rows]


@router.post("/support", status_code=201, response_model=SupportRequestOut)
async def open_support_request(
    body: SupportRequestCreate, session: SessionDep
) -> SupportRequestOut:
    """Store a /paysupport request for the admin panel."""
    request, user = await support.open_request(
        session, body.telegram_id, body.chat_id, body.payment_id, body.text
    )
    await session.commit()
    return SupportRequestOut.of(request, user.telegram_id)
