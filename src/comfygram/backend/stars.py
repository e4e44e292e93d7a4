"""Reconciliation with Telegram: getStarTransactions compared with the payments table.

One pass is one StarReconciliation row. Telegram's list is read in full first (pages of 100,
oldest first); only then is anything compared, so a pass that cannot reach Telegram records its
error and changes nothing. What it finds (docs/payments.md, "Reconciliation"):

- a charge Telegram took for one of our pending invoices that we never credited (the
  successful_payment update was lost): credited once through payments.confirm, under the same
  ledger key as the update would have used, so whichever comes second changes nothing; a
  StarDiscrepancy ``credited_late`` says so (resolved by the pass itself);
- anything else that disagrees is flagged for an operator, never fixed silently:
  ``unknown_to_telegram`` (a paid payment Telegram does not list), ``amount_mismatch``,
  ``refund_mismatch`` (a refund one side has and the other has not) and ``uncredited`` (a
  charge Telegram took that no invoice of ours can take: a second payment of a paid invoice,
  an expired one, a subscription period nobody recorded, a payload we never made).

A discrepancy is unique per (kind, charge id), so later passes never duplicate one, and one an
operator resolved stays resolved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfygram import metrics
from comfygram.backend import payments, referrals, subscriptions
from comfygram.backend.errors import ApiError, not_found
from comfygram.backend.models import (
    ChargeRefund,
    LedgerEntry,
    Payment,
    StarDiscrepancy,
    StarReconciliation,
    Subscription,
    as_utc,
    utcnow,
)
from comfygram.domain import ledger
from comfygram.settings import CreditPackage

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # getStarTransactions' largest page
# A transaction younger than this is left to the updates in flight: the bot may be confirming
# that charge, or handling its refunded_payment, right now. A payment or refund we recorded is
# compared only when it is this old too.
SETTLE_SECONDS = 300.0
# How many pages one pass reads at most (a million transactions): a guard against a Telegram
# that keeps answering full pages.
MAX_PAGES = 10_000
ACTOR = "reconciliation"

KINDS = ("credited_late", "unknown_to_telegram", "amount_mismatch", "refund_mismatch", "uncredited")


@dataclass(frozen=True)
class Transaction:
    """One Star transaction, as much of it as reconciliation needs."""

    id: str
    amount: int
    date: datetime
    incoming: bool  # a user paid us (False: we paid a user back, a refund)
    payload: str | None = None
    user_id: int | None = None


# (offset, limit) -> (the page's transactions that matter, how many the page held)
Fetch = Callable[[int, int], Awaitable[tuple[list[Transaction], int]]]


@dataclass
class PassResult:
    """What one pass did: the row's id, the counts, and one line per new discrepancy."""

    id: int
    transactions: int = 0
    credited: int = 0
    flagged: int = 0
    error: str | None = None
    found: list[str] = field(default_factory=list)
    # Whom to tell that a lost payment was credited: (telegram id, language, stars, credits,
    # balance), once, by the pass that credited it.
    to_tell: list[tuple[int, str | None, int, int, int]] = field(default_factory=list)
    # Referral bonuses those payments earned (a first payment): whom to tell, as the bot would.
    rewarded: list[referrals.Reward] = field(default_factory=list)


def from_telegram(tx: Any) -> Transaction | None:
    """An aiogram StarTransaction as a Transaction; None for one that is neither an invoice
    payment by a user nor a refund to one (withdrawals, ads, gifts...)."""
    date = tx.date if isinstance(tx.date, datetime) else datetime.fromtimestamp(tx.date, UTC)
    partner, incoming = (tx.source, True) if tx.source is not None else (tx.receiver, False)
    if partner is None or getattr(partner, "type", None) != "user":
        return None
    if getattr(partner, "transaction_type", "invoice_payment") != "invoice_payment":
        return None
    user = getattr(partner, "user", None)
    return Transaction(
        id=tx.id,
        amount=tx.amount,
        date=as_utc(date) or date,
        incoming=incoming,
        payload=getattr(partner, "invoice_payload", None),
        user_id=user.id if user is not None else None,
    )


