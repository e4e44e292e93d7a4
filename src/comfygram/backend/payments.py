"""Telegram Stars payments: a pending payment per invoice, credited once per charge id.

The guarantees (docs/payments.md): an invoice is paid at the credits and Stars fixed in its
row when /buy made it; pre-checkout approves one payment of an invoice at a time; a charge
that cannot be credited is recorded once in charge_refunds and given back with
refundStarPayment, by exactly one caller at a time, and marked refunded once.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from comfygram.backend import accounts, referrals
from comfygram.backend.errors import ApiError, not_found
from comfygram.backend.models import ChargeRefund, LedgerEntry, Payment, User, as_utc, utcnow
from comfygram.domain import ledger
from comfygram.domain.ledger import Reason
from comfygram.settings import CreditPackage

CURRENCY = "XTR"

# After a pre-checkout is approved, a second one for the same invoice is refused this long.
# Telegram gives the bot 10 s to answer and, for Stars, charges right after an approval (there
# is no card step), so a real payment in flight lands within seconds. After a minute with no
# successful_payment the approved attempt is taken as abandoned (the answer came too late, the
# client went away) and the owner may try again; should the first charge still arrive, it is
# credited and the second is refunded automatically.
PRECHECKOUT_HOLD_SECONDS = 60.0

# How long one caller may hold a refund while it calls refundStarPayment before another
# caller (the bot's retry loop) may take it over. Telegram itself refuses a second refund of
# a charge (CHARGE_ALREADY_REFUNDED), so a takeover never refunds twice.
REFUND_LEASE_SECONDS = 60.0


def _now(now: datetime | None) -> datetime:
    return now or utcnow()


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


async def _by_payload(session: AsyncSession, payload: str, *, lock: bool = False) -> Payment:
    query = select(Payment).where(Payment.payload == payload)
    if lock:
        query = query.with_for_update()
    payment = await session.scalar(query)
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


def _check_current(
    payment: Payment, packages: list[CreditPackage], ttl_seconds: float, now: datetime
) -> None:
    """Refuse an invoice older than the TTL, or whose package is gone or now sold on other
    terms: the operator's CREDIT_PACKAGES change applies to every invoice not yet approved."""
    created = as_utc(payment.created_at)
    if created is not None and now - created > timedelta(seconds=ttl_seconds):
        raise ApiError(
            410,
            "payment_expired",
            f"This invoice expired: invoices can be paid for {ttl_seconds / 3600:g} h.",
        )
    package = next((p for p in packages if p.id == payment.package), None)
    if package is None or (package.credits, package.stars) != (payment.credits, payment.amount):
        raise ApiError(
            410,
            "payment_expired",
            f"Package {payment.package} is no longer sold at {payment.credits} credits for "
            f"{payment.amount} {payment.currency}; ask for a new invoice.",
        )


async def precheck(
    session: AsyncSession,
    payload: str,
    total_amount: int,
    currency: str,
    *,
    telegram_id: int | None,
    packages: list[CreditPackage],
    ttl_seconds: float,
    now: datetime | None = None,
) -> Payment:
    """What the bot asks before answering pre_checkout_query: may this invoice be paid now?

    Yes reserves the invoice: precheckout_at is set in the same statement that checks it is
    free, so of two pre-checkouts at once exactly one is approved. The caller commits.
    """
    now = _now(now)
    payment = await _by_payload(session, payload)
    _check_amount(payment, total_amount, currency)
    if payment.status != "pending":
        raise ApiError(409, "payment_closed", "This invoice has already been paid.")
    user = await session.get(User, payment.user_id)
    if user is not None:
        if telegram_id is not None and user.telegram_id != telegram_id:
            # A copy forwarded before invoices carried a start_parameter still has Pay.
            raise ApiError(
                403, "payment_not_yours", "This invoice was made for another Telegram account."
            )
        # Before Telegram takes the Stars; a payment already made (confirm) is always credited.
        accounts.refuse_banned(user)
    _check_current(payment, packages, ttl_seconds, now)
    held_since = now - timedelta(seconds=PRECHECKOUT_HOLD_SECONDS)
    reserved = await session.execute(
        update(Payment)
        .where(
            Payment.id == payment.id,
            Payment.status == "pending",
            or_(Payment.precheckout_at.is_(None), Payment.precheckout_at < held_since),
        )
        .values(precheckout_at=now)
        .execution_options(synchronize_session=False)
    )
    if reserved.rowcount != 1:
        raise ApiError(
            409,
            "payment_in_progress",
            "This invoice is being paid right now; a second payment is refused for "
            f"{PRECHECKOUT_HOLD_SECONDS:g} s after the first was approved.",
        )
    payment.precheckout_at = now
    return payment


