"""The rule for taking back the credits of a refunded Stars payment, and what the user is told.

Policy (docs/payments.md, "Refunds"): a refund takes back the payment's credits, but never
more than the balance holds, so a balance never goes below zero; credits already spent stay
spent (the shortfall), and are written down in the ledger entry's note.
"""

from __future__ import annotations

from comfygram.i18n import t


def take_back_amount(credits: int, balance: int) -> tuple[int, int]:
    """(credits to take back, shortfall) for a refund of a payment of ``credits``."""
    if credits < 0 or balance < 0:
        raise ValueError("credits and balance are never negative")
    taken = min(credits, balance)
    return taken, credits - taken


def refunded_text(language: str | None, stars: int, taken: int, shortfall: int) -> str:
    """What the user is told, once, when a payment of theirs is refunded."""
    if taken == 0:
        return t(language, "support.nothing_taken", stars=stars)
    text = t(language, "support.refunded", stars=stars, taken=taken)
    if shortfall:
        text += t(language, "support.short", shortfall=shortfall)
    return text
