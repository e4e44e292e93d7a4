"""Referrals (docs/payments.md, "Promo codes and referrals"): a user's invite link, who counts
as referred (only a user new when they follow the link, never themselves), and the
referrer's REFERRAL_BONUS on the referred user's first payment: once, across retries of the
same successful_payment, concurrent confirmations and later payments; 0 turns it off; a
blocked referrer gets nothing. The backend tests run on SQLite and PostgreSQL; the bot's on
SQLite."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select, update

from comfygram.backend import referrals
from comfygram.backend.models import LedgerEntry, Payment, User
from comfygram.settings import Settings
from tests.bot_helpers import FlakyBackend, World, fast_chat_pace, polling_world  # noqa: F401
from tests.doubles.telegram import BOT_USERNAME, Call, UserDriver
from tests.helpers import balance, register
from tests.test_promos import assert_books_balance

pytestmark = pytest.mark.money

LINK = re.compile(rf"https://t\.me/{BOT_USERNAME}\?start=ref_([a-z0-9]{{8}})")


async def invite(api: httpx.AsyncClient, telegram_id: int) -> dict:
    answer = await api.post("/api/referrals/invite", json={"telegram_id": telegram_id})
    assert answer.status_code == 200, answer.text
    return answer.json()


async def pay(api: httpx.AsyncClient, telegram_id: int, charge: str) -> dict:
    """An invoice made, approved and confirmed with `charge`; the confirm answer."""
    made = await api.post(
        "/api/payments/create", json={"telegram_id": telegram_id, "package": "small"}
    )
    assert made.status_code == 201, made.text
    invoice = made.json()
    check = {"payload": invoice["payload"], "total_amount": invoice["amount"], "currency": "XTR"}
    assert (await api.post("/api/payments/precheck", json=check)).status_code == 200
    confirm = check | {"telegram_payment_charge_id": charge}
    answer = await api.post("/api/payments/confirm", json=confirm)
    assert answer.status_code == 200, answer.text
    return answer.json() | {"_confirm": confirm}


async def referrer_of(app, telegram_id: int) -> int | None:
    """The Telegram id of whoever referred the user, or None."""
    async with app.state.sessions() as session:
        user = await session.scalar(select(User).where(User.telegram_id == telegram_id))
        if user.referred_by_id is None:
            return None
        return (await session.get(User, user.referred_by_id)).telegram_id


async def bonuses(app) -> list[tuple[int, str, int]]:
    async with app.state.sessions() as session:
        rows = await session.execute(
            select(User.telegram_id, LedgerEntry.idempotency_key, LedgerEntry.amount)
            .join(User, User.id == LedgerEntry.user_id)
            .where(LedgerEntry.reason == "referral_bonus")
            .order_by(LedgerEntry.id)
        )
        return [tuple(r) for r in rows]


# -- the backend (SQLite and PostgreSQL) -------------------------------------------------------


async def test_the_first_payment_rewards_the_referrer_once(api, app):
    await register(api, 2001)
    code = (await invite(api, 2001))["invite_code"]
    assert re.fullmatch(r"[a-z0-9]{8}", code)
    assert (await invite(api, 2001))["invite_code"] == code  # made once, then kept
    joined = await api.post(
        "/api/users/register", json={"telegram_id": 2002, "referral": f"ref_{code}"}
    )
    assert joined.status_code == 201
    assert await referrer_of(app, 2002) == 2001

    # Ten deliveries of the first payment's confirmation at once: one credit, one bonus.
    first = await pay(api, 2002, "charge-1")
    assert first["credited"] is True
    assert first["referral"] == {
        "telegram_id": 2001,
        "credits": 5,
        "balance": 3 + 5,
        "language_code": None,
    }
    retries = await asyncio.gather(
        *(api.post("/api/payments/confirm", json=first["_confirm"]) for _ in range(10))
    )
    assert {(r.status_code, r.json()["credited"], r.json()["referral"]) for r in retries} == {
        (200, False, None)
    }
    # A second payment is not the first: no bonus.
    second = await pay(api, 2002, "charge-2")
    assert second["credited"] is True and second["referral"] is None
    assert await balance(api, 2001) == 3 + 5
    assert await balance(api, 2002) == 3 + 10 + 10
    assert await bonuses(app) == [(2001, "referral:2002", 5)]
    async with app.state.sessions() as session:
        entry = await session.scalar(
            select(LedgerEntry).where(LedgerEntry.idempotency_key == "referral:2002")
        )
        paid = await session.get(Payment, entry.payment_id)
    assert paid.telegram_payment_charge_id == "charge-1" and entry.note == "invited 2002"
    assert await invite(api, 2001) == {
        "telegram_id": 2001,
        "invite_code": code,
        "invited": 1,
        "rewarded": 1,
        "credits": 5,
    }
    await assert_books_balance(app)


async def test_only_a_new_user_is_referred_and_never_by_themselves(api, app):
    await register(api, 2101)
    code = (await invite(api, 2101))["invite_code"]
    # The referrer follows their own link: they exist, so nothing changes.
    own = await api.post(
        "/api/users/register", json={"telegram_id": 2101, "referral": f"ref_{code}"}
    )
    assert own.status_code == 200
    # An existing user follows the link.
    await register(api, 2102)
    await register(api, 2102, referral=f"ref_{code}")
    # New users with codes that do not exist, or are not codes at all.
    for telegram_id, referral in (
        (2103, "ref_zzzzzzzz"),
        (2104, "ref_"),
        (2105, f"ref_{code}x"),
        (2106, code),
        (2107, "promo_SPRING"),
    ):
        assert (await register(api, telegram_id, referral=referral))["balance"] == 3
    assert [await referrer_of(app, t) for t in range(2101, 2108)] == [None] * 7
    # None of them paying earns anything.
    for telegram_id, charge in ((2101, "c-own"), (2102, "c-old"), (2103, "c-unknown")):
        assert (await pay(api, telegram_id, charge))["referral"] is None
    assert await bonuses(app) == []
    # The code is matched whatever its case (people retype links).
    await register(api, 2108, referral=f"ref_{code.upper()}")
    assert await referrer_of(app, 2108) == 2101
    await assert_books_balance(app)


async def test_a_blocked_referrer_gets_nothing(api, app):
    await register(api, 2201)
    code = (await invite(api, 2201))["invite_code"]
    await register(api, 2202, referral=f"ref_{code}")
    async with app.state.sessions() as session:
        await session.execute(update(User).where(User.telegram_id == 2201).values(banned=True))
        await session.commit()
    assert (await pay(api, 2202, "charge-b"))["referral"] is None
    assert await balance(api, 2201) == 3
    # Nobody new joins through a blocked user's link, and a blocked user gets no link.
    await register(api, 2203, referral=f"ref_{code}")
    assert await referrer_of(app, 2203) is None
    refused = await api.post("/api/referrals/invite", json={"telegram_id": 2201})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "user_banned"
    missing = await api.post("/api/referrals/invite", json={"telegram_id": 2299})
    assert missing.status_code == 404
    for body in ({}, {"telegram_id": 0}, {"telegram_id": "2201"}, {"telegram_id": 1, "x": 1}):
        assert (await api.post("/api/referrals/invite", json=body)).status_code == 422
    await assert_books_balance(app)


async def test_referral_bonus_zero_turns_the_bonus_off(api, app, settings):
    settings.referral_bonus = 0
    await register(api, 2301)
    code = (await invite(api, 2301))["invite_code"]
    await register(api, 2302, referral=f"ref_{code}")
    assert await referrer_of(app, 2302) == 2301  # still recorded: who invited whom
    assert (await pay(api, 2302, "charge-z1"))["referral"] is None
    # Switched on later: the first payment is past, so this user never earns it.
    settings.referral_bonus = 5
    assert (await pay(api, 2302, "charge-z2"))["referral"] is None
    assert await balance(api, 2301) == 3 and await bonuses(app) == []
    await assert_books_balance(app)


# -- the bot (SQLite) ------------------------------------------------------------------------


async def _started(world: World, telegram_id: int, *, args: str = "", lang: str = "en"):
    user = world.user(telegram_id, language_code=lang)
    since = world.mark()
    await user.send_command("start", args)
    await world.reply(user, containing="👋", since=since)
    return user


async def _invoice(world: World, user: UserDriver) -> Call:
    since = world.mark()
    await user.send_command("buy")
    offer = await world.reply(user, containing="Choose a package", since=since)
    await user.press(offer.result, "pkg:small")
    (invoice,) = await world.telegram.wait_for("sendInvoice", chat_id=user.chat_id, since=since)
    return invoice


async def _approved(world: World, user: UserDriver) -> Call:
    invoice = await _invoice(world, user)
    query = await user.pre_checkout(invoice)
    assert (await user.pre_checkout_answer(query))["ok"] is True
    return invoice


def _rewards(world: World, chat_id: int) -> list[Call]:
    return [
        c
        for c in world.telegram.sent("sendMessage", chat_id)
        if "🎁" in str(c.params.get("text", ""))
    ]


async def _link(world: World, user: UserDriver) -> tuple[str, Call]:
    since = world.mark()
    await user.send_command("invite")
    told = await world.reply(user, containing="t.me/", since=since)
    match = LINK.search(told.params["text"])
    assert match, told.params["text"]
    return match.group(1), told


@pytest.mark.usefixtures("fast_chat_pace")
class TestInTheBot:
    @pytest.fixture
    def database_url(self, tmp_path) -> str:
        """The bot's tests run on SQLite only: the backend's own tests cover both databases."""
        return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"

    @pytest.fixture
    def flaky(self) -> FlakyBackend:
        return FlakyBackend()

    @pytest.fixture
    async def world(self, settings: Settings, flaky: FlakyBackend) -> AsyncIterator[World]:
        async with polling_world(settings, transport=flaky) as running:
            yield running

    async def test_the_referrer_is_told_once_in_their_language(self, world: World):
        referrer = await _started(world, 8201, lang="ru")
        code, told = await _link(world, referrer)
        assert (
            "5</b> 💎" in told.params["text"] and "Пришли по вашей ссылке: 0" in told.params["text"]
        )
        friend = await _started(world, 8202, args=f"ref_{code}")
        invoice = await _approved(world, friend)
        await friend.successful_payment(invoice, "charge-f1")
        await world.reply(friend, containing="Thank you")
        reward = await world.reply(referrer, containing="🎁")
        assert "+5 кредитов" in reward.params["text"] and "<b>8</b>" in reward.params["text"]
        # The same update again, and Telegram delivering it again as a new update.
        await friend.resend()
        await friend.successful_payment(invoice, "charge-f1")
        # A second payment of the friend's.
        await friend.successful_payment(await _approved(world, friend), "charge-f2")
        await world.reply(friend, containing="Thank you", count=2)
        await world.settle()
        assert len(_rewards(world, 8201)) == 1
        assert (await world.backend.user(8201)).balance == 3 + 5
        assert (await world.backend.user(8202)).balance == 3 + 10 + 10
        _, told = await _link(world, referrer)
        assert "Пришли по вашей ссылке: 1" in told.params["text"]
        assert "Получено бонусных кредитов: 5" in told.params["text"]

    async def test_an_existing_user_or_the_referrer_following_a_link_earns_nothing(
        self, world: World
    ):
        referrer = await _started(world, 8301)
        code, _ = await _link(world, referrer)
        await _started(world, 8301, args=f"ref_{code}")  # their own link
        old = await _started(world, 8302)
        await _started(world, 8302, args=f"ref_{code}")  # already a user
        for user, charge in ((referrer, "charge-own"), (old, "charge-old")):
            await user.successful_payment(await _approved(world, user), charge)
            await world.reply(user, containing="Thank you")
        await world.settle()
        assert _rewards(world, 8301) == []
        _, told = await _link(world, referrer)
        assert "Joined through your link: 0" in told.params["text"]
        assert (await world.backend.user(8301)).balance == 3 + 10

    async def test_a_payment_credited_late_still_tells_the_referrer_once(
        self, world: World, flaky: FlakyBackend
    ):
        referrer = await _started(world, 8401)
        code, _ = await _link(world, referrer)
        friend = await _started(world, 8402, args=f"ref_{code}")
        invoice = await _approved(world, friend)
        flaky.down("/api/payments/confirm", times=2)  # the backend is away at that moment
        await friend.successful_payment(invoice, "charge-late")
        await world.reply(friend, containing="Thank you", timeout=15)
        await world.reply(referrer, containing="🎁", timeout=15)
        await asyncio.sleep(1)  # the retry loop (every 0.3 s) has nothing more to do
        await world.settle()
        assert len(_rewards(world, 8401)) == 1
        assert (await world.backend.user(8401)).balance == 3 + 5


@pytest.mark.usefixtures("fast_chat_pace")
class TestInTheBotWithoutBonus:
    @pytest.fixture
    def database_url(self, tmp_path) -> str:
        return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"

    @pytest.fixture
    async def world(self, settings: Settings) -> AsyncIterator[World]:
        async with polling_world(settings.model_copy(update={"referral_bonus": 0})) as running:
            yield running

    async def test_referral_bonus_zero_offers_the_link_and_pays_no_bonus(self, world: World):
        referrer = await _started(world, 8501)
        code, told = await _link(world, referrer)
        assert "💎" not in told.params["text"] and "first payment" not in told.params["text"]
        friend = await _started(world, 8502, args=f"ref_{code}")
        await friend.successful_payment(await _approved(world, friend), "charge-0")
        await world.reply(friend, containing="Thank you")
        await world.settle()
        assert _rewards(world, 8501) == []
        assert (await world.backend.user(8501)).balance == 3
        _, told = await _link(world, referrer)
        assert "Joined through your link: 1" in told.params["text"]


async def test_invite_codes_are_made_once_and_unique(api, app, monkeypatch):
    await register(api, 2401)
    await register(api, 2402)
    # Five asks at once (two bot processes, a double tap): one code, kept.
    answers = await asyncio.gather(
        *(api.post("/api/referrals/invite", json={"telegram_id": 2401}) for _ in range(5))
    )
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    (code,) = {a.json()["invite_code"] for a in answers}
    # The next draw clashes with that code: it is drawn again, never shared.
    draws = iter([code, code, "abcdefgh"])
    monkeypatch.setattr(referrals, "new_invite_code", lambda: next(draws))
    assert (await invite(api, 2402))["invite_code"] == "abcdefgh"
    async with app.state.sessions() as session:
        codes = (await session.scalars(select(User.invite_code).order_by(User.telegram_id))).all()
    assert codes == [code, "abcdefgh"]
