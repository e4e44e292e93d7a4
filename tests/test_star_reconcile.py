"""Reconciliation with Telegram (docs/payments.md, "Reconciliation"): getStarTransactions of
the Telegram double, paged, compared with the payments table. A charge whose successful_payment
was lost is credited once; everything else that disagrees is flagged once, never fixed. The
backend-level tests run on SQLite and PostgreSQL; the journey runs the bot too (SQLite)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import func, select, update

from comfygram.backend import stars
from comfygram.backend.models import (
    LedgerEntry,
    Payment,
    StarDiscrepancy,
    StarReconciliation,
    utcnow,
)
from comfygram.domain import ledger
from comfygram.settings import Settings, SubscriptionPlan
from tests.bot_helpers import World, fast_chat_pace, polling_world  # noqa: F401
from tests.doubles.telegram import TEST_BOT_TOKEN, TelegramDouble
from tests.helpers import balance, register

pytestmark = pytest.mark.money


@pytest.fixture
async def telegram() -> AsyncIterator[TelegramDouble]:
    async with TelegramDouble() as double:
        yield double


def _with_bot(settings: Settings, telegram: TelegramDouble) -> Settings:
    return settings.model_copy(
        update={"telegram_api_url": telegram.url, "bot_token": SecretStr(TEST_BOT_TOKEN)}
    )


async def _pass(app, settings: Settings, telegram: TelegramDouble, settle: float = 0.0):
    """One reconciliation pass as the backend runs it (its own bot), nothing left to settle."""
    return await stars.reconcile_with_bot(
        app.state.sessions, _with_bot(settings, telegram), settle_seconds=settle
    )


async def _approved(api: httpx.AsyncClient, telegram_id: int = 1001) -> dict:
    """An invoice whose pre-checkout was approved: Telegram may take the Stars now."""
    created = await api.post(
        "/api/payments/create", json={"telegram_id": telegram_id, "package": "small"}
    )
    assert created.status_code == 201, created.text
    invoice = created.json()
    check = {"payload": invoice["payload"], "total_amount": invoice["amount"], "currency": "XTR"}
    assert (await api.post("/api/payments/precheck", json=check)).status_code == 200
    return invoice


async def _charged(
    telegram: TelegramDouble, invoice: dict, charge: str, telegram_id: int = 1001, amount=None
) -> None:
    """Telegram takes the Stars; the successful_payment update is lost."""
    await telegram.user(telegram_id)._pay(
        invoice["payload"], amount or invoice["amount"], charge, deliver=False
    )


async def _confirm(api: httpx.AsyncClient, invoice: dict, charge: str) -> httpx.Response:
    return await api.post(
        "/api/payments/confirm",
        json={
            "payload": invoice["payload"],
            "telegram_payment_charge_id": charge,
            "total_amount": invoice["amount"],
            "currency": "XTR",
        },
    )


def _told(telegram: TelegramDouble, chat_id: int = 1001) -> list[str]:
    """What the user was told about payments credited late."""
    return [
        c.params["text"]
        for c in telegram.sent("sendMessage", chat_id)
        if "has reached us" in c.params["text"]
    ]


async def _discrepancies(app) -> list[tuple[str, str, bool]]:
    async with app.state.sessions() as session:
        rows = await session.scalars(select(StarDiscrepancy).order_by(StarDiscrepancy.id))
        return [(d.kind, d.telegram_payment_charge_id, d.resolved_at is None) for d in rows]


async def test_a_lost_payment_is_credited_once_and_its_late_update_changes_nothing(
    app, api, settings, telegram
):
    await register(api)
    start = await balance(api)
    invoice = await _approved(api)
    await _charged(telegram, invoice, "lost-1")
    assert await balance(api) == start  # nobody told us

    result = await _pass(app, settings, telegram)
    assert (result.transactions, result.credited, result.flagged, result.error) == (1, 1, 0, None)
    assert await balance(api) == start + invoice["credits"]
    async with app.state.sessions() as session:
        entry = await session.scalar(
            select(LedgerEntry).where(LedgerEntry.idempotency_key == ledger.payment_key("lost-1"))
        )
        payment = await session.scalar(select(Payment).where(Payment.payload == invoice["payload"]))
    assert entry is not None and entry.actor == "reconciliation"
    assert f"reconciliation #{result.id}" in entry.note and "never arrived" in entry.note
    assert (payment.status, payment.telegram_payment_charge_id) == ("paid", "lost-1")
    # Credited late is recorded, already resolved: nothing for an operator to do.
    assert await _discrepancies(app) == [("credited_late", "lost-1", False)]
    # The bot never thanked them: the pass tells them, once.
    credits = invoice["credits"]
    assert _told(telegram) == [
        f"🎉 Your payment of {invoice['amount']} ⭐ has reached us: {credits} credits added. "
        f"Balance: <b>{start + credits}</b>."
    ]

    # The update arrives after all: confirmed, not credited again.
    late = await _confirm(api, invoice, "lost-1")
    assert late.status_code == 200 and late.json()["credited"] is False
    # A second pass adds nothing.
    again = await _pass(app, settings, telegram)
    assert (again.credited, again.flagged, again.found) == (0, 0, [])
    assert await balance(api) == start + invoice["credits"]
    assert len(_told(telegram)) == 1
    assert await _discrepancies(app) == [("credited_late", "lost-1", False)]


async def test_a_late_update_first_then_reconciliation_credits_once(app, api, settings, telegram):
    await register(api)
    start = await balance(api)
    invoice = await _approved(api)
    await _charged(telegram, invoice, "slow-1")
    assert (await _confirm(api, invoice, "slow-1")).json()["credited"] is True
    result = await _pass(app, settings, telegram)
    assert (result.credited, result.flagged) == (0, 0)
    assert await balance(api) == start + invoice["credits"]
    assert await _discrepancies(app) == []


async def test_concurrent_passes_credit_a_lost_payment_once(app, api, settings, telegram):
    await register(api)
    start = await balance(api)
    invoice = await _approved(api)
    await _charged(telegram, invoice, "race-1")
    results = await asyncio.gather(*(_pass(app, settings, telegram) for _ in range(3)))
    assert sum(r.credited for r in results) == 1
    assert len(_told(telegram)) == 1
    assert await balance(api) == start + invoice["credits"]
    assert [k for k, _, _ in await _discrepancies(app)] == ["credited_late"]


async def test_a_charge_in_flight_is_left_to_its_update(app, api, settings, telegram):
    await register(api)
    start = await balance(api)
    invoice = await _approved(api)
    await _charged(telegram, invoice, "fresh-1")
    result = await _pass(app, settings, telegram, settle=stars.SETTLE_SECONDS)
    assert (result.credited, result.flagged) == (0, 0)
    assert await balance(api) == start


async def test_paging_reads_past_the_first_hundred_transactions(app, api, settings, telegram):
    """205 withdrawals (not ours to compare) before the lost payment: three pages."""
    for n in range(205):
        telegram.star_transactions.append(
            {
                "id": f"withdrawal-{n}",
                "amount": 1,
                "date": int(time.time()),
                "receiver": {"type": "fragment"},
            }
        )
    await register(api)
    invoice = await _approved(api)
    await _charged(telegram, invoice, "page-3")
    since = len(telegram.calls)
    result = await _pass(app, settings, telegram)
    assert (result.transactions, result.credited) == (1, 1)
    offsets = [
        (c.params.get("offset"), c.params.get("limit"))
        for c in telegram.sent("getStarTransactions")[since:]
        if c.ok
    ]
    assert offsets == [(0, 100), (100, 100), (200, 100)]


async def test_a_payment_telegram_lacks_and_an_amount_that_differs_are_flagged_once(
    app, api, settings, telegram
):
    await register(api)
    start = await balance(api)
    ghost = await _approved(api)
    assert (await _confirm(api, ghost, "ghost-1")).json()["credited"] is True  # no transaction
    odd = await _approved(api)
    await _charged(telegram, odd, "odd-1", amount=odd["amount"] + 7)
    assert (await _confirm(api, odd, "odd-1")).json()["credited"] is True
    credited = await balance(api)

    def counted(kind: str) -> float:
        sample = REGISTRY.get_sample_value("comfygram_star_discrepancies_total", {"kind": kind})
        return sample or 0.0

    before = counted("unknown_to_telegram"), counted("amount_mismatch")
    first = await _pass(app, settings, telegram)
    assert first.flagged == 2 and first.credited == 0
    assert (counted("unknown_to_telegram"), counted("amount_mismatch")) == (
        before[0] + 1,
        before[1] + 1,
    )
    assert sorted(await _discrepancies(app)) == [
        ("amount_mismatch", "odd-1", True),
        ("unknown_to_telegram", "ghost-1", True),
    ]
    assert any("not among Telegram's" in line for line in first.found)
    # Flagged, never fixed; and a second pass does not flag them again.
    second = await _pass(app, settings, telegram)
    assert (second.flagged, second.found) == (0, [])
    assert counted("unknown_to_telegram") == before[0] + 1  # counted once
    assert len(await _discrepancies(app)) == 2
    assert await balance(api) == credited > start

    # An operator resolves one; it stays resolved, the other stays open.
    async with app.state.sessions() as session:
        ghost_row = await session.scalar(
            select(StarDiscrepancy).where(StarDiscrepancy.kind == "unknown_to_telegram")
        )
        assert await stars.resolve(session, ghost_row.id, "admin:ops") is True
        assert await stars.resolve(session, ghost_row.id, "admin:ops") is False
        await session.commit()
        assert await stars.unresolved_count(session) == 1
    await _pass(app, settings, telegram)
    async with app.state.sessions() as session:
        assert await stars.unresolved_count(session) == 1
        assert [d.kind for d in await stars.unresolved(session)] == ["amount_mismatch"]


async def test_a_lost_charge_of_another_amount_is_flagged_not_credited(
    app, api, settings, telegram
):
    await register(api)
    start = await balance(api)
    invoice = await _approved(api)
    await _charged(telegram, invoice, "short-1", amount=invoice["amount"] - 1)
    result = await _pass(app, settings, telegram)
    assert (result.credited, result.flagged) == (0, 1)
    assert await _discrepancies(app) == [("amount_mismatch", "short-1", True)]
    assert "amount_mismatch" in result.found[0] and "Refund it" in result.found[0]
    assert await balance(api) == start
    assert _told(telegram) == []


async def test_a_refund_we_never_recorded_and_a_charge_nobody_can_credit_are_flagged(
    app, api, settings, telegram
):
    await register(api)
    invoice = await _approved(api)
    await _charged(telegram, invoice, "disputed-1")
    assert (await _confirm(api, invoice, "disputed-1")).json()["credited"] is True
    # Telegram refunds after a dispute; the refunded_payment message never reaches us.
    await telegram.refund("disputed-1", report=False)
    # A second charge for the paid invoice, whose update was lost: cannot be credited.
    await _charged(telegram, invoice, "second-1")
    credited = await balance(api)

    result = await _pass(app, settings, telegram)
    assert sorted(await _discrepancies(app)) == [
        ("refund_mismatch", "disputed-1", True),
        ("uncredited", "second-1", True),
    ]
    assert result.credited == 0 and result.flagged == 2
    assert await balance(api) == credited  # never a silent fix


async def test_a_lost_subscription_renewal_is_credited_once(app, api, settings, telegram):
    """A period's successful_payment lost: its payload is one of our subscriptions, so the pass
    credits it as /api/payments/confirm would have, and the late update changes nothing."""
    plans = [SubscriptionPlan(id="monthly", credits=100, stars=300)]
    app.state.settings = app.state.settings.model_copy(update={"subscription_plans": plans})
    await register(api)
    start = await balance(api)
    made = await api.post(
        "/api/subscriptions/create", json={"telegram_id": 1001, "plan": "monthly"}
    )
    assert made.status_code == 201, made.text
    plan = {"payload": made.json()["payload"], "amount": 300}
    await telegram.user(1001)._pay(plan["payload"], 300, "sub-first", deliver=False)
    first = await _confirm(api, plan, "sub-first")
    assert first.json()["credited"] is True
    await telegram.user(1001)._pay(plan["payload"], 300, "sub-renewal", deliver=False)

    result = await _pass(app, settings, telegram)
    assert (result.credited, result.flagged) == (1, 0)
    assert await balance(api) == start + 200
    assert ("credited_late", "sub-renewal", False) in await _discrepancies(app)
    late = await _confirm(api, plan, "sub-renewal")
    assert late.status_code == 200 and late.json()["credited"] is False
    assert await balance(api) == start + 200


async def test_a_lost_first_payment_still_rewards_the_referrer_once(app, api, settings, telegram):
    await register(api, 1002)
    telegram.user(1002)  # the referrer's chat, where the bonus is told
    code = (await api.post("/api/referrals/invite", json={"telegram_id": 1002})).json()
    joined = {"telegram_id": 1003, "referral": f"ref_{code['invite_code']}"}
    assert (await api.post("/api/users/register", json=joined)).status_code == 201
    referrer_before = await balance(api, 1002)
    invoice = await _approved(api, 1003)
    await _charged(telegram, invoice, "lost-ref", telegram_id=1003)

    result = await _pass(app, settings, telegram)
    again = await _pass(app, settings, telegram)
    assert (result.credited, again.credited) == (1, 0)
    bonus = settings.referral_bonus
    assert await balance(api, 1002) == referrer_before + bonus
    told = [c.params["text"] for c in telegram.sent("sendMessage", 1002)]
    assert len(told) == 1 and "A friend you invited" in told[0], told


async def test_telegram_down_records_the_error_and_changes_nothing(app, api, settings, telegram):
    await register(api)
    start = await balance(api)
    invoice = await _approved(api)
    await _charged(telegram, invoice, "while-down")
    await telegram.user(1001)._pay("cg-unknown-payload", 5, "other-1", deliver=False)
    telegram.fail("getStarTransactions", 502, "Bad Gateway", times=50)
    result = await _pass(app, settings, telegram)
    assert result.error is not None and "Bad Gateway" in result.error
    assert TEST_BOT_TOKEN not in result.error
    assert (result.transactions, result.credited, result.flagged) == (0, 0, 0)
    assert await balance(api) == start
    assert await _discrepancies(app) == []
    async with app.state.sessions() as session:
        row = await stars.last_pass(session)
        assert row is not None and row.id == result.id
        assert row.error == result.error and row.finished_at is not None
        payment = await session.scalar(select(Payment).where(Payment.payload == invoice["payload"]))
        assert payment.status == "pending"

    # Telegram is back: the next pass credits it.
    telegram._faults.clear()
    back = await _pass(app, settings, telegram)
    assert back.error is None and back.credited == 1
    assert await balance(api) == start + invoice["credits"]


async def test_the_backend_reconciles_periodically(settings, redis, telegram):
    """STARS_RECONCILE_INTERVAL_SECONDS: the backend's own task finds the lost payment."""
    from comfygram.backend.app import create_app
    from tests.helpers import backend_client, seed_sqlite

    await seed_sqlite(settings.database_url)
    periodic = _with_bot(settings, telegram).model_copy(
        update={"stars_reconcile_interval_seconds": 0.3}
    )
    application = create_app(periodic)
    async with (
        application.router.lifespan_context(application),
        backend_client(application) as api,
    ):
        await register(api)
        start = await balance(api)
        invoice = await _approved(api)
        # Older than the settle window, as a payment lost while the bot was down is.
        await telegram.user(1001)._pay(
            invoice["payload"], invoice["amount"], "periodic-1", deliver=False
        )
        telegram.star_transactions[-1]["date"] -= int(stars.SETTLE_SECONDS) + 60
        for _ in range(100):
            if await balance(api) != start:
                break
            await asyncio.sleep(0.1)
        assert await balance(api) == start + invoice["credits"]
        async with application.state.sessions() as session:
            passes = await session.scalar(select(func.count(StarReconciliation.id)))
        assert passes >= 1


