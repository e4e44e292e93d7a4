"""Refunds of credited Stars payments: the operator's (admin panel, REST API) and Telegram's
(a ``refunded_payment`` service message, e.g. after a dispute). docs/payments.md, "Refunds".

``take_back`` is the one place the credits of a refunded payment are taken back: one ledger
entry keyed ``payment:<charge>:refund``, whoever reports the refund first. The policy on spent
credits: the entry takes back what is left of the payment's credits, never more than the
balance (a balance never goes below zero); the shortfall is written in the entry's note, and
when nothing is left no entry is written at all (the ledger has no zero entries) and the
payment's ``refund_reason`` says so. See ``take_back_of`` for how a reader tells the cases
apart.

The operator's refund claims the payment (``refund_claimed_at``, a lease), commits, calls
``refundStarPayment`` once, then takes the credits back; Telegram's
``CHARGE_ALREADY_REFUNDED`` counts as done, a network error releases the claim.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfygram.backend import accounts, payments
from comfygram.backend.errors import ApiError, not_found
from comfygram.backend.models import ChargeRefund, LedgerEntry, Payment, User, utcnow
from comfygram.domain import ledger
from comfygram.domain.ledger import Reason
from comfygram.domain.refunds import take_back_amount
from comfygram.settings import Settings

log = logging.getLogger(__name__)

# How long an operator's claim on a payment holds while refundStarPayment is called. A claim
# whose holder died runs out and may be taken again: Telegram refuses a second refund of one
# charge (CHARGE_ALREADY_REFUNDED, taken as done), so a takeover never refunds twice.
CLAIM_LEASE_SECONDS = 120.0
# Who took the credits back when Telegram reported a refund nobody here asked for.
TELEGRAM_ACTOR = "telegram"
# charge_refunds.reason of a charge Telegram refunded before we ever credited it.
REFUNDED_UNCREDITED = "refunded_before_credit"
# Written into refund_reason when nothing could be taken back (the balance was 0).
NOTHING_TAKEN_BACK = "nothing taken back"

ALREADY_REFUNDED = "CHARGE_ALREADY_REFUNDED"


class TelegramUnavailable(Exception):
    """refundStarPayment did not answer (network error, 5xx, flood control)."""


class TelegramRefused(Exception):
    """refundStarPayment answered no for good (CHARGE_NOT_FOUND, ...)."""


# (telegram user id, charge id) -> None once the Stars went back (or already had).
RefundCall = Callable[[int, str], Awaitable[None]]


@dataclass
class Preview:
    """What an operator's refund of this payment would do, shown before confirming."""

    payment: Payment
    user: User
    credits: int  # what the payment bought
    balance: int  # the user's balance now
    take_back: int  # what would be taken back now: min(credits, balance)
    shortfall: int  # credits already spent, which stay spent
    refundable: bool
    why_not: str | None


@dataclass
class TakeBack:
    """A refunded payment's take-back, as done by this call or found done before."""

    payment: Payment | None  # None: the charge was never credited here
    user: User | None
    taken_back: int
    shortfall: int
    changed: bool  # this call marked the payment refunded

    @property
    def credited(self) -> bool:
        return self.payment is not None


def _now(now: datetime | None) -> datetime:
    return now or utcnow()


async def find(session: AsyncSession, ref: str) -> Payment:
    """A payment by its Telegram charge id, or by its own id (the admin panel's rows)."""
    payment = await session.scalar(select(Payment).where(Payment.telegram_payment_charge_id == ref))
    if payment is None and len(ref) <= 36:
        payment = await session.get(Payment, ref)
    if payment is None:
        raise not_found("payment", ref)
    return payment


async def _entry(session: AsyncSession, charge_id: str) -> LedgerEntry | None:
    return await session.scalar(
        select(LedgerEntry).where(
            LedgerEntry.idempotency_key == ledger.payment_refund_key(charge_id)
        )
    )


