"""Refunds of credited Stars payments (docs/payments.md, "Refunds"): the operator's refund
through the API and the admin panel calls refundStarPayment once and takes the credits back
once, never below zero; a refunded_payment message (ours reported back, or Telegram's own)
takes them back once, whichever comes first. The real backend in-process with the Telegram
double on loopback; each test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import delete, func, select

from comfygram.backend import payment_refunds
from comfygram.backend.app import create_app
from comfygram.backend.models import ChargeRefund, LedgerEntry, Payment, SupportRequest, User
from comfygram.domain.refunds import take_back_amount
from comfygram.settings import Settings
from tests.admin_helpers import login, panel_client, with_admin
from tests.doubles.telegram import TEST_BOT_TOKEN, TelegramDouble
from tests.helpers import backend_client, grant, register

pytestmark = pytest.mark.money

TID = 4201


@pytest.fixture
async def telegram() -> AsyncIterator[TelegramDouble]:
    async with TelegramDouble() as double:
        yield double


@pytest.fixture
def settings(settings: Settings, telegram: TelegramDouble) -> Settings:
    """The backend has the bot's token and reaches the Telegram double."""
    return with_admin(settings, bot_token=SecretStr(TEST_BOT_TOKEN), telegram_api_url=telegram.url)


@pytest.fixture
async def app(settings, redis, seeded_database):
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def api(app) -> AsyncIterator[httpx.AsyncClient]:
    async with backend_client(app) as client:
        yield client


async def _paid(api, telegram: TelegramDouble, charge: str, telegram_id: int = TID) -> dict:
    """A small package (10 credits for 50 Stars) paid with `charge` and credited; the user
    starts with the signup bonus of 3, so the balance is 13."""
    await register(api, telegram_id)
    response = await api.post(
        "/api/payments/create", json={"telegram_id": telegram_id, "package": "small"}
    )
    assert response.status_code == 201, response.text
    invoice = response.json()
    body = {"payload": invoice["payload"], "total_amount": invoice["amount"], "currency": "XTR"}
    assert (await api.post("/api/payments/precheck", json=body)).status_code == 200
    # Telegram takes the Stars (the double knows the charge and its transaction).
    await telegram.user(telegram_id)._pay(
        invoice["payload"], invoice["amount"], charge, deliver=False
    )
    confirmed = await api.post(
        "/api/payments/confirm", json=body | {"telegram_payment_charge_id": charge}
    )
    assert confirmed.status_code == 200 and confirmed.json()["credited"], confirmed.text
    return invoice


def _refund(api, ref: str, reason: str = "asked by the user", actor: str = "ops:ann"):
    return api.post(f"/api/payments/{ref}/refund", json={"reason": reason, "actor": actor})


def _refunded_message(invoice: dict, charge: str, telegram_id: int = TID) -> dict:
    return {
        "payload": invoice["payload"],
        "total_amount": invoice["amount"],
        "currency": "XTR",
        "telegram_payment_charge_id": charge,
        "telegram_id": telegram_id,
        "chat_id": telegram_id,
    }


def _refund_calls(telegram: TelegramDouble) -> list:
    return telegram.sent("refundStarPayment")


def _told(telegram: TelegramDouble, chat_id: int = TID) -> list[str]:
    return [
        c.params["text"]
        for c in telegram.sent("sendMessage", chat_id)
        if "was refunded" in c.params["text"]
    ]


async def _take_backs(app, charge: str) -> list[LedgerEntry]:
    async with app.state.sessions() as session:
        rows = await session.scalars(
            select(LedgerEntry).where(LedgerEntry.reason == "payment_refund")
        )
        return [r for r in rows if r.idempotency_key == f"payment:{charge}:refund"]


async def _payment(app, charge: str) -> Payment:
    async with app.state.sessions() as session:
        payment = await session.scalar(
            select(Payment).where(Payment.telegram_payment_charge_id == charge)
        )
        assert payment is not None
        return payment


async def _books_balance(app) -> None:
    """What `comfygram audit` checks of this: every balance is the sum of its ledger, none
    below zero, and a charge is taken back at most once (the key is unique)."""
    async with app.state.sessions() as session:
        for user in await session.scalars(select(User)):
            total = await session.scalar(
                select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                    LedgerEntry.user_id == user.id
                )
            )
            assert user.balance == total and user.balance >= 0, (user.telegram_id, user.balance)


def test_the_take_back_rule():
    assert take_back_amount(10, 13) == (10, 0)
    assert take_back_amount(10, 4) == (4, 6)
    assert take_back_amount(10, 0) == (0, 10)
    with pytest.raises(ValueError):
        take_back_amount(10, -1)