async def test_comfygram_payments_reconcile_prints_what_it_found(
    app, api, settings, telegram, tmp_path: Path
):
    await register(api)
    invoice = await _approved(api)
    await _charged(telegram, invoice, "cli-lost")
    ghost = await _approved(api)
    assert (await _confirm(api, ghost, "cli-ghost")).status_code == 200
    # Both old enough for the command's settle window.
    telegram.star_transactions[-1]["date"] -= int(stars.SETTLE_SECONDS) + 60
    async with app.state.sessions() as session:
        await session.execute(
            update(Payment)
            .where(Payment.telegram_payment_charge_id == "cli-ghost")
            .values(paid_at=utcnow() - timedelta(seconds=stars.SETTLE_SECONDS + 60))
        )
        await session.commit()

    env = {
        **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")},
        "PYTHONPATH": os.pathsep.join(sys.path),
        "DATABASE_URL": settings.database_url,
        "BOT_TOKEN": TEST_BOT_TOKEN,
        "TELEGRAM_API_URL": telegram.url,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfygram",
        "payments",
        "reconcile",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await asyncio.wait_for(process.communicate(), 60))[0].decode()
    assert process.returncode == 1, output  # something is unresolved
    lines = output.strip().splitlines()
    assert any(line.startswith("credited_late cli-lost") for line in lines), output
    assert any(line.startswith("unknown_to_telegram cli-ghost") for line in lines), output
    assert "1 credited late, 1 new discrepancies, 1 unresolved" in lines[-1], output
    assert TEST_BOT_TOKEN not in output


