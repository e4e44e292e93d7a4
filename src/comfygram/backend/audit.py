"""The ledger audit: read-only queries over the whole database, each returning what breaks a
rule of the books (docs/payments.md, "Audit"). Nothing here changes a row.

The rules:
- every balance equals the sum of its user's ledger entries, and none is below zero;
- every payment is credited at most once (one ``payment`` entry per payment), and a payment
  marked paid was credited;
- every refund of a payment is debited at most once (one ``payment_refund`` entry per payment),
  takes back at most what the payment bought, and a refunded payment has its entry or says
  why there is none (the balance was 0);
- every failed or cancelled job that cost credits is refunded exactly once, a free one never,
  and no job that succeeded is refunded automatically (an operator's goodwill refund, which
  carries their name, is allowed);
- no promo code is redeemed more often than its max_uses, nor twice by one user.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfygram import metrics
from comfygram.backend import payment_refunds
from comfygram.backend.models import Job, LedgerEntry, Payment, PromoCode, PromoRedemption, User
from comfygram.domain.jobs import JobStatus
from comfygram.domain.ledger import Reason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Discrepancy:
    """One broken rule: which (a short code), what it is about, and the facts."""

    rule: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.subject}: {self.detail}"


async def balances(session: AsyncSession) -> list[Discrepancy]:
    sums = (
        select(LedgerEntry.user_id, func.sum(LedgerEntry.amount).label("total"))
        .group_by(LedgerEntry.user_id)
        .subquery()
    )
    total = func.coalesce(sums.c.total, 0)
    rows = await session.execute(
        select(User.telegram_id, User.balance, total)
        .outerjoin(sums, sums.c.user_id == User.id)
        .where(User.balance != total)
        .order_by(User.id)
    )
    found = [
        Discrepancy(
            "balance_mismatch",
            f"user {telegram_id}",
            f"balance {balance} but the ledger adds up to {int(ledger_total)}",
        )
        for telegram_id, balance, ledger_total in rows
    ]
    negative = await session.execute(
        select(User.telegram_id, User.balance).where(User.balance < 0).order_by(User.id)
    )
    found += [
        Discrepancy("negative_balance", f"user {telegram_id}", f"balance {balance}")
        for telegram_id, balance in negative
    ]
    return found


async def _entries_per(
    session: AsyncSession, reason: Reason, column: object, more_than: int = 1
) -> list[tuple[str, int, int]]:
    """(id, entries, their sum) of each ``column`` value with more than ``more_than`` entries
    of ``reason``."""
    count = func.count(LedgerEntry.id)
    rows = await session.execute(
        select(column, count, func.sum(LedgerEntry.amount))
        .where(LedgerEntry.reason == reason.value, column.is_not(None))  # type: ignore[attr-defined]
        .group_by(column)
        .having(count > more_than)
        .order_by(column)
    )
    return [(str(key), int(n), int(total)) for key, n, total in rows]


async def payments(session: AsyncSession) -> list[Discrepancy]:
    found = [
        Discrepancy(
            "payment_credited_twice",
            f"payment {payment_id}",
            f"{n} payment entries, {total} credits in all",
        )
        for payment_id, n, total in await _entries_per(
            session, Reason.PAYMENT, LedgerEntry.payment_id
        )
    ]
    found += [
        Discrepancy(
            "refund_debited_twice",
            f"payment {payment_id}",
            f"{n} payment_refund entries, {-total} credits taken back in all",
        )
        for payment_id, n, total in await _entries_per(
            session, Reason.PAYMENT_REFUND, LedgerEntry.payment_id
        )
    ]
    credited = (
        select(LedgerEntry.id)
        .where(LedgerEntry.reason == Reason.PAYMENT.value, LedgerEntry.payment_id == Payment.id)
        .exists()
    )
    rows = await session.execute(
        select(Payment.id, Payment.telegram_payment_charge_id)
        .where(Payment.status == "paid", ~credited)
        .order_by(Payment.created_at)
    )
    found += [
        Discrepancy(
            "payment_not_credited",
            f"payment {payment_id}",
            f"marked paid (charge {charge_id}) with no payment entry in the ledger",
        )
        for payment_id, charge_id in rows
    ]
    return found


async def jobs(session: AsyncSession) -> list[Discrepancy]:
    refunds = (
        select(
            LedgerEntry.job_id,
            func.count(LedgerEntry.id).label("n"),
            func.sum(case((LedgerEntry.actor.is_(None), 1), else_=0)).label("automatic"),
        )
        .where(LedgerEntry.reason == Reason.JOB_REFUND.value)
        .group_by(LedgerEntry.job_id)
        .subquery()
    )
    n = func.coalesce(refunds.c.n, 0)
    automatic = func.coalesce(refunds.c.automatic, 0)
    ended = Job.status.in_((JobStatus.FAILED.value, JobStatus.CANCELLED.value))
    rows = await session.execute(
        select(Job.id, Job.status, Job.price, n, automatic)
        .outerjoin(refunds, refunds.c.job_id == Job.id)
        .where(
            (ended & (Job.price > 0) & (n != 1))
            | (ended & (Job.price == 0) & (n > 0))
            | (n > 1)
            | (and_(Job.status == JobStatus.SUCCEEDED.value, automatic > 0))
        )
        .order_by(Job.created_at)
    )
    found = []
    for job_id, status, price, count, auto in rows:
        if status == JobStatus.SUCCEEDED.value and auto:
            rule, detail = "succeeded_job_refunded", f"succeeded, yet {count} refund entries"
        elif count > 1:
            rule, detail = "job_refunded_twice", f"{status}, {count} refund entries"
        elif count == 0:
            rule, detail = "job_not_refunded", f"{status} at {price} credits, never refunded"
        else:
            rule, detail = "free_job_refunded", f"{status} at no charge, yet refunded"
        found.append(Discrepancy(rule, f"job {job_id}", detail))
    return found


async def promos(session: AsyncSession) -> list[Discrepancy]:
    used = func.count(PromoRedemption.id)
    rows = await session.execute(
        select(PromoCode.code, PromoCode.max_uses, used)
        .join(PromoRedemption, PromoRedemption.code == PromoCode.code)
        .group_by(PromoCode.code, PromoCode.max_uses)
        .having(used > PromoCode.max_uses)
        .order_by(PromoCode.code)
    )
    found = [
        Discrepancy("promo_over_used", f"promo {code}", f"{n} redemptions of {max_uses} allowed")
        for code, max_uses, n in rows
    ]
    twice = func.count(PromoRedemption.id)
    rows = await session.execute(
        select(PromoRedemption.code, User.telegram_id, twice)
        .join(User, User.id == PromoRedemption.user_id)
        .group_by(PromoRedemption.code, User.telegram_id)
        .having(twice > 1)
        .order_by(PromoRedemption.code)
    )
    found += [
        Discrepancy("promo_redeemed_twice", f"promo {code}", f"user {telegram_id}: {n} times")
        for code, telegram_id, n in rows
    ]
    return found


async def refunds(session: AsyncSession) -> list[Discrepancy]:
    """A take-back belongs to a refunded payment and takes at most its credits; a refunded
    payment has its take-back, or the note that the balance was 0 (payment_refunds)."""
    return [
        Discrepancy("payment_refund", line.split(":", 1)[0], line.split(": ", 1)[1])
        for line in await payment_refunds.discrepancies(session)
    ]


async def run(session: AsyncSession) -> list[Discrepancy]:
    """Every rule over the whole database, in one read transaction."""
    found: list[Discrepancy] = []
    for check in (balances, payments, refunds, jobs, promos):
        found += await check(session)
    return found


def summary(found: list[Discrepancy], users: int | None = None) -> str:
    if not found:
        return "audit: clean" + (f" ({users} users' books add up)" if users is not None else "")
    return f"audit: {len(found)} discrepanc{'y' if len(found) == 1 else 'ies'}"


async def user_count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count(User.id))) or 0)


async def audit_once(sessions: async_sessionmaker) -> list[Discrepancy]:
    """One audit in its own session, its count exported as a metric and each finding logged."""
    async with sessions() as session:
        found = await run(session)
    metrics.AUDIT_DISCREPANCIES.set(len(found))
    for item in found:
        log.error("ledger audit: %s", item)
    return found


async def audit_forever(
    sessions: async_sessionmaker,
    interval: float,
    stop: asyncio.Event,
    redis: Any = None,
    prefix: str = "comfygram",
) -> None:
    """The audit every ``interval`` seconds (the first one interval after start) until
    ``stop``; one process of several per round."""
    from comfygram.backend.stars import my_turn

    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if stop.is_set():
            return
        if not await my_turn(redis, f"{prefix}:audit-round", interval):
            continue
        try:
            await audit_once(sessions)
        except Exception:
            log.exception("ledger audit failed")