async def test_an_operator_refund_calls_telegram_once_and_takes_the_credits_back_once(
    api, app, telegram
):
    await _paid(api, telegram, "ch-1")
    first = await _refund(api, "ch-1")
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["changed"] is True and body["credited"] is True
    assert (body["taken_back"], body["shortfall"], body["balance"]) == (10, 0, 3)
    assert body["payment"]["status"] == "refunded"
    assert (body["refund_actor"], body["refund_reason"]) == ("ops:ann", "asked by the user")
    again = await _refund(api, "ch-1")
    assert again.status_code == 200 and again.json()["changed"] is False
    assert again.json()["taken_back"] == 10
    assert [c.params["telegram_payment_charge_id"] for c in _refund_calls(telegram)] == ["ch-1"]
    assert telegram.refunded == {"ch-1"}
    (entry,) = await _take_backs(app, "ch-1")
    assert (entry.amount, entry.actor) == (-10, "ops:ann")
    payment = await _payment(app, "ch-1")
    assert payment.refunded_at is not None and payment.refund_claimed_at is None
    # The backend told the user (its call marked the payment refunded), once.
    assert len(_told(telegram)) == 1 and "10 credits" in _told(telegram)[0]
    # Telegram reports the refund back: the report changes nothing more.
    (update,) = [u for u in telegram.pending_updates if "refunded_payment" in u["message"]]
    reported = update["message"]["refunded_payment"]
    late = await api.post(
        "/api/payments/refunded",
        json={
            "payload": reported["invoice_payload"],
            "total_amount": reported["total_amount"],
            "currency": reported["currency"],
            "telegram_payment_charge_id": reported["telegram_payment_charge_id"],
            "telegram_id": TID,
            "chat_id": TID,
        },
    )
    assert late.status_code == 200 and late.json()["changed"] is False
    assert late.json()["balance"] == 3 and len(await _take_backs(app, "ch-1")) == 1
    await _books_balance(app)


async def test_concurrent_refunds_call_telegram_once(api, app, telegram):
    await _paid(api, telegram, "ch-2")
    answers = await asyncio.gather(*(_refund(api, "ch-2") for _ in range(5)))
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {200, 409} and 200 in statuses, [a.text for a in answers]
    for refused in (a for a in answers if a.status_code == 409):
        assert refused.json()["error"]["code"] == "refund_in_progress"
    assert sum(a.json()["changed"] for a in answers if a.status_code == 200) == 1
    assert len(_refund_calls(telegram)) == 1
    assert len(await _take_backs(app, "ch-2")) == 1
    assert len(_told(telegram)) == 1
    # Those refused while the first was in progress now see the result.
    again = await _refund(api, "ch-2")
    assert again.status_code == 200 and again.json()["balance"] == 3
    await _books_balance(app)


async def test_a_refund_after_the_credits_were_spent_never_goes_below_zero(api, app, telegram):
    await _paid(api, telegram, "ch-3")
    await grant(api, TID, -9, "spent-9")  # 13 - 9: 4 left of the payment's 10
    preview = await api.get("/api/payments/ch-3/refund")
    assert preview.status_code == 200
    assert {k: preview.json()[k] for k in ("credits", "balance", "take_back", "shortfall")} == {
        "credits": 10,
        "balance": 4,
        "take_back": 4,
        "shortfall": 6,
    }
    assert preview.json()["refundable"] is True
    done = (await _refund(api, "ch-3")).json()
    assert (done["taken_back"], done["shortfall"], done["balance"]) == (4, 6, 0)
    (entry,) = await _take_backs(app, "ch-3")
    assert entry.amount == -4 and "6 of its 10 credits were already spent" in entry.note
    assert "The other 6 had already been used" in _told(telegram)[0]

    # Everything spent: nothing to take back, no ledger entry, the payment still refunded.
    await _paid(api, telegram, "ch-4", telegram_id=TID + 1)
    await grant(api, TID + 1, -13, "spent-all")
    done = (await _refund(api, "ch-4")).json()
    assert (done["taken_back"], done["shortfall"], done["balance"]) == (0, 10, 0)
    assert done["payment"]["status"] == "refunded"
    assert await _take_backs(app, "ch-4") == []
    payment = await _payment(app, "ch-4")
    assert payment.refund_reason.startswith("asked by the user; nothing taken back")
    assert "none were taken back" in _told(telegram, TID + 1)[0]
    preview = (await api.get(f"/api/payments/{payment.id}/refund")).json()
    assert (preview["refundable"], preview["take_back"], preview["shortfall"]) == (False, 0, 10)
    assert len(_refund_calls(telegram)) == 2
    await _books_balance(app)