async def test_doctor_shows_the_last_pass_and_what_is_unresolved(app, api, settings, telegram):
    from comfygram import doctor

    (none_yet,) = await doctor.check_reconciliation(settings)
    assert (none_yet.status, none_yet.name) == (doctor.OK, "reconciliation")
    assert "no pass yet" in none_yet.detail and "comfygram payments reconcile" in none_yet.detail

    await register(api)
    ghost = await _approved(api)
    assert (await _confirm(api, ghost, "doc-ghost")).status_code == 200
    result = await _pass(app, settings, telegram)
    (flagged,) = await doctor.check_reconciliation(settings)
    assert flagged.status == doctor.WARN
    assert f"last pass #{result.id}" in flagged.detail
    assert "1 unresolved discrepancy" in flagged.detail

    telegram.fail("getStarTransactions", 500, "Internal Server Error")
    await _pass(app, settings, telegram)
    (stopped,) = await doctor.check_reconciliation(settings)
    assert stopped.status == doctor.WARN and "stopped" in stopped.detail

    async with app.state.sessions() as session:
        (row,) = await stars.unresolved(session)
        await stars.resolve(session, row.id, "admin:ops")
        await session.commit()
    await _pass(app, settings, telegram)
    (clean,) = await doctor.check_reconciliation(settings)
    assert clean.status == doctor.OK and "nothing unresolved" in clean.detail


