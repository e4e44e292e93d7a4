"""`comfygram audit` (docs/payments.md, "Audit"): clean after a real journey through the API
(payments, jobs charged, failed, cancelled, a promo code), and one line per discrepancy with
exit 1 on a database broken on purpose. Each test runs on SQLite and PostgreSQL, the command as
an operator runs it: a real process against the test's database."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, select, update

from comfygram.backend import accounts, audit
from comfygram.backend.models import Job, LedgerEntry, Payment, PromoCode, PromoRedemption, User
from comfygram.domain import ledger
from comfygram.domain.ledger import Reason
from comfygram.settings import Settings
from tests.conftest import audit_database
from tests.helpers import balance, create_job, register


async def comfygram_audit(settings: Settings, cwd: Path) -> tuple[int, list[str]]:
    """Run `comfygram audit` on the test's database: (exit code, lines printed)."""
    env = {
        **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")},
        "PYTHONPATH": os.pathsep.join(sys.path),
        "DATABASE_URL": settings.database_url,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfygram",
        "audit",
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert not err.strip(), err.decode()
    assert process.returncode is not None
    return process.returncode, out.decode().strip().splitlines()


async def _status(api: httpx.AsyncClient, job_id: str, target: str) -> None:
    response = await api.post(f"/api/jobs/{job_id}/status", json={"status": target})
    assert response.status_code == 200, response.text


async def _paid(api: httpx.AsyncClient, telegram_id: int, charge: str) -> dict:
    created = await api.post(
        "/api/payments/create", json={"telegram_id": telegram_id, "package": "small"}
    )
    invoice = created.json()
    body = {"payload": invoice["payload"], "total_amount": invoice["amount"], "currency": "XTR"}
    assert (await api.post("/api/payments/precheck", json=body)).status_code == 200
    confirmed = await api.post(
        "/api/payments/confirm", json=body | {"telegram_payment_charge_id": charge}
    )
    assert confirmed.json()["credited"] is True, confirmed.text
    return invoice


async def _journey(app, api: httpx.AsyncClient) -> dict[str, str]:
    """Money moved every way the product moves it; returns the ids a test may break."""
    ids: dict[str, str] = {}
    for telegram_id in (2001, 2002, 2003, 2004, 2005):
        await register(api, telegram_id)
    ids["paid"] = (await _paid(api, 2002, "charge-2002"))["payload"]
    await _paid(api, 2003, "charge-2003")
    failed = (await create_job(api, 2004)).json()
    await _status(api, failed["id"], "processing")
    await _status(api, failed["id"], "failed")
    ids["failed"] = failed["id"]
    cancelled = (await create_job(api, 2004)).json()
    await _status(api, cancelled["id"], "cancelled")
    ids["queued"] = (await create_job(api, 2005)).json()["id"]
    unpaid = await api.post("/api/payments/create", json={"telegram_id": 2001, "package": "small"})
    ids["unpaid"] = unpaid.json()["payload"]
    async with app.state.sessions() as session:
        session.add(PromoCode(code="WELCOME", credits=4, max_uses=1, uses=1))
        await session.flush()
        user = await accounts.lock_user(session, 2001)
        session.add(PromoRedemption(code="WELCOME", user_id=user.id, credits=4))
        await accounts.post(session, user, 4, Reason.PROMO, ledger.promo_key("WELCOME", 2001))
        await session.commit()
    return ids


async def _user_id(session, telegram_id: int) -> int:
    return await session.scalar(select(User.id).where(User.telegram_id == telegram_id))


async def _post_raw(
    session, telegram_id: int, amount: int, reason: Reason, key: str, **columns: object
) -> None:
    """A ledger row and its balance change, written past accounts.post (as a bug would)."""
    user_id = await _user_id(session, telegram_id)
    session.add(
        LedgerEntry(
            user_id=user_id, amount=amount, reason=reason.value, idempotency_key=key, **columns
        )
    )
    await session.execute(
        update(User).where(User.id == user_id).values(balance=User.balance + amount)
    )


@pytest.mark.money
async def test_audit_is_clean_after_a_real_journey(app, api, settings, tmp_path):
    await _journey(app, api)
    assert await balance(api, 2004) == 3  # charged twice, refunded twice
    code, lines = await comfygram_audit(settings, tmp_path)
    assert (code, lines) == (0, ["audit: clean (5 users' books add up)"])
    async with app.state.sessions() as session:
        assert await audit.run(session) == []


async def test_audit_names_each_discrepancy_of_a_database_broken_on_purpose(
    app, api, settings, tmp_path
):
    ids = await _journey(app, api)
    async with app.state.sessions() as session:
        # 1. A balance edited by hand.
        await session.execute(
            update(User).where(User.telegram_id == 2001).values(balance=User.balance + 5)
        )
        # 2. A payment's refund debited twice (two keys: the unique key cannot stop it).
        paid = await session.scalar(select(Payment).where(Payment.payload == ids["paid"]))
        for key in ("payment:charge-2002:refund", "payment:charge-2002:refund-again"):
            await _post_raw(session, 2002, -1, Reason.PAYMENT_REFUND, key, payment_id=paid.id)
        # 3. A payment credited twice.
        other = await session.scalar(
            select(Payment).where(Payment.telegram_payment_charge_id == "charge-2003")
        )
        await _post_raw(
            session, 2003, other.credits, Reason.PAYMENT, "payment:replayed", payment_id=other.id
        )
        # 4. A failed job's refund lost (and its credits with it).
        refund = await session.scalar(
            select(LedgerEntry).where(
                LedgerEntry.idempotency_key == ledger.refund_key(ids["failed"])
            )
        )
        await session.execute(delete(LedgerEntry).where(LedgerEntry.id == refund.id))
        await session.execute(
            update(User)
            .where(User.id == refund.user_id)
            .values(balance=User.balance - refund.amount)
        )
        # 5. A job that succeeded, refunded by the machinery (no operator named).
        await session.execute(update(Job).where(Job.id == ids["queued"]).values(status="succeeded"))
        await _post_raw(session, 2005, 1, Reason.JOB_REFUND, "job:x:refund", job_id=ids["queued"])
        # 6. A promo code redeemed more often than allowed.
        session.add(
            PromoRedemption(code="WELCOME", user_id=await _user_id(session, 2003), credits=4)
        )
        # 7. An invoice marked paid that nothing credited.
        await session.execute(
            update(Payment)
            .where(Payment.payload == ids["unpaid"])
            .values(status="paid", telegram_payment_charge_id="charge-never")
        )
        await session.commit()

    code, lines = await comfygram_audit(settings, tmp_path)
    assert code == 1, lines
    *found, summary = lines
    # Break 2 is three findings: debited twice, and each take-back of a payment still paid.
    assert summary == "audit: 9 discrepancies"
    rules = sorted(line.split(":")[0] for line in found)
    assert rules == [
        "balance_mismatch",
        "job_not_refunded",
        "payment_credited_twice",
        "payment_not_credited",
        "payment_refund",
        "payment_refund",
        "promo_over_used",
        "refund_debited_twice",
        "succeeded_job_refunded",
    ], found
    assert f"payment {paid.id} is paid, not refunded" in "\n".join(found)
    assert "balance_mismatch: user 2001: balance" in "\n".join(found)
    assert f"job_not_refunded: job {ids['failed']}: failed" in "\n".join(found)
    assert "promo_over_used: promo WELCOME: 2 redemptions of 1 allowed" in found
    # The teardown check of money tests sees the same.
    teardown = await audit_database(settings.database_url)
    assert teardown is not None and sorted(x.split(":")[0] for x in teardown) == rules


async def test_a_job_refunded_twice_and_a_refund_asked_for_through_the_api(
    app, api, settings, tmp_path
):
    ids = await _journey(app, api)
    async with app.state.sessions() as session:
        # A refund of a succeeded job someone asked for carries who (actor "api"): allowed.
        await session.execute(update(Job).where(Job.id == ids["queued"]).values(status="succeeded"))
        await session.commit()
    refunded = await api.post(f"/api/jobs/{ids['queued']}/refund")
    assert refunded.status_code == 200 and refunded.json()["refunded"] is True
    async with app.state.sessions() as session:
        actor = await session.scalar(
            select(LedgerEntry.actor).where(
                LedgerEntry.idempotency_key == ledger.refund_key(ids["queued"])
            )
        )
        assert actor == "api"
        assert await audit.run(session) == []
        # The failed job refunded a second time.
        await _post_raw(
            session, 2004, 1, Reason.JOB_REFUND, "job:again:refund", job_id=ids["failed"]
        )
        await session.commit()
    code, lines = await comfygram_audit(settings, tmp_path)
    assert code == 1
    assert lines == [
        f"job_refunded_twice: job {ids['failed']}: failed, 2 refund entries",
        "audit: 1 discrepancy",
    ]


def _gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


async def test_the_backend_audits_periodically_and_exports_the_count(settings, redis, tmp_path):
    """AUDIT_INTERVAL_SECONDS: the backend's own audit finds a balance edited by hand and
    sets comfygram_audit_discrepancies; once the books add up again it goes back to 0."""
    from comfygram.backend.app import create_app
    from tests.helpers import backend_client, seed_sqlite

    await seed_sqlite(settings.database_url)
    application = create_app(settings.model_copy(update={"audit_interval_seconds": 0.2}))
    async with (
        application.router.lifespan_context(application),
        backend_client(application) as api,
    ):
        await register(api, 3001)
        await register(api, 3002)
        async with application.state.sessions() as session:
            await session.execute(
                update(User).where(User.telegram_id.in_((3001, 3002))).values(balance=99)
            )
            await session.commit()

        async def exported() -> float | None:
            text = (await api.get("/metrics")).text
            return _gauge(text, "comfygram_audit_discrepancies")

        for _ in range(100):
            if await exported() == 2:
                break
            await asyncio.sleep(0.1)
        assert await exported() == 2
        async with application.state.sessions() as session:
            await session.execute(
                update(User).where(User.telegram_id.in_((3001, 3002))).values(balance=3)
            )
            await session.commit()
        for _ in range(100):
            if await exported() == 0:
                break
            await asyncio.sleep(0.1)
        assert await exported() == 0
