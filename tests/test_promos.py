"""Promo codes (docs/payments.md, "Promo codes and referrals"): created by an operator (API and
admin panel), redeemed once per user and never more than their uses, even 50 at once over
HTTP; expired, disabled, unknown codes and blocked users refused with nothing changed; /promo
and the promo_ start link in the bot. The backend tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select, update

from comfygram.backend.app import create_app
from comfygram.backend.models import LedgerEntry, PromoCode, PromoRedemption, User, utcnow
from comfygram.settings import Settings
from tests.admin_helpers import csrf, login, panel_client, with_admin
from tests.bot_helpers import World, fast_chat_pace, polling_world, serve  # noqa: F401
from tests.helpers import API_TOKEN, balance, register

pytestmark = pytest.mark.money


async def create_code(api: httpx.AsyncClient, code: str = "SPRING25", **fields: object) -> dict:
    body = {"code": code, "credits": 7, "max_uses": 10, "actor": "tests"} | fields
    response = await api.post("/api/promos", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def redeem(api: httpx.AsyncClient, telegram_id: int, code: str) -> httpx.Response:
    return await api.post("/api/promos/redeem", json={"telegram_id": telegram_id, "code": code})


async def books(app) -> dict[int, tuple[int, int]]:
    """Every user's (balance, sum of their ledger): the two must always agree."""
    async with app.state.sessions() as session:
        sums = dict(
            (
                await session.execute(
                    select(LedgerEntry.user_id, func.sum(LedgerEntry.amount)).group_by(
                        LedgerEntry.user_id
                    )
                )
            ).all()
        )
        users = (await session.execute(select(User.id, User.telegram_id, User.balance))).all()
    return {u.telegram_id: (u.balance, int(sums.get(u.id, 0))) for u in users}


async def assert_books_balance(app) -> None:
    for telegram_id, (held, summed) in (await books(app)).items():
        assert held == summed, f"user {telegram_id}: balance {held}, ledger {summed}"
        assert held >= 0


async def promo_row(app, code: str) -> tuple[int, int, int]:
    """(uses, redemptions, promo ledger entries) of a code."""
    async with app.state.sessions() as session:
        promo = await session.get(PromoCode, code, populate_existing=True)
        redemptions = await session.scalar(
            select(func.count()).select_from(PromoRedemption).where(PromoRedemption.code == code)
        )
        entries = await session.scalar(
            select(func.count())
            .select_from(LedgerEntry)
            .where(LedgerEntry.idempotency_key.like(f"promo:{code}:%"))
        )
    return promo.uses, redemptions, entries


# -- the backend (SQLite and PostgreSQL) -------------------------------------------------------


@pytest.fixture
async def loopback(settings: Settings, redis, seeded_database) -> AsyncIterator[httpx.AsyncClient]:
    """The backend under uvicorn on a free port and a client over real HTTP, so concurrent
    requests are concurrent requests (connections, the pool, the database) as in production."""
    async with serve(lambda _url: create_app(settings)) as url:
        limits = httpx.Limits(max_connections=60)
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with httpx.AsyncClient(
            base_url=url, headers=headers, limits=limits, timeout=60
        ) as client:
            yield client


async def test_fifty_concurrent_redemptions_of_a_ten_use_code_give_exactly_ten(
    loopback: httpx.AsyncClient, settings: Settings
):
    users = range(7001, 7051)
    for telegram_id in users:
        await register(loopback, telegram_id)
    await create_code(loopback, "RUSH", credits=7, max_uses=10)
    answers = await asyncio.gather(*(redeem(loopback, t, "rush") for t in users))
    statuses = Counter(a.status_code for a in answers)
    assert statuses == {200: 10, 409: 40}, [a.text for a in answers if a.status_code >= 500]
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {"promo_used_up"}
    winners = {t for t, a in zip(users, answers, strict=True) if a.status_code == 200}
    for telegram_id, answer in zip(users, answers, strict=True):
        if telegram_id in winners:
            assert answer.json() == {"code": "RUSH", "credits": 7, "balance": 3 + 7}
    listed = (await loopback.get("/api/promos")).json()
    assert [(p["code"], p["uses"], p["max_uses"]) for p in listed] == [("RUSH", 10, 10)]
    app = create_app(settings)  # a second process's view of the same database
    async with app.router.lifespan_context(app):
        assert await promo_row(app, "RUSH") == (10, 10, 10)
        held = await books(app)
        assert {t for t in users if held[t][0] == 10} == winners
        assert all(held[t][0] == 3 for t in users if t not in winners)
        await assert_books_balance(app)