def bot_fetch(bot: Any) -> Fetch:
    """getStarTransactions through an aiogram Bot: (the transactions that matter, how many
    Telegram listed on the page), so a short page still ends the reading."""

    async def fetch(offset: int, limit: int) -> tuple[list[Transaction], int]:
        page = await bot.get_star_transactions(offset=offset, limit=limit)
        parsed = [from_telegram(t) for t in page.transactions]
        return [t for t in parsed if t is not None], len(page.transactions)

    return fetch


async def _flag(
    session: AsyncSession,
    result: PassResult,
    kind: str,
    charge_id: str,
    detail: str,
    payment_id: str | None = None,
    *,
    resolved: bool = False,
) -> bool:
    """Record a discrepancy unless one of this kind for this charge exists; True if new."""
    existing = await session.scalar(
        select(StarDiscrepancy.id).where(
            StarDiscrepancy.kind == kind, StarDiscrepancy.telegram_payment_charge_id == charge_id
        )
    )
    if existing is not None:
        return False
    now = utcnow()
    try:
        async with session.begin_nested():
            session.add(
                StarDiscrepancy(
                    kind=kind,
                    telegram_payment_charge_id=charge_id,
                    payment_id=payment_id,
                    detail=detail[:500],
                    found_by=result.id,
                    created_at=now,
                    resolved_at=now if resolved else None,
                    resolved_by=ACTOR if resolved else None,
                )
            )
    except IntegrityError:  # a concurrent pass recorded it first
        return False
    metrics.STAR_DISCREPANCIES.labels(kind=kind).inc()
    if not resolved:
        result.flagged += 1
    result.found.append(f"{kind} {charge_id}: {detail}")
    return True


async def _credit_late(
    sessions: async_sessionmaker,
    result: PassResult,
    tx: Transaction,
    *,
    packages: list[CreditPackage],
    ttl_seconds: float,
    referral_bonus: int = 0,
) -> None:
    """Credit a charge whose successful_payment never reached us, as confirm would have
    (the referrer's bonus included)."""
    async with sessions() as session:
        try:
            if subscriptions.is_subscription(tx.payload or ""):
                payment, user, credited = await subscriptions.confirm_period(
                    session,
                    tx.payload or "",
                    tx.id,
                    tx.amount,
                    payments.CURRENCY,
                    referral_bonus=referral_bonus,
                )
            else:
                payment, user, credited = await payments.confirm(
                    session,
                    tx.payload or "",
                    tx.id,
                    tx.amount,
                    payments.CURRENCY,
                    packages=packages,
                    ttl_seconds=ttl_seconds,
                    referral_bonus=referral_bonus,
                )
        except ApiError as exc:
            await session.rollback()
            payment_id = await session.scalar(
                select(Payment.id).where(Payment.payload == (tx.payload or ""))
            )
            kind = "amount_mismatch" if exc.code == "amount_mismatch" else "uncredited"
            await _flag(
                session,
                result,
                kind,
                tx.id,
                f"Telegram took {tx.amount} XTR from user {tx.user_id} but the charge cannot "
                f"be credited ({exc.code}): {exc.message} Refund it or credit it by hand.",
                payment_id,
            )
            await session.commit()
            return
        if credited:
            entry = await session.scalar(
                select(LedgerEntry).where(LedgerEntry.idempotency_key == ledger.payment_key(tx.id))
            )
            if entry is not None:
                entry.actor = ACTOR
                entry.note = (
                    f"found by Star reconciliation #{result.id}: Telegram took the Stars, "
                    "the successful_payment update never arrived"
                )
            await _flag(
                session,
                result,
                "credited_late",
                tx.id,
                f"{payment.credits} credits to user {user.telegram_id} for {tx.amount} XTR: "
                "the successful_payment update was lost; credited by reconciliation",
                payment.id,
                resolved=True,
            )
            result.credited += 1
            result.to_tell.append(
                (user.telegram_id, user.language_code, tx.amount, payment.credits, user.balance)
            )
            reward = await referrals.reward_of(session, payment)
            if reward is not None:
                result.rewarded.append(reward)
            metrics.PAYMENTS.labels(package=payment.package).inc()
            metrics.CREDITS_SOLD.inc(payment.credits)
            metrics.STARS_RECEIVED.inc(payment.amount)
        await session.commit()


