"""Stars payments Telegram took but the backend could not credit yet (it was down).

A successful_payment arrives once; if the backend cannot take it at that moment the payment
must not be forgotten. It waits in a Redis hash under the bot's prefix and is confirmed again
every few seconds until the backend answers. The backend credits once per charge id, so
retrying (also from several processes at once) never credits twice, and only the call that
credited thanks the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiogram.methods import SendMessage
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from comfygram.api import BackendClient, BackendError, BackendUnavailable, Payment
from comfygram.bot.keys import bot_key
from comfygram.bot.refunds import UNCREDITABLE, ChargeRefunds
from comfygram.bot.routers.growth import tell_referrer
from comfygram.i18n import t
from comfygram.telegram import MessageGone, TelegramSender, TelegramUnavailable, UserBlocked

log = logging.getLogger(__name__)


class PendingPayment(BaseModel):
    chat_id: int
    # Who paid (refundStarPayment's user_id); entries stored before it was kept: the chat.
    telegram_id: int | None = None
    lang: str
    payload: str
    total_amount: int
    currency: str
    charge_id: str


def thanks(lang: str, payment: Payment) -> str:
    return t(lang, "bot.pay.thanks", credits=payment.credits, balance=payment.balance)


class PendingPayments:
    def __init__(
        self,
        redis: Redis,
        prefix: str,
        backend: BackendClient,
        tg: TelegramSender,
        interval: float = 10.0,
    ) -> None:
        self.redis = redis
        self.backend = backend
        self.tg = tg
        self.interval = interval
        self.key = bot_key(prefix, "payments", "pending")
        # Charges that cannot be credited are given back (refundStarPayment), retried here too.
        self.refunds = ChargeRefunds(backend, tg)

    async def add(self, payment: PendingPayment) -> None:
        await self.redis.hset(self.key, payment.charge_id, payment.model_dump_json())

    async def give_back(self, payment: PendingPayment) -> None:
        """Refund a charge the backend refused to credit; BackendUnavailable propagates."""
        await self.refunds.refund(
            payload=payment.payload,
            total_amount=payment.total_amount,
            currency=payment.currency,
            charge_id=payment.charge_id,
            telegram_id=payment.telegram_id or payment.chat_id,
            chat_id=payment.chat_id,
            lang=payment.lang,
        )

    async def run(self) -> None:
        while True:
            try:
                await self.retry()
            except (RedisError, OSError) as exc:
                log.warning("pending payments not retried: %s", type(exc).__name__)
            except Exception:
                log.exception("pending payments retry failed")
            await asyncio.sleep(self.interval)

    async def retry(self) -> None:
        await self._retry_confirmations()
        with contextlib.suppress(BackendUnavailable):  # still away: next round
            await self.refunds.retry_due()

    async def _retry_confirmations(self) -> None:
        for charge_id, raw in (await self.redis.hgetall(self.key)).items():
            pending = PendingPayment.model_validate_json(raw)
            try:
                payment = await self.backend.confirm_payment(
                    pending.payload, pending.total_amount, pending.currency, charge_id
                )
            except BackendUnavailable:
                return  # still away; next round
            except BackendError as exc:
                # A definite no (wrong amount, another charge): the Stars go back.
                if exc.code in UNCREDITABLE:
                    try:
                        await self.give_back(pending)
                    except BackendUnavailable:
                        return
                else:
                    log.error("payment %s cannot be credited: %s", charge_id, exc)
                await self.redis.hdel(self.key, charge_id)
                continue
            await self.redis.hdel(self.key, charge_id)
            if payment.credited:
                method = SendMessage(chat_id=pending.chat_id, text=thanks(pending.lang, payment))
                try:
                    await self.tg.call(method, chat_id=pending.chat_id)
                except (UserBlocked, MessageGone, TelegramUnavailable) as exc:
                    log.info("payment %s credited, thanks not sent: %s", charge_id, exc)
                await tell_referrer(self.tg, payment)