async def take_back_of(session: AsyncSession, payment: Payment) -> tuple[int, int]:
    """(taken back, shortfall) of a refunded payment: its payment_refund entry, or, when it
    has none, nothing taken back (the balance was 0 when the refund came)."""
    assert payment.telegram_payment_charge_id is not None
    entry = await _entry(session, payment.telegram_payment_charge_id)
    taken = -entry.amount if entry is not None else 0
    return taken, payment.credits - taken


def _refundable(payment: Payment) -> str | None:
    """Why an operator cannot refund this payment, or None."""
    if payment.status == "pending":
        return "This invoice was never paid: there is nothing to refund."
    if payment.status not in ("paid", "refunded"):
        return f"This payment is {payment.status}; only a paid one can be refunded."
    return None


async def preview(session: AsyncSession, ref: str) -> Preview:
    payment = await find(session, ref)
    user = await session.get(User, payment.user_id)
    assert user is not None
    why_not = _refundable(payment)
    if payment.status == "refunded":
        taken, shortfall = await take_back_of(session, payment)
        why_not = "This payment was already refunded."
    else:
        taken, shortfall = take_back_amount(payment.credits, user.balance)
    return Preview(
        payment=payment,
        user=user,
        credits=payment.credits,
        balance=user.balance,
        take_back=taken,
        shortfall=shortfall,
        refundable=why_not is None,
        why_not=why_not,
    )


async def take_back(
    session: AsyncSession,
    charge_id: str,
    *,
    actor: str = TELEGRAM_ACTOR,
    reason: str | None = None,
    now: datetime | None = None,
) -> TakeBack:
    """Take back the credits of a refunded charge, once; the caller commits.

    Under the user's lock: one PAYMENT_REFUND entry of -min(credits, balance), the payment
    marked refunded. A replay (the other of our call's answer and Telegram's message) changes
    nothing. A charge that was never credited has nothing to take back.
    """
    now = _now(now)
    payment = await session.scalar(
        select(Payment).where(Payment.telegram_payment_charge_id == charge_id)
    )
    if payment is None:
        return TakeBack(None, None, 0, 0, changed=False)
    user = await accounts.lock_user_by_id(session, payment.user_id)
    await session.refresh(payment, with_for_update=True)
    if payment.status == "refunded":
        taken, shortfall = await take_back_of(session, payment)
        return TakeBack(payment, user, taken, shortfall, changed=False)
    taken, shortfall = take_back_amount(payment.credits, user.balance)
    if taken > 0:
        note = f"refund of {payment.amount} {payment.currency} (charge {charge_id})"
        if shortfall:
            note += f"; {shortfall} of its {payment.credits} credits were already spent"
        await accounts.post(
            session,
            user,
            -taken,
            Reason.PAYMENT_REFUND,
            ledger.payment_refund_key(charge_id),
            payment_id=payment.id,
            actor=payment.refund_actor or actor,
            note=note[:500],
        )
    payment.status = "refunded"
    payment.refunded_at = now
    payment.refund_claimed_at = None
    if payment.refund_actor is None:
        payment.refund_actor = actor
    if reason and not payment.refund_reason:
        payment.refund_reason = reason[:500]
    if taken == 0:
        spent = f"{NOTHING_TAKEN_BACK}: the balance was 0, all {payment.credits} credits spent"
        payment.refund_reason = "; ".join(p for p in (payment.refund_reason, spent) if p)[:500]
    await session.flush()
    return TakeBack(payment, user, taken, shortfall, changed=True)