async def _compare(
    sessions: async_sessionmaker,
    result: PassResult,
    transactions: Sequence[Transaction],
    *,
    started: datetime,
    settle_seconds: float,
    packages: list[CreditPackage],
    ttl_seconds: float,
    referral_bonus: int = 0,
) -> None:
    settled = started - timedelta(seconds=settle_seconds)
    incoming = {t.id: t for t in transactions if t.incoming}
    outgoing = {t.id: t for t in transactions if not t.incoming}

    async with sessions() as session:
        ours = {
            p.telegram_payment_charge_id: p
            for p in await session.scalars(
                select(Payment).where(Payment.telegram_payment_charge_id.is_not(None))
            )
        }
        given_back = {
            r.telegram_payment_charge_id: r for r in await session.scalars(select(ChargeRefund))
        }
        keys = await session.execute(
            select(LedgerEntry.reason, LedgerEntry.idempotency_key).where(
                LedgerEntry.reason.in_(
                    (ledger.Reason.PAYMENT.value, ledger.Reason.PAYMENT_REFUND.value)
                )
            )
        )
        credited: set[str] = set()
        debited: set[str] = set()
        for reason, key in keys:
            (credited if reason == ledger.Reason.PAYMENT.value else debited).add(key)
        # What a lost charge can still credit: an invoice not yet paid, or a period of one of
        # our subscriptions (the first or a renewal).
        creditable = {
            p.payload
            for p in await session.scalars(select(Payment).where(Payment.status == "pending"))
        } | set(await session.scalars(select(Subscription.payload)))

    late: list[Transaction] = []
    async with sessions() as session:
        # Charges Telegram took.
        for tx in incoming.values():
            payment = ours.get(tx.id)
            if payment is not None:
                if tx.amount != payment.amount:
                    await _flag(
                        session,
                        result,
                        "amount_mismatch",
                        tx.id,
                        f"Telegram took {tx.amount} XTR, payment {payment.id} is for "
                        f"{payment.amount} {payment.currency}",
                        payment.id,
                    )
                continue
            if ledger.payment_key(tx.id) in credited:
                continue  # credited with no payments row of its own (a subscription period)
            if tx.id in given_back or tx.id in outgoing or tx.date > settled:
                continue  # being given back, given back already, or still in flight
            if tx.payload in creditable:
                late.append(tx)
                continue
            holder = await session.scalar(select(Payment).where(Payment.payload == tx.payload))
            why = (
                f"the invoice was already paid with charge {holder.telegram_payment_charge_id}"
                if holder is not None
                else "no invoice or subscription of ours has this payload (another bot's invoice?)"
            )
            await _flag(
                session,
                result,
                "uncredited",
                tx.id,
                f"Telegram took {tx.amount} XTR from user {tx.user_id} and nothing credited "
                f"it: {why}. Refund it or credit it by hand.",
                holder.id if holder is not None else None,
            )
        # Payments we have.
        for charge_id, payment in ours.items():
            paid_at = as_utc(payment.paid_at) or started
            if charge_id in incoming or paid_at > settled:
                continue
            await _flag(
                session,
                result,
                "unknown_to_telegram",
                charge_id,
                f"payment {payment.id} ({payment.amount} {payment.currency}, {payment.status}) "
                "is not among Telegram's Star transactions",
                payment.id,
            )
        # Refunds: Telegram's against ours.
        for tx in outgoing.values():
            if tx.date > settled:
                continue
            payment = ours.get(tx.id)
            refund = given_back.get(tx.id)
            if payment is not None:
                recorded = (
                    payment.refunded_at is not None or ledger.payment_refund_key(tx.id) in debited
                )
                if not recorded:
                    await _flag(
                        session,
                        result,
                        "refund_mismatch",
                        tx.id,
                        f"Telegram gave {tx.amount} XTR back for payment {payment.id}, and its "
                        f"{payment.credits} credits were never taken back",
                        payment.id,
                    )
            elif refund is not None and refund.refunded_at is None and refund.failed_at:
                await _flag(
                    session,
                    result,
                    "refund_mismatch",
                    tx.id,
                    f"Telegram gave {tx.amount} XTR back, but our refund of this charge is "
                    f"marked failed ({refund.error})",
                    refund.payment_id,
                )
        for charge_id, payment in ours.items():
            refunded_at = as_utc(payment.refunded_at)
            if refunded_at is None or refunded_at > settled or charge_id in outgoing:
                continue
            await _flag(
                session,
                result,
                "refund_mismatch",
                charge_id,
                f"payment {payment.id} is marked refunded, but Telegram lists no refund of it",
                payment.id,
            )
        for charge_id, refund in given_back.items():
            refunded_at = as_utc(refund.refunded_at)
            if refunded_at is None or refunded_at > settled or charge_id in outgoing:
                continue
            if charge_id not in incoming:
                continue  # nothing to give back (the charge itself is not listed)
            await _flag(
                session,
                result,
                "refund_mismatch",
                charge_id,
                f"the uncreditable charge of {refund.amount} XTR is marked refunded, but "
                "Telegram lists no refund of it",
                refund.payment_id,
            )
        await session.commit()

    for tx in late:
        await _credit_late(
            sessions,
            result,
            tx,
            packages=packages,
            ttl_seconds=ttl_seconds,
            referral_bonus=referral_bonus,
        )


