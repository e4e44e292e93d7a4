"""Promo codes: credits an operator gives away, redeemed with /promo CODE or a start link.

A code is redeemed at most ``max_uses`` times in all and once per user, until it expires or
an operator disables it. ``uses`` is taken with one conditional UPDATE (``uses < max_uses``,
not disabled, not expired), so of any number of concurrent redemptions exactly the free uses
succeed: PostgreSQL re-checks the condition on the row another transaction just updated, and
SQLite's transactions run one at a time. The redemption row, the ``uses`` increment and the
ledger entry (``promo:<code>:<telegram id>``) are written in one transaction.
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from comfygram.backend import accounts
from comfygram.backend.errors import ApiError
from comfygram.backend.models import PromoCode, PromoRedemption, User, as_utc, utcnow
from comfygram.domain import ledger
from comfygram.domain.ledger import Reason

CODE_PATTERN = re.compile(r"[A-Z0-9_-]{3,32}")
# Credits and uses an operator may give in one code: far inside the int4 columns.
MAX_CREDITS = 1_000_000
MAX_USES = 1_000_000


def normalize(code: str) -> str:
    """Codes are case-insensitive: stored and compared in upper case."""
    return code.strip().upper()


def check_new(
    code: str, credits: int, max_uses: int, expires_at: datetime | None, now: datetime
) -> str:
    """The rules for a new code (no I/O); returns the code as stored, or raises a 422."""
    stored = normalize(code)
    if not CODE_PATTERN.fullmatch(stored):
        raise ApiError(
            422,
            "bad_promo_code",
            "A promo code is 3 to 32 characters: letters A-Z, digits, '_' and '-'.",
        )
    if isinstance(credits, bool) or not 1 <= credits <= MAX_CREDITS:
        raise ApiError(422, "bad_promo_credits", f"A code gives 1 to {MAX_CREDITS:,} credits.")
    if isinstance(max_uses, bool) or not 1 <= max_uses <= MAX_USES:
        raise ApiError(422, "bad_promo_uses", f"A code may be used 1 to {MAX_USES:,} times in all.")
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise ApiError(
                422, "bad_promo_expiry", "Give the expiry with its time zone (e.g. ...Z)."
            )
        if expires_at <= now:
            raise ApiError(422, "bad_promo_expiry", "The expiry must be in the future.")
    return stored


def refusal(promo: PromoCode, now: datetime) -> ApiError:
    """Why a code that exists cannot be redeemed now (no I/O): disabled, expired or used up."""
    if promo.disabled:
        return ApiError(410, "promo_disabled", f"Promo code {promo.code} was switched off.")
    expires = as_utc(promo.expires_at)
    if expires is not None and expires <= now:
        return ApiError(410, "promo_expired", f"Promo code {promo.code} has expired.")
    if promo.uses >= promo.max_uses:
        return ApiError(
            409, "promo_used_up", f"Promo code {promo.code} has been used up ({promo.max_uses})."
        )
    # The conditional update failed for a reason that has gone since (a race with a disable).
    return ApiError(409, "promo_used_up", f"Promo code {promo.code} cannot be redeemed now.")


def _unknown(code: str) -> ApiError:
    shown = code if len(code) <= 32 else code[:32] + "…"
    return ApiError(404, "promo_not_found", f"There is no promo code {shown}.")


async def create(
    session: AsyncSession,
    code: str,
    *,
    credits: int,
    max_uses: int,
    expires_at: datetime | None,
    actor: str,
    now: datetime | None = None,
) -> PromoCode:
    """A new code (the caller commits); 409 promo_exists when the code is taken."""
    now = now or utcnow()
    stored = check_new(code, credits, max_uses, expires_at, now)
    if await session.get(PromoCode, stored) is not None:
        raise ApiError(409, "promo_exists", f"Promo code {stored} exists already.")
    promo = PromoCode(
        code=stored,
        credits=credits,
        max_uses=max_uses,
        uses=0,
        expires_at=expires_at,
        disabled=False,
        created_by=actor,
        created_at=now,
    )
    try:
        async with session.begin_nested():
            session.add(promo)
    except IntegrityError:
        raise ApiError(409, "promo_exists", f"Promo code {stored} exists already.") from None
    return promo


async def disable(session: AsyncSession, code: str) -> tuple[PromoCode, bool]:
    """Switch a code off for good; returns (code, changed_now). The caller commits."""
    stored = normalize(code)
    changed = await session.execute(
        update(PromoCode)
        .where(PromoCode.code == stored, PromoCode.disabled.is_(False))
        .values(disabled=True)
        .execution_options(synchronize_session=False)
    )
    promo = await session.get(PromoCode, stored, populate_existing=True)
    if promo is None:
        raise _unknown(stored)
    return promo, changed.rowcount == 1


async def listing(session: AsyncSession, limit: int = 100) -> list[PromoCode]:
    rows = await session.scalars(
        select(PromoCode).order_by(PromoCode.created_at.desc()).limit(limit)
    )
    return list(rows)


async def redeem(
    session: AsyncSession, telegram_id: int, code: str, now: datetime | None = None
) -> tuple[PromoCode, User]:
    """Give a user a code's credits, once per user and within the code's uses.

    Raises 404 promo_not_found / user_not_found, 403 user_banned, 409 promo_already_redeemed
    or promo_used_up, 410 promo_expired or promo_disabled; nothing changes then (the caller
    commits only on success).
    """
    now = now or utcnow()
    stored = normalize(code)
    user = await accounts.lock_user(session, telegram_id)
    accounts.refuse_banned(user)
    if not CODE_PATTERN.fullmatch(stored):
        raise _unknown(stored)
    promo = await session.get(PromoCode, stored)
    if promo is None:
        raise _unknown(stored)
    already = ApiError(
        409, "promo_already_redeemed", f"You have already redeemed promo code {stored}."
    )
    redeemed = await session.scalar(
        select(PromoRedemption.id).where(
            PromoRedemption.code == stored, PromoRedemption.user_id == user.id
        )
    )
    if redeemed is not None:
        raise already
    taken = await session.execute(
        update(PromoCode)
        .where(
            PromoCode.code == stored,
            PromoCode.uses < PromoCode.max_uses,
            PromoCode.disabled.is_(False),
            or_(PromoCode.expires_at.is_(None), PromoCode.expires_at > now),
        )
        .values(uses=PromoCode.uses + 1)
        .execution_options(synchronize_session=False)
    )
    await session.refresh(promo)
    if taken.rowcount != 1:
        raise refusal(promo, now)
    try:
        async with session.begin_nested():
            session.add(
                PromoRedemption(code=stored, user_id=user.id, credits=promo.credits, created_at=now)
            )
    except IntegrityError:
        raise already from None
    entry = await accounts.post(
        session,
        user,
        promo.credits,
        Reason.PROMO,
        ledger.promo_key(stored, telegram_id),
        note=f"promo code {stored}",
    )
    if entry is None:  # a ledger entry without its redemption row: still once per user
        raise already
    return promo, user
