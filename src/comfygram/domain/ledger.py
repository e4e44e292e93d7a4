"""The credit ledger's rules: every balance change is an entry, keyed so replays are no-ops."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    SIGNUP_BONUS = "signup_bonus"
    JOB_CHARGE = "job_charge"
    JOB_REFUND = "job_refund"
    PAYMENT = "payment"
    # The credits a refunded payment bought, taken back (never below zero: what is left).
    PAYMENT_REFUND = "payment_refund"
    PROMO = "promo"
    REFERRAL_BONUS = "referral_bonus"
    ADMIN_ADJUSTMENT = "admin_adjustment"


class InsufficientCredits(Exception):
    def __init__(self, balance: int, needed: int) -> None:
        super().__init__(f"balance {balance} is short of {needed}")
        self.balance = balance
        self.needed = needed

    @property
    def missing(self) -> int:
        return self.needed - self.balance


# The most credits one balance may hold: far inside the 64-bit columns, and exact as a JSON
# number in any client (2**53). Postings past it are refused, so no sum ever overflows.
MAX_BALANCE = 10**15


class BalanceLimit(Exception):
    def __init__(self, balance: int, amount: int) -> None:
        super().__init__(f"balance {balance} + {amount} is over {MAX_BALANCE}")
        self.balance = balance
        self.amount = amount


# Which way each reason may move a balance; an admin adjustment may go either way.
_SIGN = {
    Reason.SIGNUP_BONUS: 1,
    Reason.JOB_CHARGE: -1,
    Reason.JOB_REFUND: 1,
    Reason.PAYMENT: 1,
    Reason.PAYMENT_REFUND: -1,
    Reason.PROMO: 1,
    Reason.REFERRAL_BONUS: 1,
    Reason.ADMIN_ADJUSTMENT: 0,
}


@dataclass(frozen=True)
class Entry:
    amount: int
    reason: Reason
    key: str


def signup_key(telegram_id: int) -> str:
    return f"signup:{telegram_id}"


def charge_key(job_id: str) -> str:
    return f"job:{job_id}:charge"


def refund_key(job_id: str) -> str:
    return f"job:{job_id}:refund"


def payment_key(charge_id: str) -> str:
    return f"payment:{charge_id}"


def payment_refund_key(charge_id: str) -> str:
    """One take-back per charge, whoever reports the refund first (our call or Telegram)."""
    return f"payment:{charge_id}:refund"


def promo_key(code: str, telegram_id: int) -> str:
    return f"promo:{code}:{telegram_id}"


def referral_key(referred_telegram_id: int) -> str:
    """One bonus per referred user, whatever happens to their payments after."""
    return f"referral:{referred_telegram_id}"


def admin_key(request_key: str) -> str:
    return f"admin:{request_key}"


def post(balance: int, amount: int, reason: Reason, key: str) -> tuple[Entry, int]:
    """Check one posting against a balance; return the entry and the new balance.

    Raises InsufficientCredits when the balance would go negative, BalanceLimit when it would
    pass MAX_BALANCE, and ValueError when the amount does not fit the reason (a charge that
    adds credits, a zero entry).
    """
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ValueError("amount must be a whole number of credits")
    if amount == 0 and reason is not Reason.SIGNUP_BONUS:
        raise ValueError("amount must not be zero")
    sign = _SIGN[reason]
    if sign and amount * sign < 0:
        raise ValueError(f"a {reason.value} entry cannot move the balance that way")
    if not key:
        raise ValueError("every entry needs an idempotency key")
    new_balance = balance + amount
    if new_balance < 0:
        raise InsufficientCredits(balance, -amount)
    if new_balance > MAX_BALANCE and amount > 0:
        raise BalanceLimit(balance, amount)
    return Entry(amount=amount, reason=reason, key=key), new_balance


def balance_of(entries: list[Entry]) -> int:
    return sum(e.amount for e in entries)