async def reconcile_once(
    sessions: async_sessionmaker,
    fetch: Fetch,
    *,
    packages: list[CreditPackage],
    ttl_seconds: float,
    referral_bonus: int = 0,
    settle_seconds: float = SETTLE_SECONDS,
    page_size: int = PAGE_SIZE,
    secrets: Sequence[str] = (),
) -> PassResult:
    """One pass: read every Star transaction, then compare; the StarReconciliation row says
    what it found, or why it stopped (then nothing else changed)."""
    started = utcnow()
    async with sessions() as session:
        row = StarReconciliation(started_at=started)
        session.add(row)
        await session.commit()
        result = PassResult(id=row.id)
    transactions: list[Transaction] = []
    try:
        for page_number in range(MAX_PAGES):
            page, listed = await fetch(page_number * page_size, page_size)
            transactions.extend(page)
            if listed < page_size:
                break
    except Exception as exc:  # Telegram unreachable, refusing, or answering nonsense
        from comfygram.logs import redact

        result.error = redact(f"{type(exc).__name__}: {exc}", secrets)[:300]
        log.warning("Star reconciliation #%d stopped: %s", result.id, result.error)
    else:
        result.transactions = len(transactions)
        try:
            await _compare(
                sessions,
                result,
                transactions,
                started=started,
                settle_seconds=settle_seconds,
                packages=packages,
                ttl_seconds=ttl_seconds,
                referral_bonus=referral_bonus,
            )
        except Exception as exc:  # the database failed halfway: what was committed stands
            result.error = f"stopped while comparing: {type(exc).__name__}: {exc}"[:300]
            log.exception("Star reconciliation #%d stopped while comparing", result.id)
    async with sessions() as session:
        row = await session.get(StarReconciliation, result.id)
        assert row is not None
        row.finished_at = utcnow()
        row.transactions = result.transactions
        row.credited = result.credited
        row.flagged = result.flagged
        row.error = result.error
        await session.commit()
    if result.credited or result.flagged:
        log.warning(
            "Star reconciliation #%d: %d credited late, %d new discrepancies",
            result.id,
            result.credited,
            result.flagged,
        )
    return result


