"""Referrals: a user's invite link, who registered through it, and the referrer's bonus.

Rules (docs/payments.md, "Promo codes and referrals"):

- a user is referred only when they register (their first /start ever) through a
  ``ref_<invite code>`` start link whose code exists and whose owner is not blocked; an
  existing user following a link is never referred, and nobody can refer themselves;
- the referrer gets ``REFERRAL_BONUS`` credits when the referred user's *first* payment is
  credited, in the same transaction, keyed ``referral:<referred telegram id>``: once per
  referred user ever, whatever happens to their later payments. 0 turns it off; a referrer
  blocked at that moment gets nothing.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from comfygram.backend import accounts
from comfygram.backend.errors import ApiError
from comfygram.backend.models import LedgerEntry, Payment, User
from comfygram.domain import ledger
from comfygram.domain.ledger import Reason

log = logging.getLogger(__name__)

REF_PREFIX = "ref_"
# No look-alikes (0/o, 1/l/i): codes are read and typed by people too. 31^8 ≈ 8.5e11.
INVITE_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
INVITE_LENGTH = 8
_ATTEMPTS = 5


def new_invite_code() -> str:
    return "".join(secrets.choice(INVITE_ALPHABET) for _ in range(INVITE_LENGTH))


def invite_code_of(start_args: str | None) -> str | None:
    """The invite code in a /start argument ``ref_<code>`` (no I/O), or None."""
    if not start_args or not start_args.startswith(REF_PREFIX):
        return None
    code = start_args[len(REF_PREFIX) :].strip().lower()
    if len(code) != INVITE_LENGTH or any(c not in INVITE_ALPHABET for c in code):
        return None
    return code


async def attach_on_signup(session: AsyncSession, user: User, start_args: str | None) -> bool:
    """Record who invited a user being registered right now (the caller made them in this
    transaction); returns whether they are now referred. Unknown codes are ignored."""
    code = invite_code_of(start_args)
    if code is None or user.referred_by_id is not None:
        return False
    referrer = await session.scalar(select(User).where(User.invite_code == code))
    if referrer is None or referrer.id == user.id or referrer.banned:
        return False
    user.referred_by_id = referrer.id
    await session.flush()
    return True


async def invite_code(session: AsyncSession, telegram_id: int) -> User:
    """The user's invite code, made the first time they ask: short, random and unique (a
    clash with another user's code is drawn again). The caller commits."""
    user = await accounts.get_user(session, telegram_id)
    accounts.refuse_banned(user)
    for _ in range(_ATTEMPTS):
        if user.invite_code:
            return user
        try:
            async with session.begin_nested():
                # Two asks at once: the first UPDATE wins, the other keeps its code.
                await session.execute(
                    update(User)
                    .where(User.id == user.id, User.invite_code.is_(None))
                    .values(invite_code=new_invite_code())
                    .execution_options(synchronize_session=False)
                )
        except IntegrityError:
            pass  # the code drawn belongs to someone else: draw again
        await session.refresh(user)
    if not user.invite_code:
        raise ApiError(503, "invite_code_unavailable", "No free invite code was found; retry.")
    return user


@dataclass(frozen=True)
class Invites:
    invited: int  # users who registered through the link
    rewarded: int  # of them, those whose first payment earned the bonus
    credits: int  # bonus credits earned in all


async def invites(session: AsyncSession, user: User) -> Invites:
    invited = await session.scalar(
        select(func.count()).select_from(User).where(User.referred_by_id == user.id)
    )
    rewarded, credits = (
        await session.execute(
            select(func.count(), func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                LedgerEntry.user_id == user.id,
                LedgerEntry.reason == Reason.REFERRAL_BONUS.value,
            )
        )
    ).one()
    return Invites(invited=int(invited or 0), rewarded=int(rewarded), credits=int(credits))


@dataclass(frozen=True)
class Reward:
    """A referral bonus just posted: whom the bot tells, in which language."""

    telegram_id: int
    credits: int
    balance: int
    language_code: str | None


async def reward_first_payment(
    session: AsyncSession, user: User, payment: Payment, bonus: int
) -> LedgerEntry | None:
    """Called by payments.confirm with the payer locked, right after crediting ``payment``:
    the bonus for the referrer if this is the payer's first paid payment. Returns the entry
    posted, or None (off, not referred, not the first payment, referrer blocked or gone,
    bonus already given)."""
    if bonus <= 0 or user.referred_by_id is None or user.referred_by_id == user.id:
        return None
    paid = await session.scalar(
        select(func.count())
        .select_from(Payment)
        .where(Payment.user_id == user.id, Payment.status == "paid")
    )
    if paid != 1:
        return None
    # Always newer user -> older referrer (a referrer existed before the referred user
    # registered), so two confirmations never wait on each other's locks in a cycle.
    referrer = await accounts.lock_user_by_id(session, user.referred_by_id)
    if referrer is None or referrer.banned:
        return None
    try:
        return await accounts.post(
            session,
            referrer,
            bonus,
            Reason.REFERRAL_BONUS,
            ledger.referral_key(user.telegram_id),
            payment_id=payment.id,
            note=f"invited {user.telegram_id}",
        )
    except ApiError as exc:  # the referrer's balance is at its ceiling: the payment stands
        log.warning("referral bonus for %s not posted: %s", referrer.telegram_id, exc.code)
        return None


async def reward_of(session: AsyncSession, payment: Payment) -> Reward | None:
    """The referral bonus a payment's confirmation posted, if any (for the bot to tell)."""
    row = (
        await session.execute(
            select(LedgerEntry.amount, User)
            .join(User, User.id == LedgerEntry.user_id)
            .where(
                LedgerEntry.payment_id == payment.id,
                LedgerEntry.reason == Reason.REFERRAL_BONUS.value,
            )
        )
    ).first()
    if row is None:
        return None
    amount, referrer = row
    return Reward(
        telegram_id=referrer.telegram_id,
        credits=int(amount),
        balance=referrer.balance,
        language_code=referrer.language_code,
    )