async def refunded_by_telegram(
    session: AsyncSession,
    *,
    charge_id: str,
    payload: str,
    total_amount: int,
    currency: str,
    telegram_id: int,
    chat_id: int,
    language: str | None,
    now: datetime | None = None,
) -> TakeBack:
    """A refunded_payment service message: take the credits back once. A charge we never
    credited is written down as refunded in charge_refunds, so that a successful_payment
    arriving late (or reconciliation) never credits Stars that already went back."""
    now = _now(now)
    invoice = await session.scalar(select(Payment).where(Payment.payload == payload))
    if invoice is not None:
        # The user's lock first, as confirm takes it: a confirm of this very charge running
        # now is either done (and taken back below) or sees the refund row and refuses.
        await accounts.lock_user_by_id(session, invoice.user_id)
    done = await take_back(session, charge_id, now=now)
    if done.credited:
        return done
    if await session.get(ChargeRefund, charge_id) is None:
        await payments.add_charge_refund(
            session,
            ChargeRefund(
                telegram_payment_charge_id=charge_id,
                telegram_id=telegram_id,
                chat_id=chat_id,
                language=language,
                payload=payload,
                payment_id=invoice.id if invoice is not None else None,
                amount=total_amount,
                currency=currency,
                reason=REFUNDED_UNCREDITED,
                created_at=now,
                refunded_at=now,
            ),
        )
    return done


async def _claim(
    session: AsyncSession, payment: Payment, actor: str, reason: str, now: datetime
) -> bool:
    lease_over = now - timedelta(seconds=CLAIM_LEASE_SECONDS)
    claimed = await session.execute(
        update(Payment)
        .where(
            Payment.id == payment.id,
            Payment.status == "paid",
            or_(Payment.refund_claimed_at.is_(None), Payment.refund_claimed_at < lease_over),
        )
        .values(refund_claimed_at=now, refund_actor=actor[:64], refund_reason=reason[:500])
        .execution_options(synchronize_session=False)
    )
    return claimed.rowcount == 1


async def _release(sessions: async_sessionmaker, payment_id: str) -> None:
    async with sessions() as session:
        await session.execute(
            update(Payment)
            .where(Payment.id == payment_id, Payment.status == "paid")
            .values(refund_claimed_at=None)
            .execution_options(synchronize_session=False)
        )
        await session.commit()


async def refund(
    sessions: async_sessionmaker,
    ref: str,
    *,
    actor: str,
    reason: str,
    call_telegram: RefundCall,
    now: datetime | None = None,
) -> TakeBack:
    """An operator's refund of a credited payment: Stars back with refundStarPayment (called
    by one caller only), credits taken back once. Refunding a refunded payment again answers
    what was done, without calling Telegram."""
    reason = reason.strip()
    if not reason:
        raise ApiError(422, "reason_required", "Say why the payment is refunded (reason).")
    async with sessions() as session:
        payment = await find(session, ref)
        why_not = _refundable(payment)
        if why_not is not None:
            raise ApiError(409, "payment_not_paid", why_not)
        if payment.status == "refunded":
            taken, shortfall = await take_back_of(session, payment)
            user = await session.get(User, payment.user_id)
            return TakeBack(payment, user, taken, shortfall, changed=False)
        user = await session.get(User, payment.user_id)
        assert user is not None and payment.telegram_payment_charge_id is not None
        charge_id, telegram_id, payment_id = (
            payment.telegram_payment_charge_id,
            user.telegram_id,
            payment.id,
        )
        if not await _claim(session, payment, actor, reason, _now(now)):
            await session.rollback()
            await session.refresh(payment)
            if payment.status == "refunded":
                taken, shortfall = await take_back_of(session, payment)
                return TakeBack(payment, user, taken, shortfall, changed=False)
            raise ApiError(
                409,
                "refund_in_progress",
                "This payment is being refunded right now; look again in a moment.",
            )
        await session.commit()
    try:
        await call_telegram(telegram_id, charge_id)
    except TelegramUnavailable as exc:
        await _release(sessions, payment_id)
        log.warning("refund of charge %s not made: %s", charge_id, exc)
        raise ApiError(
            503,
            "telegram_unavailable",
            "Telegram did not answer the refund; nothing changed here. Try again: if the "
            "first call did reach Telegram, the retry finishes it without refunding twice.",
        ) from None
    except TelegramRefused as exc:
        await _release(sessions, payment_id)
        log.error("refund of charge %s refused by Telegram: %s", charge_id, exc)
        raise ApiError(
            502, "telegram_refused", f"Telegram refused the refund: {str(exc)[:200]}"
        ) from None
    async with sessions() as session:
        done = await take_back(session, charge_id, actor=actor, reason=reason, now=now)
        await session.commit()
    log.info(
        "charge %s refunded by %s: %d credits taken back, %d short",
        charge_id,
        actor,
        done.taken_back,
        done.shortfall,
    )
    return done


