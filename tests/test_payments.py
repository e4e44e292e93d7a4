"""Stars payments at the backend: one approved pre-checkout per invoice at a time, invoices
that expire or whose package changed, and charges that cannot be credited recorded once for
a refund (docs/payments.md). Each test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select, update

from comfygram.backend import payments
from comfygram.backend.models import ChargeRefund, Payment, utcnow
from comfygram.settings import CreditPackage
from tests.helpers import balance, register

pytestmark = pytest.mark.money


async def _invoice(api: httpx.AsyncClient, telegram_id: int = 1001, package: str = "small"):
    response = await api.post(
        "/api/payments/create", json={"telegram_id": telegram_id, "package": package}
    )
    assert response.status_code == 201, response.text
    return response.json()


def _check(invoice: dict, **extra: object) -> dict:
    return {
        "payload": invoice["payload"],
        "total_amount": invoice["amount"],
        "currency": "XTR",
    } | extra


def _confirm(invoice: dict, charge: str) -> dict:
    return _check(invoice, telegram_payment_charge_id=charge)


def _refund(invoice: dict, charge: str, telegram_id: int = 1001) -> dict:
    return _confirm(invoice, charge) | {"telegram_id": telegram_id, "chat_id": telegram_id}


async def _age(app, payload: str, **columns: object) -> None:
    async with app.state.sessions() as session:
        await session.execute(update(Payment).where(Payment.payload == payload).values(**columns))
        await session.commit()


async def test_concurrent_prechecks_of_one_invoice_approve_exactly_one(api):
    await register(api)
    invoice = await _invoice(api)
    answers = await asyncio.gather(
        *(api.post("/api/payments/precheck", json=_check(invoice)) for _ in range(6))
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 409, 409, 409, 409, 409], [a.text for a in answers]
    refused = [a.json()["error"] for a in answers if a.status_code == 409]
    assert {e["code"] for e in refused} == {"payment_in_progress"}
    assert "being paid" in refused[0]["message"]


async def test_an_approved_precheck_holds_the_invoice_for_the_hold_window(api, app):
    await register(api)
    invoice = await _invoice(api)
    assert (await api.post("/api/payments/precheck", json=_check(invoice))).status_code == 200
    again = await api.post("/api/payments/precheck", json=_check(invoice))
    assert again.status_code == 409 and again.json()["error"]["code"] == "payment_in_progress"
    # The approved attempt never became a payment: after the hold the owner may try again.
    earlier = utcnow() - timedelta(seconds=payments.PRECHECKOUT_HOLD_SECONDS + 1)
    await _age(app, invoice["payload"], precheckout_at=earlier)
    assert (await api.post("/api/payments/precheck", json=_check(invoice))).status_code == 200


async def test_someone_elses_invoice_is_refused_at_precheck(api):
    await register(api)
    await register(api, 1002)
    invoice = await _invoice(api)
    stranger = await api.post("/api/payments/precheck", json=_check(invoice, telegram_id=1002))
    assert stranger.status_code == 403
    assert stranger.json()["error"]["code"] == "payment_not_yours"
    owner = await api.post("/api/payments/precheck", json=_check(invoice, telegram_id=1001))
    assert owner.status_code == 200


async def test_an_old_invoice_expires(api, app, settings):
    await register(api)
    invoice = await _invoice(api)
    long_ago = utcnow() - timedelta(seconds=settings.payment_invoice_ttl_seconds + 5)
    await _age(app, invoice["payload"], created_at=long_ago)
    answer = await api.post("/api/payments/precheck", json=_check(invoice))
    assert answer.status_code == 410, answer.text
    assert answer.json()["error"]["code"] == "payment_expired"
    # Nothing was reserved or paid.
    async with app.state.sessions() as session:
        row = await session.scalar(select(Payment).where(Payment.payload == invoice["payload"]))
        assert (row.status, row.precheckout_at) == ("pending", None)


async def test_an_invoice_whose_package_changed_is_refused_but_an_approved_one_is_honoured(
    api, app, settings
):
    await register(api)
    approved = await _invoice(api)
    waiting = await _invoice(api)
    assert (await api.post("/api/payments/precheck", json=_check(approved))).status_code == 200
    # The operator changes the small package: 20 credits for 90 Stars now.
    settings.credit_packages = [
        CreditPackage(id="small", credits=20, stars=90),
        *settings.credit_packages[1:],
    ]
    refused = await api.post("/api/payments/precheck", json=_check(waiting))
    assert refused.status_code == 410 and refused.json()["error"]["code"] == "payment_expired"
    # The pre-checkout approved the old terms, Telegram took 50 Stars: 10 credits, as offered.
    paid = await api.post("/api/payments/confirm", json=_confirm(approved, "charge-old"))
    assert paid.status_code == 200, paid.text
    assert (paid.json()["credits"], paid.json()["amount"]) == (10, 50)
    assert await balance(api) == 3 + 10
    # A package removed altogether refuses its invoices the same way.
    large = await _invoice(api, package="large")
    settings.credit_packages = [p for p in settings.credit_packages if p.id != "large"]
    gone = await api.post("/api/payments/precheck", json=_check(large))
    assert gone.status_code == 410


async def test_an_uncreditable_charge_is_recorded_once_and_claimed_by_one_caller(api, app):
    await register(api)
    invoice = await _invoice(api)
    assert (await api.post("/api/payments/confirm", json=_confirm(invoice, "charge-A"))).json()[
        "credited"
    ]
    # A forwarded copy was paid again: charge-B cannot be credited.
    second = await api.post("/api/payments/confirm", json=_confirm(invoice, "charge-B"))
    assert second.status_code == 409 and second.json()["error"]["code"] == "payment_closed"

    answers = await asyncio.gather(
        *(api.post("/api/payments/refunds", json=_refund(invoice, "charge-B")) for _ in range(6))
    )
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    bodies = [a.json() for a in answers]
    assert sum(b["claimed"] for b in bodies) == 1
    assert {(b["reason"], b["status"], b["telegram_id"], b["amount"]) for b in bodies} == {
        ("payment_closed", "due", 1001, 50)
    }
    async with app.state.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(ChargeRefund)) == 1

    # Telegram gave the Stars back: marked once, only the first report says it changed.
    done = [
        await api.post("/api/payments/refunds/charge-B/result", json={"outcome": "refunded"})
        for _ in range(2)
    ]
    assert [d.json()["changed"] for d in done] == [True, False]
    assert done[1].json()["status"] == "refunded"
    # Reported again later (a redelivered successful_payment): nothing more to do.
    later = await api.post("/api/payments/refunds", json=_refund(invoice, "charge-B"))
    assert (later.json()["status"], later.json()["claimed"]) == ("refunded", False)
    assert (await api.get("/api/payments/refunds")).json() == []
    assert await balance(api) == 3 + 10


async def test_a_credited_or_creditable_charge_is_never_refunded(api):
    await register(api)
    invoice = await _invoice(api)
    creditable = await api.post("/api/payments/refunds", json=_refund(invoice, "charge-A"))
    assert creditable.status_code == 409
    assert creditable.json()["error"]["code"] == "payment_creditable"
    await api.post("/api/payments/confirm", json=_confirm(invoice, "charge-A"))
    credited = await api.post("/api/payments/refunds", json=_refund(invoice, "charge-A"))
    assert credited.status_code == 409
    assert credited.json()["error"]["code"] == "charge_credited"


async def test_a_refunded_charge_is_never_credited(api, app):
    """An unknown invoice's charge is refunded; the same charge id is never credited after."""
    await register(api)
    unknown = {"payload": "cg-unknown", "amount": 50}
    recorded = await api.post("/api/payments/refunds", json=_refund(unknown, "charge-X"))
    assert recorded.json()["reason"] == "payment_not_found" and recorded.json()["claimed"]
    # An expired invoice (no approved pre-checkout) paid anyway: refunded too, not credited.
    invoice = await _invoice(api)
    await _age(app, invoice["payload"], created_at=utcnow() - timedelta(days=30))
    refused = await api.post("/api/payments/confirm", json=_confirm(invoice, "charge-Y"))
    assert refused.status_code == 410
    recorded = await api.post("/api/payments/refunds", json=_refund(invoice, "charge-Y"))
    assert recorded.json()["reason"] == "payment_expired"
    again = await api.post("/api/payments/confirm", json=_confirm(invoice, "charge-Y"))
    assert again.status_code in (409, 410)
    assert await balance(api) == 3