async def _refund_of(session: AsyncSession, charge_id: str) -> ChargeRefund | None:
    return await session.get(ChargeRefund, charge_id, populate_existing=True)


async def confirm(
    session: AsyncSession,
    payload: str,
    charge_id: str,
    total_amount: int,
    currency: str,
    *,
    packages: list[CreditPackage],
    ttl_seconds: float,
    now: datetime | None = None,
    referral_bonus: int = 0,
) -> tuple[Payment, User, bool]:
    """Credit the payment once per charge id; returns (payment, user, credited_now).

    Credits the row's own credits, whatever CREDIT_PACKAGES says now: that is what the user
    saw on the invoice and what the pre-checkout approved. When this is the payer's first
    paid payment and someone invited them, the referrer gets ``referral_bonus`` (the
    REFERRAL_BONUS setting; 0 = off) in the same transaction (referrals.reward_of finds it).
    """
    now = _now(now)
    payment = await _by_payload(session, payload)
    _check_amount(payment, total_amount, currency)
    user = await accounts.lock_user_by_id(session, payment.user_id)
    await session.refresh(payment, with_for_update=True)
    if payment.status == "paid":
        if payment.telegram_payment_charge_id != charge_id:
            raise ApiError(
                409, "payment_closed", "This invoice was already paid with another charge."
            )
        return payment, user, False
    if await _refund_of(session, charge_id) is not None:
        raise ApiError(409, "charge_refunded", "This Telegram charge is being given back.")
    if payment.precheckout_at is None:
        # Telegram always asks first; a charge no pre-checkout approved must be current.
        _check_current(payment, packages, ttl_seconds, now)
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
    payment.paid_at = now
    await session.flush()
    await referrals.reward_first_payment(session, user, payment, referral_bonus)
    return payment, user, True


# -- charges that cannot be credited: given back with refundStarPayment ------------------------


async def _why_uncreditable(
    session: AsyncSession,
    payload: str,
    charge_id: str,
    total_amount: int,
    currency: str,
    packages: list[CreditPackage],
    ttl_seconds: float,
    now: datetime,
) -> tuple[str, Payment | None]:
    """The refusal code confirm gives this charge, with the payment row held; raises 409
    when the charge was credited or could be credited now (never refund what we credit)."""
    credited = await session.scalar(
        select(LedgerEntry.id).where(LedgerEntry.idempotency_key == ledger.payment_key(charge_id))
    )
    if credited is not None:
        raise ApiError(409, "charge_credited", "This Telegram charge was credited; not refunded.")
    try:
        payment = await _by_payload(session, payload, lock=True)
    except ApiError as exc:
        return exc.code, None
    try:
        _check_amount(payment, total_amount, currency)
        if payment.status != "pending":
            return "payment_closed", payment
        if payment.precheckout_at is None:
            _check_current(payment, packages, ttl_seconds, now)
    except ApiError as exc:
        return exc.code, payment
    raise ApiError(
        409, "payment_creditable", "This invoice can still be paid by this charge: confirm it."
    )


async def add_charge_refund(session: AsyncSession, refund: ChargeRefund) -> None:
    """Write a charge's refund row, unless another report of the same charge got there first
    (one row per charge id, whoever reports it)."""
    try:
        async with session.begin_nested():
            session.add(refund)
    except IntegrityError:
        pass