async def test_a_code_is_redeemed_once_per_user_whatever_its_case(api, app):
    await register(api, 1001)
    await register(api, 1002)
    await create_code(api, "Once-Only", credits=4, max_uses=5)
    # The same user five times at once (a double tap, two devices): one redemption.
    answers = await asyncio.gather(*(redeem(api, 1001, "once-only") for _ in range(5)))
    assert sorted(a.status_code for a in answers) == [200, 409, 409, 409, 409]
    refused = {a.json()["error"]["code"] for a in answers if a.status_code == 409}
    assert refused == {"promo_already_redeemed"}
    again = await redeem(api, 1001, "ONCE-ONLY")
    assert again.status_code == 409 and "already redeemed" in again.json()["error"]["message"]
    assert await balance(api, 1001) == 3 + 4
    # Another user may.
    other = await redeem(api, 1002, " once-only ")
    assert other.status_code == 200 and other.json()["balance"] == 3 + 4
    assert await promo_row(app, "ONCE-ONLY") == (2, 2, 2)
    async with app.state.sessions() as session:
        entry = await session.scalar(
            select(LedgerEntry).where(LedgerEntry.idempotency_key == "promo:ONCE-ONLY:1001")
        )
    assert (entry.amount, entry.reason, entry.note) == (4, "promo", "promo code ONCE-ONLY")
    await assert_books_balance(app)


async def test_expired_disabled_unknown_codes_and_blocked_users_are_refused(api, app):
    await register(api, 1001)
    await register(api, 1002)
    await create_code(api, "LATE", max_uses=3)
    await create_code(api, "OFF", max_uses=3)
    await create_code(api, "FULL", max_uses=1)
    await create_code(api, "OPEN", max_uses=3)
    assert (await redeem(api, 1002, "FULL")).status_code == 200
    async with app.state.sessions() as session:
        await session.execute(
            update(PromoCode)
            .where(PromoCode.code == "LATE")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.execute(update(User).where(User.telegram_id == 1002).values(banned=True))
        await session.commit()
    disabled = await api.post("/api/promos/off/disable", json={"actor": "tests"})
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    again = await api.post("/api/promos/OFF/disable", json={"actor": "tests"})
    assert again.status_code == 200 and again.json()["disabled"] is True
    before = await books(app)
    cases = [
        (1001, "LATE", 410, "promo_expired"),
        (1001, "OFF", 410, "promo_disabled"),
        (1001, "FULL", 409, "promo_used_up"),
        (1001, "NOPE", 404, "promo_not_found"),
        (1001, "x", 404, "promo_not_found"),  # could never be a code
        (1001, "Ünïcode", 404, "promo_not_found"),
        (1002, "OPEN", 403, "user_banned"),
        (4242, "OPEN", 404, "user_not_found"),
    ]
    for telegram_id, code, status, error in cases:
        answer = await redeem(api, telegram_id, code)
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, error), code
        assert answer.json()["error"]["message"]
    for body in ({"telegram_id": 1001, "code": ""}, {"telegram_id": 1001, "code": "A" * 65}):
        assert (await api.post("/api/promos/redeem", json=body)).status_code == 422
    assert (await api.post("/api/promos/NOPE/disable", json={"actor": "t"})).status_code == 404
    # Nothing changed anywhere.
    assert await books(app) == before
    assert [await promo_row(app, c) for c in ("LATE", "OFF", "FULL", "OPEN")] == [
        (0, 0, 0),
        (0, 0, 0),
        (1, 1, 1),
        (0, 0, 0),
    ]
    await assert_books_balance(app)


async def test_creating_a_code_checks_every_field(api, app):
    future = (utcnow() + timedelta(days=7)).isoformat()
    made = await create_code(api, "summer_2027", credits=15, max_uses=100, expires_at=future)
    assert (made["code"], made["credits"], made["max_uses"], made["uses"]) == (
        "SUMMER_2027",
        15,
        100,
        0,
    )
    assert made["created_by"] == "tests" and made["disabled"] is False
    base = {"code": "GOOD", "credits": 5, "max_uses": 5, "actor": "tests"}
    past = (utcnow() - timedelta(minutes=1)).isoformat()
    refused = [
        ({"code": "AB"}, "bad_promo_code"),
        ({"code": "A" * 33}, "bad_promo_code"),
        ({"code": "TWO WORDS"}, "bad_promo_code"),
        ({"code": "ПРОМО"}, "bad_promo_code"),
        ({"credits": 0}, "bad_promo_credits"),
        ({"credits": -5}, "bad_promo_credits"),
        ({"credits": 2_000_000}, "bad_promo_credits"),
        ({"max_uses": 0}, "bad_promo_uses"),
        ({"expires_at": past}, "bad_promo_expiry"),
        ({"expires_at": "2030-01-01T00:00:00"}, "bad_promo_expiry"),  # no zone
        ({"code": "Summer_2027"}, "promo_exists"),  # case-insensitive
    ]
    for change, code in refused:
        answer = await api.post("/api/promos", json=base | change)
        assert answer.status_code in (409, 422), (change, answer.text)
        assert answer.json()["error"]["code"] == code, change
    for broken in ({"credits": "5"}, {"credits": True}, {"actor": ""}, {"extra": 1}):
        assert (await api.post("/api/promos", json=base | broken)).status_code == 422, broken
    listed = (await api.get("/api/promos")).json()
    assert [p["code"] for p in listed] == ["SUMMER_2027"]


# -- the admin panel -------------------------------------------------------------------------


@pytest.fixture
async def panel_app(settings, redis, seeded_database):
    application = create_app(with_admin(settings))
    async with application.router.lifespan_context(application):
        yield application


