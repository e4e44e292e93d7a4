"""Many requests for one user at once: the balance and the ledger stay exact.

Each test runs on PostgreSQL (row locks) and SQLite (one writer at a time)."""

import asyncio

import pytest
from sqlalchemy import func, select

from comfygram.backend.models import Job, LedgerEntry, User
from tests.helpers import balance, create_job, grant, register

pytestmark = pytest.mark.money


async def ledger_total(app, telegram_id: int) -> int:
    async with app.state.sessions() as session:
        user = await session.scalar(select(User).where(User.telegram_id == telegram_id))
        total = await session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                LedgerEntry.user_id == user.id
            )
        )
        return int(total)


async def test_fifty_job_creations_with_credit_for_ten(api, app, settings):
    settings.max_active_jobs_per_user = 100
    await register(api)
    await grant(api, 1001, 7, "top-up")  # 3 signup + 7 = 10 credits, bw costs 1

    responses = await asyncio.gather(*(create_job(api) for _ in range(50)))

    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == 10, statuses
    assert statuses.count(402) == 40, statuses
    assert all(
        r.json()["error"]["code"] == "insufficient_credits"
        for r in responses
        if r.status_code == 402
    )
    assert await balance(api) == 0
    assert await ledger_total(app, 1001) == 0
    async with app.state.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == 10


async def test_ten_confirmations_of_one_charge_credit_once(api, app):
    await register(api)
    invoice = (
        await api.post("/api/payments/create", json={"telegram_id": 1001, "package": "small"})
    ).json()
    body = {
        "payload": invoice["payload"],
        "telegram_payment_charge_id": "stxCHARGE-1",
        "total_amount": invoice["amount"],
        "currency": "XTR",
    }

    responses = await asyncio.gather(
        *(api.post("/api/payments/confirm", json=body) for _ in range(10))
    )

    assert [r.status_code for r in responses] == [200] * 10
    assert sum(r.json()["credited"] for r in responses) == 1
    assert {r.json()["balance"] for r in responses} == {3 + invoice["credits"]}
    assert await balance(api) == 3 + invoice["credits"]
    assert await ledger_total(app, 1001) == 3 + invoice["credits"]


async def test_one_invoice_paid_with_two_charges_is_credited_once(api):
    await register(api)
    invoice = (
        await api.post("/api/payments/create", json={"telegram_id": 1001, "package": "small"})
    ).json()

    def confirm(charge: str):
        return api.post(
            "/api/payments/confirm",
            json={
                "payload": invoice["payload"],
                "telegram_payment_charge_id": charge,
                "total_amount": invoice["amount"],
                "currency": "XTR",
            },
        )

    responses = await asyncio.gather(*(confirm(f"charge-{i}") for i in range(6)))
    assert sorted(r.status_code for r in responses) == [200] + [409] * 5
    assert await balance(api) == 3 + invoice["credits"]


async def test_concurrent_registrations_create_one_user_and_one_bonus(api, app):
    responses = await asyncio.gather(
        *(api.post("/api/users/register", json={"telegram_id": 1001}) for _ in range(20))
    )
    assert sorted(r.status_code for r in responses) == [200] * 19 + [201]
    assert await balance(api) == 3
    assert await ledger_total(app, 1001) == 3


async def test_one_idempotency_key_sent_ten_times_at_once_charges_once(api, app):
    await register(api)
    responses = await asyncio.gather(*(create_job(api, key="tap-1") for _ in range(10)))
    assert [r.status_code for r in responses] == [201] * 10
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 9
    assert await balance(api) == 2
    assert await ledger_total(app, 1001) == 2


async def test_concurrent_refunds_and_cancels_refund_once(api, app):
    await register(api)
    job = (await create_job(api)).json()
    cancels = [
        api.post(f"/api/jobs/{job['id']}/status", json={"status": "cancelled"}) for _ in range(5)
    ]
    refunds = [api.post(f"/api/jobs/{job['id']}/refund") for _ in range(5)]
    responses = await asyncio.gather(*cancels, *refunds)
    # A refund that arrives before the cancel finds the job still queued: 409, nothing changes.
    assert all(r.status_code in (200, 409) for r in responses), [r.text for r in responses]
    assert await balance(api) == 3
    assert await ledger_total(app, 1001) == 3