async def test_a_network_error_releases_the_claim_and_a_retry_finishes_once(api, app, telegram):
    await _paid(api, telegram, "ch-5")
    telegram.drop_connections("refundStarPayment")
    down = await _refund(api, "ch-5")
    assert down.status_code == 503, down.text
    assert down.json()["error"]["code"] == "telegram_unavailable"
    assert "Try again" in down.json()["error"]["message"]
    payment = await _payment(app, "ch-5")
    assert (payment.status, payment.refund_claimed_at) == ("paid", None)
    assert await _take_backs(app, "ch-5") == []
    # The first call did land after all (its answer was lost): the retry hears
    # CHARGE_ALREADY_REFUNDED, which finishes it; the Stars went back once.
    await telegram.refund("ch-5", report=False)
    retried = await _refund(api, "ch-5")
    assert retried.status_code == 200 and retried.json()["changed"] is True
    _dropped, second = _refund_calls(telegram)
    assert second.status == 400 and "CHARGE_ALREADY_REFUNDED" in second.response["description"]
    assert len(await _take_backs(app, "ch-5")) == 1
    assert (await api.get(f"/api/users/by-telegram-id/{TID}")).json()["balance"] == 3
    # Telegram refusing for good (a charge it does not know) also releases the claim.
    await _paid(api, telegram, "ch-6", telegram_id=TID + 2)
    telegram.fail("refundStarPayment", 400, "Bad Request: CHARGE_NOT_FOUND")
    refused = await _refund(api, "ch-6")
    assert refused.status_code == 502 and "CHARGE_NOT_FOUND" in refused.text
    assert (await _payment(app, "ch-6")).refund_claimed_at is None
    await _books_balance(app)


async def test_bad_refund_requests_change_nothing(api, app, telegram):
    await _paid(api, telegram, "ch-7")
    unknown = await _refund(api, "no-such-charge")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "payment_not_found"
    assert (await api.get("/api/payments/no-such-charge/refund")).status_code == 404
    pending = await api.post("/api/payments/create", json={"telegram_id": TID, "package": "small"})
    pending_id = pending.json()["payment_id"]
    refused = await _refund(api, pending_id)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "payment_not_paid"
    for body in ({"reason": "", "actor": "x"}, {"reason": "r"}, {"reason": "r\x00", "actor": "x"}):
        answer = await api.post("/api/payments/ch-7/refund", json=body)
        assert answer.status_code == 422, body
    blank = await _refund(api, "ch-7", reason="   ")
    assert blank.status_code == 422 and blank.json()["error"]["code"] == "reason_required"
    async with backend_client(app, token=None) as anonymous:
        assert (await _refund(anonymous, "ch-7")).status_code == 401
    assert _refund_calls(telegram) == []
    payment = await _payment(app, "ch-7")
    assert (payment.status, payment.refund_claimed_at, payment.refund_actor) == ("paid", None, None)
    assert (await api.get(f"/api/users/by-telegram-id/{TID}")).json()["balance"] == 13


async def test_without_a_bot_token_the_refund_is_refused_clearly(settings, redis, tmp_path):
    from tests.helpers import seed_sqlite

    bare = settings.model_copy(update={"bot_token": None})
    await seed_sqlite(bare.database_url)
    application = create_app(bare)
    async with (
        application.router.lifespan_context(application),
        backend_client(application) as api,
    ):
        answer = await _refund(api, "anything")
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "bot_not_configured"


async def test_refunded_payment_before_our_refund_takes_back_once(api, app, telegram):
    """Telegram refunds (a dispute) and reports it; the operator's refund afterwards finds the
    payment refunded and calls Telegram no more."""
    invoice = await _paid(api, telegram, "ch-8")
    await telegram.refund("ch-8", report=False)
    reports = await asyncio.gather(
        *(api.post("/api/payments/refunded", json=_refunded_message(invoice, "ch-8")) for _ in "ab")
    )
    assert [r.status_code for r in reports] == [200, 200]
    assert sorted(r.json()["changed"] for r in reports) == [False, True]
    assert all(r.json()["taken_back"] == 10 for r in reports)
    (entry,) = await _take_backs(app, "ch-8")
    assert entry.actor == "telegram"
    ours = await _refund(api, "ch-8")
    assert ours.status_code == 200 and ours.json()["changed"] is False
    assert _refund_calls(telegram) == [] and _told(telegram) == []  # the bot tells, not us
    payment = await _payment(app, "ch-8")
    assert (payment.status, payment.refund_actor) == ("refunded", "telegram")
    await _books_balance(app)