async def test_the_admin_panel_creates_lists_and_disables_codes(panel_app):
    from tests.helpers import backend_client

    async with panel_client(panel_app) as admin, backend_client(panel_app) as api:
        assert (await login(admin)).status_code == 302
        token = await csrf(admin, "/admin/promo-code/create")
        form = {
            "code": "welcome",
            "credits": "12",
            "max_uses": "5",
            "expires_at": "",
            "csrf": token,
            "save": "Save",
        }
        created = await admin.post("/admin/promo-code/create", data=form)
        assert created.status_code == 302, created.text
        # A second code of the same name, or a bad one, is refused with the reason shown.
        dup = await admin.post("/admin/promo-code/create", data=form | {"code": "WELCOME"})
        assert dup.status_code == 400 and "exists already" in dup.text
        bad = await admin.post("/admin/promo-code/create", data=form | {"code": "no way"})
        assert bad.status_code == 400 and "3 to 32 characters" in bad.text
        listed = await admin.get("/admin/promo-code/list")
        assert listed.status_code == 200 and "WELCOME" in listed.text
        assert re.search(r"0 / 5", listed.text)
        await register(api, 1001)
        assert (await redeem(api, 1001, "welcome")).json()["balance"] == 3 + 12
        details = await admin.get("/admin/promo-code/details/WELCOME")
        assert "Used 1 of 5 times" in details.text
        # Disabling needs the session's token; then the code is refused.
        forged = await admin.post("/admin/promo-code/disable/WELCOME", data={"csrf": "x"})
        assert forged.status_code == 403
        token = await csrf(admin, "/admin/promo-code/details/WELCOME")
        off = await admin.post("/admin/promo-code/disable/WELCOME", data={"csrf": token})
        assert off.status_code == 302
        details = await admin.get("/admin/promo-code/details/WELCOME")
        assert "disabled" in details.text and "Disable this code" not in details.text
        await register(api, 1002)
        refused = await redeem(api, 1002, "WELCOME")
        assert refused.json()["error"]["code"] == "promo_disabled"
        missing = await admin.post("/admin/promo-code/disable/NOPE", data={"csrf": token})
        assert missing.status_code == 404
    async with panel_app.state.sessions() as session:
        promo = await session.get(PromoCode, "WELCOME")
    assert (promo.credits, promo.max_uses, promo.uses, promo.disabled, promo.created_by) == (
        12,
        5,
        1,
        True,
        "admin:operator",
    )


# -- the bot (SQLite) ------------------------------------------------------------------------


async def _backend_code(world: World, code: str, **fields: object) -> None:
    async with httpx.AsyncClient(
        base_url=world.settings.backend_url, headers={"Authorization": f"Bearer {API_TOKEN}"}
    ) as api:
        await create_code(api, code, **fields)


@pytest.mark.usefixtures("fast_chat_pace")
class TestInTheBot:
    """The bot polls the Telegram double and reaches the real backend over HTTP."""

    @pytest.fixture
    def database_url(self, tmp_path) -> str:
        """The bot's tests run on SQLite only: the backend's own tests cover both databases."""
        return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"

    @pytest.fixture
    async def world(self, settings: Settings) -> AsyncIterator[World]:
        async with polling_world(settings) as running:
            yield running

    async def test_promo_tells_the_credits_or_why_not(self, world: World):
        await _backend_code(world, "BOT10", credits=10, max_uses=2)
        user = world.user(8101)
        await user.send_command("promo")
        usage = await world.reply(user, containing="/promo SPRING25")
        assert usage.params.get("parse_mode", "HTML") == "HTML"
        since = world.mark()
        await user.send_command("promo", "bot10")
        told = await world.reply(user, containing="BOT10", since=since)
        assert "+10 credits" in told.params["text"] and "<b>13</b>" in told.params["text"]
        since = world.mark()
        await user.send_command("promo", "BOT10")
        await world.reply(user, containing="already used", since=since)
        since = world.mark()
        await user.send_command("promo", "<b>nope</b>")
        told = await world.reply(user, containing="There is no promo code", since=since)
        assert "&lt;B&gt;NOPE&lt;/B&gt;" in told.params["text"]  # escaped, never markup
        assert (await world.backend.user(8101)).balance == 3 + 10

    async def test_the_start_link_registers_greets_and_redeems_once(self, world: World):
        await _backend_code(world, "LINK5", credits=5, max_uses=1)
        newcomer = world.user(8102, language_code="ru")
        await newcomer.send_command("start", "promo_LINK5")
        await world.reply(newcomer, containing="👋")
        told = await world.reply(newcomer, containing="LINK5")
        assert "+5 кредитов" in told.params["text"] and "<b>8</b>" in told.params["text"]
        # The same link again: the greeting, then "already used"; another user: used up.
        since = world.mark()
        await newcomer.send_command("start", "promo_LINK5")
        await world.reply(newcomer, containing="уже использовали", since=since)
        other = world.user(8103)
        await other.send_command("start", "promo_link5")
        await world.reply(other, containing="has been used up")
        assert (await world.backend.user(8102)).balance == 3 + 5
        assert (await world.backend.user(8103)).balance == 3
