"""Users and their credit ledger, as stored in the database."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from comfygram.backend.errors import ApiError, not_found
from comfygram.backend.models import LedgerEntry, User
from comfygram.domain import ledger
from comfygram.domain.ledger import Reason


async def lock_user(session: AsyncSession, telegram_id: int) -> User:
    """Load a user and hold their row until commit, so balance changes happen one at a time.

    On PostgreSQL this is SELECT ... FOR UPDATE; SQLite transactions already start with the
    database write lock (see db.create_engine).
    """
    user = await session.scalar(
        select(User).where(User.telegram_id == telegram_id).with_for_update()
    )
    if user is None:
        raise not_found("user", telegram_id)
    return user


async def lock_user_by_id(session: AsyncSession, user_id: int) -> User:
    return await session.scalar(select(User).where(User.id == user_id).with_for_update())


def refuse_banned(user: User) -> None:
    """A user an operator blocked may not start jobs or payments."""
    if user.banned:
        raise ApiError(
            403,
            "user_banned",
            f"User {user.telegram_id} is blocked by the operator and cannot start jobs or "
            "payments.",
        )


async def set_banned(session: AsyncSession, user_id: int, banned: bool) -> User:
    """Block or unblock a user (the admin panel); the caller commits."""
    user = await lock_user_by_id(session, user_id)
    if user is None:
        raise not_found("user", user_id)
    user.banned = banned
    await session.flush()
    return user


async def adjust(
    session: AsyncSession,
    telegram_id: int,
    amount: int,
    *,
    note: str,
    actor: str,
    request_key: str,
) -> tuple[User, LedgerEntry | None]:
    """An operator's credit adjustment, with who and why; None when `request_key` was used."""
    user = await lock_user(session, telegram_id)
    entry = await post(
        session,
        user,
        amount,
        Reason.ADMIN_ADJUSTMENT,
        ledger.admin_key(request_key),
        actor=actor,
        note=note,
    )
    return user, entry


def insufficient_credits(balance: int, needed: int) -> ApiError:
    """The 402 for a balance short of what something costs."""
    return ApiError(
        402,
        "insufficient_credits",
        f"Not enough credits: this costs {needed}, the balance is {balance}; "
        f"top up {needed - balance} more.",
        balance=balance,
        missing=needed - balance,
    )


async def post(
    session: AsyncSession,
    user: User,
    amount: int,
    reason: Reason,
    key: str,
    *,
    job_id: str | None = None,
    payment_id: str | None = None,
    actor: str | None = None,
    note: str | None = None,
    new_key: bool = False,
) -> LedgerEntry | None:
    """Write one ledger entry and the balance it implies; None when `key` was posted before.

    The caller must hold the user's lock (lock_user), which makes the replay check exact.
    `new_key` skips that check for a key made from an id drawn in this very transaction (a
    new job's charge), which no entry can hold yet; the key's unique index still stands.
    """
    if not new_key:
        existing = await session.scalar(
            select(LedgerEntry).where(LedgerEntry.idempotency_key == key)
        )
        if existing is not None:
            return None
    try:
        entry, user.balance = ledger.post(user.balance, amount, reason, key)
    except ledger.InsufficientCredits as exc:
        raise insufficient_credits(exc.balance, exc.needed) from None
    except ledger.BalanceLimit as exc:
        raise ApiError(
            422,
            "balance_too_large",
            f"A balance holds at most {ledger.MAX_BALANCE:,} credits; this one has "
            f"{exc.balance:,} and {exc.amount:,} more would pass that.",
        ) from None
    row = LedgerEntry(
        user_id=user.id,
        amount=entry.amount,
        reason=entry.reason.value,
        idempotency_key=entry.key,
        job_id=job_id,
        payment_id=payment_id,
        actor=actor,
        note=note,
    )
    session.add(row)
    await session.flush()
    return row


async def register(
    session: AsyncSession,
    telegram_id: int,
    *,
    username: str | None,
    first_name: str | None,
    language_code: str | None,
    referral: str | None,
    signup_bonus: int,
) -> tuple[User, bool]:
    """Create the user with the signup bonus, or return the existing one unchanged."""
    user = await session.scalar(select(User).where(User.telegram_id == telegram_id))
    if user is not None:
        return user, False
    user = User(
        telegram_id=telegram_id,
        username=username,
        first_name=first_name,
        language_code=language_code,
        referral=referral,
        balance=0,
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        # Another request registered the same user a moment ago: theirs wins.
        await session.rollback()
        user = await session.scalar(select(User).where(User.telegram_id == telegram_id))
        if user is None:
            raise
        return user, False
    if signup_bonus:
        await post(session, user, signup_bonus, Reason.SIGNUP_BONUS, ledger.signup_key(telegram_id))
    return user, True


async def get_user(session: AsyncSession, telegram_id: int) -> User:
    user = await session.scalar(select(User).where(User.telegram_id == telegram_id))
    if user is None:
        raise not_found("user", telegram_id)
    return user


async def ledger_sum(session: AsyncSession, user_id: int) -> int:
    total = await session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(LedgerEntry.user_id == user_id)
    )
    return int(total or 0)