async def reconcile_with_bot(
    sessions: async_sessionmaker, settings: Any, **options: Any
) -> PassResult:
    """One pass with a bot of its own for settings.bot_token (closed after)."""
    from comfygram.telegram import create_bot

    bot = create_bot(settings)
    try:
        result = await reconcile_once(
            sessions,
            bot_fetch(bot),
            packages=settings.credit_packages,
            ttl_seconds=settings.payment_invoice_ttl_seconds,
            referral_bonus=settings.referral_bonus,
            secrets=settings.secrets(),
            **options,
        )
        await tell_credited(bot, result)
        return result
    finally:
        await bot.session.close()


async def tell_credited(bot: Any, result: PassResult) -> None:
    """Tell each user whose lost payment this pass credited (the bot never thanked them): one
    message each; one Telegram refuses (the user blocked the bot) is logged and skipped."""
    from aiogram.exceptions import TelegramAPIError

    from comfygram.i18n import language_of, t

    messages = [
        (
            telegram_id,
            t(language, "stars.credited_late", stars=amount, credits=credits, balance=balance),
        )
        for telegram_id, language, amount, credits, balance in result.to_tell
    ] + [
        (
            r.telegram_id,
            t(
                language_of(r.language_code),
                "growth.referral.rewarded",
                credits=r.credits,
                balance=r.balance,
            ),
        )
        for r in result.rewarded
    ]
    for telegram_id, text in messages:
        try:
            await bot.send_message(telegram_id, text)
        except TelegramAPIError as exc:
            log.warning("could not tell user %s about a late payment: %s", telegram_id, exc)


async def my_turn(redis: Any, key: str, interval: float) -> bool:
    """Whether this process runs this round: the processes of `comfygram backend --workers N`
    each have the periodic task, and the first to take the round's Redis key runs it. With
    Redis unreachable every process runs (both tasks are safe to run at once, only wasteful)."""
    if redis is None:
        return True
    try:
        return bool(await redis.set(key, "1", nx=True, px=max(100, int(interval * 900))))
    except Exception as exc:  # RedisError, OSError: run rather than skip the check
        log.warning("periodic %s: Redis unreachable (%s), running anyway", key, type(exc).__name__)
        return True


async def reconcile_forever(
    sessions: async_sessionmaker,
    settings: Any,
    interval: float,
    stop: asyncio.Event,
    redis: Any = None,
) -> None:
    """A pass every ``interval`` seconds (the first one interval after start) until ``stop``;
    one process of several per round (my_turn)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if stop.is_set():
            return
        if not await my_turn(redis, f"{settings.redis_prefix}:stars-reconcile-round", interval):
            continue
        try:
            await reconcile_with_bot(sessions, settings)
            async with sessions() as session:
                metrics.STAR_DISCREPANCIES_OPEN.set(await unresolved_count(session))
        except Exception:
            log.exception("Star reconciliation failed")


async def last_pass(session: AsyncSession) -> StarReconciliation | None:
    return await session.scalar(
        select(StarReconciliation).order_by(StarReconciliation.id.desc()).limit(1)
    )


async def unresolved_count(session: AsyncSession) -> int:
    return int(
        await session.scalar(
            select(func.count(StarDiscrepancy.id)).where(StarDiscrepancy.resolved_at.is_(None))
        )
        or 0
    )


async def unresolved(session: AsyncSession, limit: int = 100) -> list[StarDiscrepancy]:
    """What an operator still has to look at, oldest first."""
    rows = await session.scalars(
        select(StarDiscrepancy)
        .where(StarDiscrepancy.resolved_at.is_(None))
        .order_by(StarDiscrepancy.id)
        .limit(limit)
    )
    return list(rows)


async def resolve(session: AsyncSession, discrepancy_id: int, actor: str) -> bool:
    """Mark a discrepancy resolved by ``actor``; True when this call did it. The caller
    commits."""
    row = await session.get(StarDiscrepancy, discrepancy_id, with_for_update=True)
    if row is None:
        raise not_found("star_discrepancy", discrepancy_id)
    if row.resolved_at is not None:
        return False
    row.resolved_at = utcnow()
    row.resolved_by = actor[:64]
    await session.flush()
    return True
