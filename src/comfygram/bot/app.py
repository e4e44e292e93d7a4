"""Assembling the bot: the dispatcher with its routers and middlewares, and a runtime that
receives updates by long polling (``comfygram bot``) or from the backend's ``POST /webhook``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
from typing import Any

import aiohttp
from aiogram import Bot, Dispatcher, F, Router
from aiogram.enums import ChatType
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramConflictError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.fsm.storage.base import DefaultKeyBuilder
from aiogram.fsm.storage.redis import RedisStorage
from aiogram.methods import GetMe, GetUpdates
from aiogram.types import BotCommand, BotCommandScopeChat, BotCommandScopeDefault, Update
from aiogram.utils.token import TokenValidationError
from redis.asyncio import Redis

from comfygram.api import BackendClient
from comfygram.bot import blocking
from comfygram.bot.albums import Albums
from comfygram.bot.blocking import BlockedFlags, HeardFromMiddleware
from comfygram.bot.catalog import PresetCatalog
from comfygram.bot.confirmations import Confirmations
from comfygram.bot.keys import bot_key
from comfygram.bot.languages import LanguageStore
from comfygram.bot.middlewares import (
    BackendMiddleware,
    BestEffortCallbackAnswers,
    DedupeMiddleware,
    LanguageMiddleware,
    ThrottlingMiddleware,
)
from comfygram.bot.orders import Orders
from comfygram.bot.pending import PendingPayments
from comfygram.bot.routers import (
    account,
    admin,
    errors,
    fallback,
    growth,
    jobs,
    payments,
    photos,
    start,
    subscriptions,
    support,
)
from comfygram.bot.sources import SourceStore
from comfygram.bot.status import Eta, QueueTracker
from comfygram.i18n import t
from comfygram.queue import connect_redis
from comfygram.settings import ConfigError, Settings
from comfygram.tasks import cancelled
from comfygram.telegram import RateBudget, TelegramSender, create_bot

log = logging.getLogger(__name__)

# The command menu (setMyCommands), in this order; admins see ADMIN_COMMANDS as well.
COMMANDS = (
    "start",
    "presets",
    "balance",
    "buy",
    "history",
    "cancel",
    "lang",
    "help",
    "terms",
    "paysupport",
    "subscription",
    "promo",
    "invite",
)
ADMIN_COMMANDS = ("stats", "user", "grant")
# Abandoned conversations (a preset chosen, the photo never sent) expire after a week.
FSM_TTL_SECONDS = 7 * 24 * 3600
# Flood control per user: a burst of this many messages, then one per second (or 2 presses).
MESSAGE_BURST, MESSAGE_RATE = 5, 1.0
PRESS_BURST, PRESS_RATE = 8, 2.0
# Updates handled at once per process; more wait (polled ones are confirmed already, and a
# webhook's have had their 200).
WEBHOOK_CONCURRENCY = 64
# getUpdates waits this long for an update; the other start-up calls get this long to answer.
POLL_SECONDS = 25
START_TIMEOUT_SECONDS = 15
# Between attempts while Telegram is away or refuses the token: doubling up to the maximum.
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 1.0, 60.0
# While the same fault persists, its line is repeated this seldom.
REPEAT_SECONDS = 300.0
POLLING_FAULTS = (TelegramAPIError, aiohttp.ClientError, OSError, TimeoutError)


def telegram_fault(exc: BaseException, api_url: str) -> str:
    """What is wrong, and what to check, in one line."""
    if isinstance(exc, (TelegramUnauthorizedError, TelegramNotFound)):
        # Telegram answers 404 to a token it does not know the shape of, 401 to a revoked one.
        code = "401 Unauthorized" if isinstance(exc, TelegramUnauthorizedError) else "404"
        return f"BOT_TOKEN rejected by Telegram ({code}): check BOT_TOKEN"
    if isinstance(exc, TelegramConflictError):
        if "webhook" in exc.message.lower():
            return (
                "a webhook is set for this BOT_TOKEN, so Telegram refuses polling: is a "
                "backend with WEBHOOK_URL using the same bot? Run one or the other"
            )
        return (
            "Telegram refuses to let two processes poll with one BOT_TOKEN: stop the other "
            "`comfygram bot`/`run` using it"
        )
    if isinstance(exc, (TelegramNetworkError, aiohttp.ClientError, OSError, TimeoutError)):
        return f"Telegram unreachable at {api_url}: check the network/proxy"
    message = getattr(exc, "message", "") or type(exc).__name__
    return f"Telegram answered an error ({message}); retrying"


class TelegramHealth:
    """Says once what keeps the bot from Telegram (and again every few minutes while it
    lasts), waits with backoff between attempts, and says when Telegram answers again."""

    def __init__(self, settings: Settings) -> None:
        self.api_url = settings.telegram_api_url
        self.delay = RETRY_FIRST_SECONDS
        self.fault: str | None = None
        self.told_at = -math.inf
        self.healthy = False

    async def failed(self, exc: BaseException) -> None:
        fault = telegram_fault(exc, self.api_url)
        now = time.monotonic()
        if fault != self.fault or now - self.told_at >= REPEAT_SECONDS:
            log.warning("%s (retrying, at least every %.0f s)", fault, RETRY_MAX_SECONDS)
            self.told_at = now
        log.debug("Telegram call failed: %s", type(exc).__name__)
        self.fault = fault
        self.healthy = False
        wait = self.delay
        if isinstance(exc, TelegramRetryAfter):
            wait = max(wait, float(exc.retry_after))
        await asyncio.sleep(wait)
        self.delay = min(self.delay * 2, RETRY_MAX_SECONDS)

    def ok(self, news: str) -> None:
        """Telegram answered; ``news`` is logged when that is news."""
        if not self.healthy:
            log.info("%s", news)
        self.fault = None
        self.healthy = True
        self.delay = RETRY_FIRST_SECONDS


def create_dispatcher(
    settings: Settings,
    redis: Redis,
    *,
    bot: Bot,
    backend: BackendClient,
    tg: TelegramSender,
    storage_redis: Redis | None = None,
    status_interval: float = 5.0,
    payments_interval: float = 10.0,
) -> Dispatcher:
    """The dispatcher with every router and middleware; its state lives in Redis.

    ``storage_redis`` is the FSM storage's own connection (closed with the dispatcher);
    ``redis`` serves the middlewares and stores and is left to the caller to close.
    """
    prefix = settings.redis_prefix
    storage = RedisStorage(
        storage_redis or connect_redis(settings),
        key_builder=DefaultKeyBuilder(prefix=bot_key(prefix, "fsm")),
        state_ttl=FSM_TTL_SECONDS,
        data_ttl=FSM_TTL_SECONDS,
    )
    # Fetched about every other round of the tracker, so a GPU coming or going shows soon.
    eta = Eta(backend, cache_seconds=2 * status_interval)
    tracker = QueueTracker(redis, prefix, backend, tg, eta, interval=status_interval)
    languages = LanguageStore(redis, prefix, backend)
    blocked_flags = BlockedFlags(redis, prefix, backend)
    dispatcher = Dispatcher(
        storage=storage,
        settings=settings,
        tg=tg,
        languages=languages,
        blocked_flags=blocked_flags,
        catalog=PresetCatalog(backend),
        sources=SourceStore(redis, prefix),
        confirmations=Confirmations(redis, prefix),
        albums=Albums(redis, prefix),
        tracker=tracker,
        pending=PendingPayments(redis, prefix, backend, tg, interval=payments_interval),
        orders=Orders(bot, backend, tg, redis, prefix, settings, tracker, eta),
    )
    dispatcher.update.outer_middleware(DedupeMiddleware(redis, prefix))
    dispatcher.update.outer_middleware(BackendMiddleware(backend))
    dispatcher.update.outer_middleware(LanguageMiddleware(languages))
    dispatcher.message.outer_middleware(HeardFromMiddleware(blocked_flags))
    dispatcher.message.outer_middleware(
        ThrottlingMiddleware(redis, prefix, "message", MESSAGE_BURST, MESSAGE_RATE)
    )
    dispatcher.callback_query.outer_middleware(
        ThrottlingMiddleware(redis, prefix, "press", PRESS_BURST, PRESS_RATE)
    )

    # The bot is a private-chat bot: messages in groups it was added to are ignored.
    private = Router(name="private")
    private.message.filter(F.chat.type == ChatType.PRIVATE)
    private.include_routers(
        # First: /paysupport's conversation takes the text written in it (a command leaves it
        # and runs), and refunded_payment.
        support.create_router(),
        start.create_router(),
        admin.create_router(settings.admin_telegram_ids),
        account.create_router(),
        growth.create_router(),
        payments.create_router(),
        subscriptions.create_router(),
        jobs.create_router(),
        photos.create_router(),
        fallback.create_router(),
    )
    dispatcher.include_routers(errors.create_router(), blocking.create_router(), private)
    return dispatcher


class BotRuntime:
    """One process's bot: Bot, Dispatcher, backend client and the background loops.

    ``run_polling()`` for ``comfygram bot``; ``start_webhook()``, ``feed()`` and ``close()``
    for the backend, which receives updates at ``POST /webhook``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        backend: BackendClient | None = None,
        status_interval: float = 5.0,
        payments_interval: float = 10.0,
    ) -> None:
        settings.require("bot_token", "api_token")
        assert settings.api_token is not None
        self.settings = settings
        try:
            self.bot = create_bot(settings)
        except TokenValidationError:
            raise ConfigError(
                "BOT_TOKEN is malformed: a bot token is digits, a colon and about 35 letters "
                "(123456789:AAF…); copy it from @BotFather"
            ) from None
        self.redis = connect_redis(settings)
        self.bot.session.middleware(BestEffortCallbackAnswers())
        self.backend = backend or BackendClient(
            settings.backend_url, settings.api_token.get_secret_value()
        )
        budget = RateBudget(
            self.redis,
            settings.redis_prefix,
            edit_interval=settings.telegram_edit_interval,
            global_rate=settings.telegram_global_rate,
        )
        self.tg = TelegramSender(self.bot, budget)
        self.dispatcher = create_dispatcher(
            settings,
            self.redis,
            bot=self.bot,
            backend=self.backend,
            tg=self.tg,
            status_interval=status_interval,
            payments_interval=payments_interval,
        )
        self._loops: list[asyncio.Task[Any]] = []
        # Made here, not in run_polling(): a stop() that comes first still counts.
        self._stopping = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._updates: set[asyncio.Task[Any]] = set()
        self._slots = asyncio.Semaphore(WEBHOOK_CONCURRENCY)

    @property
    def allowed_updates(self) -> list[str]:
        """Exactly the update types some handler takes."""
        return self.dispatcher.resolve_used_update_types()

    # -- both modes -----------------------------------------------------------------------

    async def set_commands(self) -> None:
        """The command menu in English (the default) and Russian; admins get theirs too.
        /subscription is listed only while SUBSCRIPTION_PLANS sells something."""
        public = tuple(
            c for c in COMMANDS if c != "subscription" or self.settings.subscription_plans
        )
        for code in (None, "ru"):
            await self.bot.set_my_commands(
                self._commands(code or "en", public),
                scope=BotCommandScopeDefault(),
                language_code=code,
            )
        for admin_id in self.settings.admin_telegram_ids:
            for code in (None, "ru"):
                # Fails for an admin who never opened the bot; the commands work regardless.
                with contextlib.suppress(TelegramAPIError):
                    await self.bot.set_my_commands(
                        self._commands(code or "en", public + ADMIN_COMMANDS),
                        scope=BotCommandScopeChat(chat_id=admin_id),
                        language_code=code,
                    )

    @staticmethod
    def _commands(lang: str, names: tuple[str, ...]) -> list[BotCommand]:
        return [
            BotCommand(command=name, description=t(lang, f"bot.commands.{name}")) for name in names
        ]

    def start_loops(self) -> None:
        """Queue positions on status messages, and payments waiting for the backend."""
        if self._loops:
            return
        tracker: QueueTracker = self.dispatcher["tracker"]
        pending: PendingPayments = self.dispatcher["pending"]
        self._loops = [
            asyncio.create_task(tracker.run(), name="bot-status"),
            asyncio.create_task(pending.run(), name="bot-pending-payments"),
        ]

    async def close(self) -> None:
        await asyncio.gather(*(cancelled(task) for task in self._loops))
        self._loops = []
        if self._updates:
            # Let updates in flight finish (their effects are idempotent, but half-told is rude).
            await asyncio.wait(list(self._updates), timeout=10)
        await self.dispatcher.storage.close()
        await self.backend.aclose()
        await self.bot.session.close()
        await self.redis.aclose()

    # -- long polling -----------------------------------------------------------------------

    async def run_polling(self, *, handle_signals: bool = True) -> None:
        """Until SIGINT/SIGTERM (or ``stop()``); never raises for Telegram being away or
        refusing the token: it says so in one log line and keeps trying with backoff, so
        ``comfygram run`` keeps its backend and worker up. Polling and a webhook exclude each
        other, so the webhook is deleted first."""
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stopping.set)
        self._poller = asyncio.create_task(self._poll(), name="bot-polling")
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({self._poller, stopping}, return_when=asyncio.FIRST_COMPLETED)
            await cancelled(self._poller)
        finally:
            await cancelled(stopping)
            if handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            await self.close()

    async def stop(self) -> None:
        """End ``run_polling()``, or have it end at once if it has not started yet."""
        self._stopping.set()

    async def _poll(self) -> None:
        health = TelegramHealth(self.settings)
        while True:  # start: who we are, no webhook, the command menu
            try:
                me = await self.bot(GetMe(), request_timeout=START_TIMEOUT_SECONDS)
                await self.bot.delete_webhook(
                    drop_pending_updates=False, request_timeout=START_TIMEOUT_SECONDS
                )
                await self.set_commands()
            except POLLING_FAULTS as exc:
                await health.failed(exc)
                continue
            break
        health.ok(f"bot @{me.username} is polling Telegram")
        self.start_loops()
        offset: int | None = None
        while True:
            try:
                updates = await self.bot(
                    GetUpdates(
                        offset=offset,
                        timeout=POLL_SECONDS,
                        allowed_updates=self.allowed_updates,
                    ),
                    request_timeout=POLL_SECONDS + START_TIMEOUT_SECONDS,
                )
            except POLLING_FAULTS as exc:
                await health.failed(exc)
                continue
            health.ok(f"bot @{me.username} is polling Telegram again")
            for update in updates:
                offset = update.update_id + 1
                self.feed(update)

    # -- webhook ----------------------------------------------------------------------------

    async def start_webhook(self) -> None:
        """Point Telegram at WEBHOOK_URL with the secret; retried in the background until
        Telegram answers, so the backend starts even when Telegram is unreachable."""
        self.settings.require("webhook_url", "webhook_secret")
        self.start_loops()
        self._loops.append(asyncio.create_task(self._set_webhook(), name="bot-set-webhook"))

    async def _set_webhook(self) -> None:
        assert self.settings.webhook_url is not None and self.settings.webhook_secret is not None
        health = TelegramHealth(self.settings)
        while True:
            try:
                await self.bot.set_webhook(
                    self.settings.webhook_url,
                    secret_token=self.settings.webhook_secret.get_secret_value(),
                    allowed_updates=self.allowed_updates,
                    request_timeout=START_TIMEOUT_SECONDS,
                )
                await self.set_commands()
            except POLLING_FAULTS as exc:
                await health.failed(exc)
                continue
            health.ok(f"webhook set; receiving {', '.join(self.allowed_updates)}")
            return

    def parse(self, raw: dict[str, Any]) -> Update:
        """The update as aiogram's model (raises pydantic's ValidationError when malformed)."""
        return Update.model_validate(raw, context={"bot": self.bot})

    def feed(self, update: Update) -> None:
        """Handle the update in the background: the webhook answers Telegram at once."""
        task = asyncio.create_task(self._handle(update), name=f"update-{update.update_id}")
        self._updates.add(task)
        task.add_done_callback(self._updates.discard)

    async def _handle(self, update: Update) -> None:
        async with self._slots:
            try:
                await self.dispatcher.feed_update(self.bot, update)
            except Exception:
                log.exception("update %s failed", update.update_id)
