"""Balances past 32 bits work (migration 0003), and no posting can overflow 64 bits."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from comfygram.backend import accounts
from comfygram.backend.models import LedgerEntry, User
from comfygram.domain import ledger
from tests.helpers import balance, create_job, register

pytestmark = pytest.mark.money


async def operator_credit(app: FastAPI, amount: int, key: str) -> int:
    """An operator's adjustment straight through the ledger (past the API's per-call bound)."""
    async with app.state.sessions() as session:
        user, _entry = await accounts.adjust(
            session, 1001, amount, note="big test", actor="tests", request_key=key
        )
        await session.commit()
        return user.balance


async def ledger_state(app: FastAPI) -> tuple[int, int, int]:
    async with app.state.sessions() as session:
        user = await session.scalar(select(User).where(User.telegram_id == 1001))
        entries = await session.scalar(select(func.count()).select_from(LedgerEntry))
        return user.balance, await accounts.ledger_sum(session, user.id), entries


async def test_a_balance_above_2_31_works(app: FastAPI, api: httpx.AsyncClient) -> None:
    await register(api)
    assert await operator_credit(app, 2**31, "big-1") == 2**31 + 3
    credited = await api.post(
        "/api/users/by-telegram-id/1001/credits",
        json={"amount": 5, "reason": "r", "actor": "a", "idempotency_key": "k"},
    )
    assert credited.status_code == 200, credited.text
    assert credited.json()["balance"] == 2**31 + 8
    job = await create_job(api)
    assert job.status_code == 201, job.text
    assert await balance(api) == 2**31 + 7
    assert await operator_credit(app, 2**40, "big-2") == 2**40 + 2**31 + 7
    balance_now, ledger_sum, _ = await ledger_state(app)
    assert balance_now == ledger_sum == 2**40 + 2**31 + 7


async def test_no_balance_passes_the_ceiling(app: FastAPI, api: httpx.AsyncClient) -> None:
    """At MAX_BALANCE, a credit is refused with a clear 422 and changes nothing; a charge
    still works."""
    await register(api)
    assert await operator_credit(app, ledger.MAX_BALANCE - 3, "to-the-top") == ledger.MAX_BALANCE
    before = await ledger_state(app)
    refused = await api.post(
        "/api/users/by-telegram-id/1001/credits",
        json={"amount": 1, "reason": "r", "actor": "a", "idempotency_key": "one-more"},
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "balance_too_large"
    assert await ledger_state(app) == before
    assert (await create_job(api)).status_code == 201
    assert await balance(api) == ledger.MAX_BALANCE - 1


@pytest.mark.parametrize(
    ("start", "amount"), [(ledger.MAX_BALANCE, 1), (0, 2**63), (2**63 - 1, 2**63 - 1)]
)
def test_the_ledger_refuses_a_posting_past_the_ceiling(start: int, amount: int) -> None:
    with pytest.raises(ledger.BalanceLimit):
        ledger.post(start, amount, ledger.Reason.ADMIN_ADJUSTMENT, "k")


def test_the_ceiling_fits_64_bits_and_json_numbers() -> None:
    assert ledger.MAX_BALANCE * 2 < 2**53 < 2**63 - 1