async def test_the_dashboard_lists_unresolved_discrepancies_and_resolves_one(
    settings, redis, telegram
):
    from comfygram.backend.app import create_app
    from tests.admin_helpers import csrf, login, panel_client, stat, with_admin
    from tests.helpers import backend_client, seed_sqlite

    await seed_sqlite(settings.database_url)
    application = create_app(with_admin(settings))
    async with (
        application.router.lifespan_context(application),
        backend_client(application) as api,
        panel_client(application) as browser,
    ):
        await register(api)
        ghost = await _approved(api)
        assert (await _confirm(api, ghost, "dash-ghost")).status_code == 200
        assert (await login(browser)).status_code in (200, 302)
        page = (await browser.get("/admin/dashboard")).text
        assert "No pass yet" in stat(page, "last-pass")
        result = await _pass(application, settings, telegram)

        page = (await browser.get("/admin/dashboard")).text
        assert stat(page, "discrepancies-unresolved") == "1"
        assert f"Last pass #{result.id}" in stat(page, "last-pass")
        assert "dash-ghost" in page and "unknown_to_telegram" in page
        async with application.state.sessions() as session:
            (row,) = await stars.unresolved(session)

        # Without the form's token: refused, nothing changes.
        refused = await browser.post("/admin/dashboard", data={"resolve": str(row.id)})
        assert refused.status_code == 403
        token = await csrf(browser)
        form = {"csrf": token, "resolve": str(row.id)}
        done = await browser.post("/admin/dashboard", data=form)
        assert done.status_code == 302
        page = (await browser.get("/admin/dashboard")).text
        assert stat(page, "discrepancies-unresolved") == "0"
        assert "marked resolved" in page and "Nothing unresolved" in page
        async with application.state.sessions() as session:
            resolved = await session.get(StarDiscrepancy, row.id)
            assert resolved.resolved_by == "admin:operator" and resolved.resolved_at is not None
        missing = await browser.post("/admin/dashboard", data=form | {"resolve": "99999"})
        assert missing.status_code == 404