async def test_a_refund_that_failed_on_the_network_is_due_again(api, app):
    await register(api)
    unknown = {"payload": "cg-unknown", "amount": 50}
    first = await api.post("/api/payments/refunds", json=_refund(unknown, "charge-N"))
    assert first.json()["claimed"]
    # Held by the first caller: not listed, and nobody else may claim it.
    assert (await api.get("/api/payments/refunds")).json() == []
    held = await api.post("/api/payments/refunds/charge-N/claim")
    assert held.json()["claimed"] is False
    retry = await api.post(
        "/api/payments/refunds/charge-N/result", json={"outcome": "retry", "error": "timeout"}
    )
    assert retry.json()["status"] == "due"
    (due,) = (await api.get("/api/payments/refunds")).json()
    assert due["telegram_payment_charge_id"] == "charge-N" and due["error"] == "timeout"
    claims = await asyncio.gather(
        *(api.post("/api/payments/refunds/charge-N/claim") for _ in range(4))
    )
    assert sum(c.json()["claimed"] for c in claims) == 1
    assert claims[0].json()["attempts"] >= 2
    # A lease that ran out (the holder died) can be taken over.
    async with app.state.sessions() as session:
        await session.execute(
            update(ChargeRefund).values(claimed_until=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    assert (await api.post("/api/payments/refunds/charge-N/claim")).json()["claimed"]
    failed = await api.post(
        "/api/payments/refunds/charge-N/result",
        json={"outcome": "failed", "error": "CHARGE_NOT_FOUND"},
    )
    assert failed.json()["status"] == "failed" and failed.json()["changed"]
    assert (await api.get("/api/payments/refunds")).json() == []
    missing = await api.post("/api/payments/refunds/charge-none/claim")
    assert missing.status_code == 404