def telegram_refunder(settings: Settings) -> RefundCall:
    """refundStarPayment with the backend's BOT_TOKEN, once per call (no retries: an operator
    sees a network error and tries again; a retry of a refund that landed hears
    CHARGE_ALREADY_REFUNDED, which counts as done)."""
    from aiogram.exceptions import (
        TelegramAPIError,
        TelegramBadRequest,
        TelegramNetworkError,
        TelegramRetryAfter,
        TelegramServerError,
    )
    from aiogram.methods import RefundStarPayment

    from comfygram.telegram import create_bot

    async def call(telegram_id: int, charge_id: str) -> None:
        bot = create_bot(settings)
        try:
            await bot(RefundStarPayment(user_id=telegram_id, telegram_payment_charge_id=charge_id))
        except TelegramBadRequest as exc:
            if ALREADY_REFUNDED not in exc.message.upper():
                raise TelegramRefused(exc.message) from None
        except (TelegramNetworkError, TelegramServerError, TelegramRetryAfter, TimeoutError) as exc:
            raise TelegramUnavailable(type(exc).__name__) from None
        except TelegramAPIError as exc:
            raise TelegramRefused(exc.message) from None
        finally:
            await bot.session.close()

    return call


def require_bot(settings: Settings) -> None:
    """The backend needs BOT_TOKEN to call Telegram; a clear 503 when it has none."""
    if settings.bot_token is None:
        raise ApiError(
            503,
            "bot_not_configured",
            "The backend has no BOT_TOKEN, so it cannot call Telegram's refundStarPayment; "
            "set BOT_TOKEN in the backend's settings.",
        )


async def discrepancies(session: AsyncSession) -> list[str]:
    """What `comfygram audit` can check of refunds, one line each: a payment_refund entry
    belongs to a refunded payment and takes back at most its credits; a refunded payment
    without one says ``nothing taken back`` (its balance was 0); a refunded payment has its
    refunded_at. (The entry's unique key makes a second take-back of a charge impossible.)"""
    lines: list[str] = []
    entries = await session.scalars(
        select(LedgerEntry).where(LedgerEntry.reason == Reason.PAYMENT_REFUND.value)
    )
    taken: dict[str, LedgerEntry] = {}
    for entry in entries:
        payment = await session.get(Payment, entry.payment_id) if entry.payment_id else None
        if payment is None:
            lines.append(f"ledger {entry.id}: payment_refund entry names no payment")
            continue
        taken[payment.id] = entry
        if payment.status != "refunded":
            lines.append(
                f"ledger {entry.id}: payment {payment.id} is {payment.status}, not refunded"
            )
        if -entry.amount > payment.credits:
            lines.append(
                f"ledger {entry.id}: takes back {-entry.amount} credits, payment {payment.id} "
                f"bought {payment.credits}"
            )
    refunded = await session.scalars(select(Payment).where(Payment.status == "refunded"))
    for payment in refunded:
        if payment.refunded_at is None:
            lines.append(f"payment {payment.id}: refunded without refunded_at")
        if payment.id not in taken and NOTHING_TAKEN_BACK not in (payment.refund_reason or ""):
            lines.append(
                f"payment {payment.id}: refunded, but no payment_refund entry and no "
                f"'{NOTHING_TAKEN_BACK}' note"
            )
    return lines