def _thanked(world: World, user) -> int:
    return len(
        [
            c
            for c in world.telegram.sent("sendMessage", user.chat_id)
            if "Thank you" in c.params["text"]
        ]
    )


@pytest.mark.usefixtures("fast_chat_pace")
async def test_the_whole_journey_a_lost_successful_payment_found_and_credited_once(
    settings: Settings,
):
    """The bot and the backend over HTTP: /buy, the invoice, an approved pre-checkout, Telegram
    takes the Stars but the update is lost; a pass credits it; the update arriving after all
    changes nothing, refunds nothing and thanks nobody twice."""
    from comfygram.backend import db

    async with polling_world(settings) as world:
        user = world.user(6101)
        await user.send_command("start")
        await world.reply(user, containing="👋")
        start = (await world.backend.user(6101)).balance
        since = world.mark()
        await user.send_command("buy")
        offer = await world.reply(user, containing="Choose a package", since=since)
        await user.press(offer.result, "pkg:small")
        (invoice,) = await world.telegram.wait_for("sendInvoice", chat_id=user.chat_id, since=since)
        query = await user.pre_checkout(invoice)
        assert (await user.pre_checkout_answer(query))["ok"] is True
        assert await user.successful_payment(invoice, "journey-lost", deliver=False) is None
        await world.settle()
        assert (await world.backend.user(6101)).balance == start

        engine = db.create_engine(settings.database_url)
        sessions = db.create_sessionmaker(engine)
        try:
            result = await stars.reconcile_with_bot(sessions, world.settings, settle_seconds=0)
            assert (result.credited, result.flagged, result.error) == (1, 0, None)
            credits = (await world.backend.user(6101)).balance - start
            assert credits > 0
            thanked = _thanked(world, user)

            # Telegram delivers the update after all: confirmed, not credited, not refunded.
            await user._extra(
                {
                    "successful_payment": {
                        "currency": "XTR",
                        "total_amount": invoice.params["prices"][0]["amount"],
                        "invoice_payload": invoice.params["payload"],
                        "telegram_payment_charge_id": "journey-lost",
                        "provider_payment_charge_id": "",
                    }
                }
            )
            await world.settle()
            await asyncio.sleep(0.5)
            assert (await world.backend.user(6101)).balance == start + credits
            assert _thanked(world, user) == thanked
            assert len(_told(world.telegram, user.chat_id)) == 1
            assert not world.telegram.sent("refundStarPayment")
            async with sessions() as session:
                entries = await session.scalar(
                    select(func.count(LedgerEntry.id)).where(
                        LedgerEntry.reason == ledger.Reason.PAYMENT.value
                    )
                )
            assert entries == 1
            again = await stars.reconcile_with_bot(sessions, world.settings, settle_seconds=0)
            assert (again.credited, again.flagged) == (0, 0)
        finally:
            await engine.dispose()


async def test_one_process_of_several_runs_each_round(redis, redis_prefix):
    """`comfygram backend --workers N`: each process has the periodic tasks; the first to take
    a round's key runs it, the others skip it, and the next round is free again."""
    key = f"{redis_prefix}:stars-reconcile-round"
    turns = await asyncio.gather(*(stars.my_turn(redis, key, 0.3) for _ in range(4)))
    assert sorted(turns) == [False, False, False, True]
    await asyncio.sleep(0.35)
    assert await stars.my_turn(redis, key, 0.3) is True
    assert await stars.my_turn(None, key, 0.3) is True  # no Redis: run