async def test_a_refund_of_a_charge_never_credited_is_never_credited_later(api, app, telegram):
    """Telegram took the Stars, the update was lost, then Telegram refunded: nothing to take
    back, and the late successful_payment is refused instead of crediting refunded Stars."""
    await register(api, TID)
    invoice = (
        await api.post("/api/payments/create", json={"telegram_id": TID, "package": "small"})
    ).json()
    await telegram.user(TID)._pay(invoice["payload"], invoice["amount"], "ch-9", deliver=False)
    report = await api.post("/api/payments/refunded", json=_refunded_message(invoice, "ch-9"))
    assert report.status_code == 200
    assert report.json()["credited"] is False and report.json()["changed"] is False
    assert (report.json()["taken_back"], report.json()["payment"]) == (0, None)
    late = await api.post(
        "/api/payments/confirm",
        json={
            "payload": invoice["payload"],
            "total_amount": invoice["amount"],
            "currency": "XTR",
            "telegram_payment_charge_id": "ch-9",
        },
    )
    assert late.status_code == 409 and late.json()["error"]["code"] == "charge_refunded"
    async with app.state.sessions() as session:
        row = await session.get(ChargeRefund, "ch-9")
        assert row is not None and row.refunded_at is not None
        assert row.reason == "refunded_before_credit"
    assert (await api.get(f"/api/users/by-telegram-id/{TID}")).json()["balance"] == 3
    # A report of a charge nobody ever heard of changes nothing either.
    stray = _refunded_message(invoice, "ch-unknown") | {"payload": "not-ours"}
    answer = await api.post("/api/payments/refunded", json=stray)
    assert answer.status_code == 200 and answer.json()["credited"] is False
    await _books_balance(app)


async def test_a_refund_report_racing_the_late_confirm_of_its_charge_credits_nothing(
    api, app, telegram
):
    """The lost successful_payment is delivered at the very moment Telegram reports the
    charge refunded: either the confirm credits and the report takes back, or the report comes
    first and the confirm is refused; the balance ends where it began either way."""
    await register(api, TID)
    invoice = (
        await api.post("/api/payments/create", json={"telegram_id": TID, "package": "small"})
    ).json()
    await telegram.user(TID)._pay(invoice["payload"], invoice["amount"], "ch-16", deliver=False)
    confirm = {
        "payload": invoice["payload"],
        "total_amount": invoice["amount"],
        "currency": "XTR",
        "telegram_payment_charge_id": "ch-16",
    }
    confirmed, reported = await asyncio.gather(
        api.post("/api/payments/confirm", json=confirm),
        api.post("/api/payments/refunded", json=_refunded_message(invoice, "ch-16")),
    )
    assert reported.status_code == 200
    if confirmed.status_code == 200:
        assert reported.json()["changed"] is True and reported.json()["taken_back"] == 10
    else:
        assert confirmed.json()["error"]["code"] == "charge_refunded"
    assert (await api.get(f"/api/users/by-telegram-id/{TID}")).json()["balance"] == 3
    await _books_balance(app)


# -- the admin panel ---------------------------------------------------------------------------


@pytest.fixture
async def admin(app) -> AsyncIterator[httpx.AsyncClient]:
    async with panel_client(app) as client:
        assert (await login(client)).status_code == 302
        yield client


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no csrf field"
    return match.group(1)


