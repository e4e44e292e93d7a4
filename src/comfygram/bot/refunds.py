"""Giving back Stars that cannot be credited, with refundStarPayment (docs/payments.md).

The backend records each such charge once (keyed by telegram_payment_charge_id) and hands it
to one caller at a time. That caller asks Telegram for the refund and reports the answer;
only the report that marks it refunded tells the user. A network failure lets the charge go
back to the pool, and PendingPayments' loop tries again every few seconds. Telegram refuses
a second refund of one charge (CHARGE_ALREADY_REFUNDED), which is taken as "done": so a
refund whose answer was lost is finished, never made twice.
"""

from __future__ import annotations

import logging

from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.methods import RefundStarPayment, SendMessage

from comfygram.api import BackendClient, ChargeRefund
from comfygram.i18n import t
from comfygram.telegram import MessageGone, TelegramSender, TelegramUnavailable, UserBlocked

log = logging.getLogger(__name__)

# The backend's answers to confirm that mean "these Stars cannot be credited": the invoice
# was paid with another charge, is unknown, expired, priced otherwise, or this very charge
# is already being given back.
UNCREDITABLE = frozenset(
    {
        "payment_closed",
        "payment_not_found",
        "amount_mismatch",
        "currency_mismatch",
        "payment_expired",
        "charge_refunded",
    }
)

ALREADY_REFUNDED = "CHARGE_ALREADY_REFUNDED"


class ChargeRefunds:
    def __init__(self, backend: BackendClient, tg: TelegramSender) -> None:
        self.backend = backend
        self.tg = tg

    async def refund(
        self,
        *,
        payload: str,
        total_amount: int,
        currency: str,
        charge_id: str,
        telegram_id: int,
        chat_id: int,
        lang: str,
    ) -> None:
        """Record the charge for a refund and make it now if this caller holds it.

        Raises BackendUnavailable when the backend could not record it: the caller keeps the
        charge and reports it again later.
        """
        refund = await self.backend.record_refund(
            payload,
            total_amount,
            currency,
            charge_id,
            telegram_id=telegram_id,
            chat_id=chat_id,
            language=lang,
        )
        log.warning(
            "charge %s of %d %s cannot be credited (%s): refund %s",
            charge_id,
            total_amount,
            currency,
            refund.reason,
            "now" if refund.claimed else refund.status,
        )
        if refund.claimed:
            await self.make(refund)

    async def retry_due(self) -> None:
        """Every refund still due that nobody holds (a network failure, a crashed process)."""
        for due in await self.backend.due_refunds():
            claimed = await self.backend.claim_refund(due.telegram_payment_charge_id)
            if claimed.claimed:
                await self.make(claimed)

    async def make(self, refund: ChargeRefund) -> None:
        """Call refundStarPayment for a refund this caller holds, and report the answer."""
        charge_id = refund.telegram_payment_charge_id
        method = RefundStarPayment(user_id=refund.telegram_id, telegram_payment_charge_id=charge_id)
        outcome, error = "refunded", None
        try:
            await self.tg.call(method, chat_id=None)
        except TelegramBadRequest as exc:
            if ALREADY_REFUNDED not in exc.message.upper():
                outcome, error = "failed", exc.message[:300]
        except UserBlocked as exc:
            outcome, error = "failed", str(exc)[:300]
        except (TelegramUnavailable, TelegramAPIError) as exc:
            outcome, error = "retry", f"{type(exc).__name__}: {exc}"[:300]
        result = await self.backend.refund_result(charge_id, outcome, error)
        if outcome == "failed":
            log.error("refund of charge %s refused by Telegram: %s", charge_id, error)
        elif outcome == "retry":
            log.warning("refund of charge %s not made yet (%s); retrying", charge_id, error)
        elif result.changed:
            log.info("charge %s refunded: %d %s", charge_id, refund.amount, refund.currency)
            await self._tell(result)

    async def _tell(self, refund: ChargeRefund) -> None:
        text = t(refund.language, "bot.pay.refunded", stars=refund.amount)
        method = SendMessage(chat_id=refund.chat_id, text=text)
        try:
            await self.tg.call(method, chat_id=refund.chat_id)
        except (UserBlocked, MessageGone, TelegramUnavailable) as exc:
            log.info(
                "charge %s refunded, user not told: %s", refund.telegram_payment_charge_id, exc
            )