async def _claim(session: AsyncSession, charge_id: str, now: datetime) -> bool:
    """Take the refund for REFUND_LEASE_SECONDS if nobody holds it and it is still due."""
    claimed = await session.execute(
        update(ChargeRefund)
        .where(
            ChargeRefund.telegram_payment_charge_id == charge_id,
            ChargeRefund.refunded_at.is_(None),
            ChargeRefund.failed_at.is_(None),
            or_(ChargeRefund.claimed_until.is_(None), ChargeRefund.claimed_until < now),
        )
        .values(
            claimed_until=now + timedelta(seconds=REFUND_LEASE_SECONDS),
            attempts=ChargeRefund.attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )
    return claimed.rowcount == 1


async def record_refund(
    session: AsyncSession,
    *,
    payload: str,
    charge_id: str,
    total_amount: int,
    currency: str,
    telegram_id: int,
    chat_id: int,
    language: str | None,
    packages: list[CreditPackage],
    ttl_seconds: float,
    now: datetime | None = None,
) -> tuple[ChargeRefund, bool]:
    """Record (once per charge id) that a charge cannot be credited and must be given back,
    and claim it for the caller; returns (refund, claimed). The caller commits.

    Whoever reports the charge first creates the row; later reports (a redelivered
    successful_payment, a second bot process) find it and claim it only if it is still due
    and its lease has run out.
    """
    now = _now(now)
    refund = await _refund_of(session, charge_id)
    if refund is None:
        reason, payment = await _why_uncreditable(
            session, payload, charge_id, total_amount, currency, packages, ttl_seconds, now
        )
        await add_charge_refund(
            session,
            ChargeRefund(
                telegram_payment_charge_id=charge_id,
                telegram_id=telegram_id,
                chat_id=chat_id,
                language=language,
                payload=payload,
                payment_id=payment.id if payment is not None else None,
                amount=total_amount,
                currency=currency,
                reason=reason,
                created_at=now,
            ),
        )
    claimed = await _claim(session, charge_id, now)
    refund = await _refund_of(session, charge_id)
    assert refund is not None
    return refund, claimed


async def claim_refund(
    session: AsyncSession, charge_id: str, now: datetime | None = None
) -> tuple[ChargeRefund, bool]:
    """Claim a recorded refund (the retry loop); returns (refund, claimed)."""
    refund = await _refund_of(session, charge_id)
    if refund is None:
        raise not_found("refund", charge_id)
    claimed = await _claim(session, charge_id, _now(now))
    refund = await _refund_of(session, charge_id)
    assert refund is not None
    return refund, claimed


async def finish_refund(
    session: AsyncSession,
    charge_id: str,
    outcome: str,
    error: str | None,
    now: datetime | None = None,
) -> tuple[ChargeRefund, bool]:
    """What refundStarPayment answered; returns (refund, changed_now).

    ``refunded``: Telegram gave the Stars back (or says it already had): refunded_at is set
    once, and only the caller that set it tells the user. ``failed``: Telegram refused for
    good; an operator has to look. ``retry``: a network error; the lease is let go so the
    next round tries again.
    """
    now = _now(now)
    refund = await _refund_of(session, charge_id)
    if refund is None:
        raise not_found("refund", charge_id)
    still_due = (
        ChargeRefund.telegram_payment_charge_id == charge_id,
        ChargeRefund.refunded_at.is_(None),
    )
    if outcome == "refunded":
        values: dict[str, object] = {"refunded_at": now, "claimed_until": None, "error": None}
    elif outcome == "failed":
        values = {"failed_at": now, "claimed_until": None, "error": error}
    else:
        values = {"claimed_until": None, "error": error}
    query = update(ChargeRefund).where(*still_due)
    if outcome == "failed":
        query = query.where(ChargeRefund.failed_at.is_(None))
    changed = await session.execute(
        query.values(**values).execution_options(synchronize_session=False)
    )
    refund = await _refund_of(session, charge_id)
    assert refund is not None
    return refund, changed.rowcount == 1 and outcome != "retry"


async def due_refunds(
    session: AsyncSession, *, limit: int = 50, now: datetime | None = None
) -> list[ChargeRefund]:
    """Refunds still to make whose lease is free, oldest first."""
    now = _now(now)
    rows = await session.scalars(
        select(ChargeRefund)
        .where(
            ChargeRefund.refunded_at.is_(None),
            ChargeRefund.failed_at.is_(None),
            or_(ChargeRefund.claimed_until.is_(None), ChargeRefund.claimed_until < now),
        )
        .order_by(ChargeRefund.created_at)
        .limit(limit)
    )
    return list(rows)