async def test_the_admin_refund_page_shows_the_shortfall_then_refunds_once(
    api, app, telegram, admin
):
    await _paid(api, telegram, "ch-10")
    await grant(api, TID, -5, "spent-5")  # 8 left: 8 of the 10 can be taken back
    payment = await _payment(app, "ch-10")
    details = await admin.get(f"/admin/payment/details/{payment.id}")
    assert details.status_code == 200 and 'id="refund-payment"' in details.text
    page = await admin.get(f"/admin/payment/refund/{payment.id}")
    assert page.status_code == 200
    assert re.search(r'data-preview="take_back">8<', page.text)
    assert re.search(r'data-preview="shortfall">2<', page.text)
    assert "already spent 2 of these 10 credits" in page.text
    token = _csrf(page.text)
    # No CSRF token: refused, nothing done; no reason: the form again, nothing done.
    forged = await admin.post(f"/admin/payment/refund/{payment.id}", data={"reason": "x"})
    assert forged.status_code == 403
    empty = await admin.post(
        f"/admin/payment/refund/{payment.id}", data={"csrf": token, "reason": " "}
    )
    assert empty.status_code == 400 and "Write the reason" in empty.text
    assert _refund_calls(telegram) == []
    form = {"csrf": token, "reason": "duplicate purchase"}
    first, second = await asyncio.gather(
        admin.post(f"/admin/payment/refund/{payment.id}", data=form),
        admin.post(f"/admin/payment/refund/{payment.id}", data=form),
    )
    assert sorted([first.status_code, second.status_code])[0] == 302, (first.text, second.text)
    assert len(_refund_calls(telegram)) == 1
    (entry,) = await _take_backs(app, "ch-10")
    assert (entry.amount, entry.actor) == (-8, "admin:operator")
    payment = await _payment(app, "ch-10")
    assert (payment.status, payment.refund_reason) == ("refunded", "duplicate purchase")
    after = await admin.get(f"/admin/payment/refund/{payment.id}")
    assert "already refunded" in after.text and 'name="reason"' not in after.text
    assert len(_told(telegram)) == 1
    await _books_balance(app)


# -- /paysupport's API -------------------------------------------------------------------------


async def test_support_requests_name_only_the_users_own_payment(api, app, telegram):
    await _paid(api, telegram, "ch-11")
    await _paid(api, telegram, "ch-12", telegram_id=TID + 3)
    recent = await api.get("/api/payments/recent", params={"telegram_id": TID})
    assert recent.status_code == 200
    (mine,) = recent.json()
    assert (mine["status"], mine["credits"], mine["amount"]) == ("paid", 10, 50)
    theirs = (await api.get("/api/payments/recent", params={"telegram_id": TID + 3})).json()[0]
    body = {"telegram_id": TID, "chat_id": TID, "text": "where are my credits?"}
    for bad, status in (
        (body | {"payment_id": theirs["id"]}, 404),  # someone else's payment
        (body | {"payment_id": "nope"}, 404),
        (body | {"telegram_id": 999_999}, 404),  # no such user
        (body | {"text": "   "}, 422),
        (body | {"text": ""}, 422),
        (body | {"text": "x" * 4001}, 422),
        (body | {"text": "a\x00b"}, 422),
    ):
        answer = await api.post("/api/payments/support", json=bad)
        assert answer.status_code == status, (bad, answer.text)
        assert answer.json()["error"]["message"]
    assert (await api.get("/api/payments/recent", params={"telegram_id": 0})).status_code == 422
    async with app.state.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(SupportRequest)) == 0
    made = await api.post("/api/payments/support", json=body | {"payment_id": mine["id"]})
    assert made.status_code == 201, made.text
    assert made.json() | {"created_at": None} == {
        "id": 1,
        "telegram_id": TID,
        "payment_id": mine["id"],
        "chat_id": TID,
        "text": "where are my credits?",
        "status": "open",
        "reply": None,
        "created_at": None,
    }


async def test_the_refund_audit_is_clean_after_refunds_and_names_a_broken_one(api, app, telegram):
    await _paid(api, telegram, "ch-13")
    await _paid(api, telegram, "ch-14", telegram_id=TID + 4)
    await grant(api, TID + 4, -13, "spent-14")
    assert (await _refund(api, "ch-13")).status_code == 200
    assert (await _refund(api, "ch-14")).status_code == 200  # nothing taken back
    await _paid(api, telegram, "ch-15", telegram_id=TID + 5)
    paid = await _payment(app, "ch-15")
    entry = (await _take_backs(app, "ch-13"))[0]
    async with app.state.sessions() as session:
        assert await payment_refunds.discrepancies(session) == []
        # Broken on purpose: a refunded payment whose take-back vanished, and an entry on a
        # payment still paid.
        await session.execute(delete(LedgerEntry).where(LedgerEntry.id == entry.id))
        session.add(
            LedgerEntry(
                user_id=paid.user_id,
                amount=-11,
                reason="payment_refund",
                idempotency_key="payment:ch-15:refund",
                payment_id=paid.id,
            )
        )
        await session.flush()
        lines = await payment_refunds.discrepancies(session)
        await session.rollback()
    refunded = await _payment(app, "ch-13")
    assert len(lines) == 3, lines
    assert any(f"payment {refunded.id}: refunded, but no payment_refund entry" in x for x in lines)
    assert any(f"payment {paid.id} is paid, not refunded" in x for x in lines)
    assert any("takes back 11 credits" in x and "bought 10" in x for x in lines)
