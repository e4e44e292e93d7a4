"""The bot on loopback for its tests: the real backend served by uvicorn on a free port (the
bot reaches it over HTTP through BackendClient), real Redis, and the Telegram double."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from comfygram.api import BackendClient, Job
from comfygram.backend.app import create_app
from comfygram.bot import BotRuntime
from comfygram.settings import Settings
from comfygram.telegram import RateBudget
from tests.doubles.telegram import TEST_BOT_TOKEN, Call, TelegramDouble, UserDriver
from tests.helpers import API_TOKEN, seed_sqlite

ADMIN_ID = 900_001


@contextlib.asynccontextmanager
async def serve(app_for: Callable[[str], Any]) -> AsyncIterator[str]:
    """Bind a free port, build the app knowing its own URL (webhook mode needs it), serve it
    with uvicorn (lifespan included) and yield the URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(app_for(url), log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server._serve([sock]))
    while not server.started:
        if task.done():
            await task
        await asyncio.sleep(0.01)
    try:
        yield url
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def fast_chat_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    """One message per chat every 50 ms instead of Telegram's one per second, so a test's
    conversation does not take seconds. The global rate, edit interval and every 429's
    retry_after are unchanged."""
    monkeypatch.setattr("comfygram.bot.app.RateBudget", partial(RateBudget, chat_interval=0.05))


def bot_settings(settings: Settings, telegram: TelegramDouble, url: str, **extra: Any) -> Settings:
    return settings.model_copy(
        update={
            "telegram_api_url": telegram.url,
            "bot_token": SecretStr(TEST_BOT_TOKEN),
            "backend_url": url,
            "backend_api_url": url,
            "admin_telegram_ids": [ADMIN_ID],
            "telegram_edit_interval": 0.2,
            **extra,
        }
    )


@dataclass
class World:
    settings: Settings
    telegram: TelegramDouble
    backend: BackendClient
    runtime: BotRuntime
    # The polling task of `runtime` (polling worlds only), replaced by restart_bot().
    task: asyncio.Task[None] | None = None

    async def restart_bot(self) -> None:
        """Stop the bot and start a new one (new process state: a new dispatcher, catalog and
        caches) on the same Redis, backend and Telegram, as a deploy or a crash would; whatever
        a conversation needs must therefore be in Redis."""
        assert self.task is not None, "only a polling world restarts its bot"
        await self.settle()
        await self.runtime.stop()
        await asyncio.wait_for(self.task, 15)
        backend = BackendClient(self.settings.backend_url, API_TOKEN)
        self.runtime = BotRuntime(
            self.settings, backend=backend, status_interval=0.3, payments_interval=0.3
        )
        polls = len(self.telegram.sent("getUpdates"))
        self.task = asyncio.create_task(self.runtime.run_polling(handle_signals=False))
        while len(self.telegram.sent("getUpdates")) <= polls:  # the new bot polls
            await asyncio.sleep(0.01)

    async def ended_job(self, telegram_id: int, timeout: float = 10) -> Job:
        """The user's one job once it has ended: a photo can reach the chat a moment before
        the record says succeeded (it leaves while the backend stores the result)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            (job,) = await self.backend.jobs(telegram_id)
            if job.status in ("succeeded", "failed", "cancelled"):
                return job
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"job {job.id} is still {job.status}")
            await asyncio.sleep(0.02)

    async def settle(self, timeout: float = 10) -> None:
        """Wait until the bot has taken every update sent so far and finished handling it."""
        deadline = asyncio.get_running_loop().time() + timeout
        quiet = 0
        while quiet < 3:  # three checks in a row, so a wake-up in flight is not missed
            quiet = quiet + 1 if self._idle() else 0
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("the bot did not settle")
            await asyncio.sleep(0.02)

    def _idle(self) -> bool:
        double = self.telegram
        if self.runtime.settings.webhook_url:
            waiting = double._updates or double._resent
            return not waiting and not self.runtime._updates
        polls = double.sent("getUpdates")
        if not polls or polls[-1].done or double._resent:
            return False
        offset = polls[-1].params.get("offset") or 0
        if any(u["update_id"] >= offset for u in double._updates):
            return False
        return not self.runtime._updates

    def user(self, telegram_id: int, **kwargs: Any) -> UserDriver:
        return self.telegram.user(telegram_id, **kwargs)

    async def reply(
        self,
        user: UserDriver,
        *,
        containing: str = "",
        method: str = "sendMessage",
        since: int = 0,
        count: int = 1,
        timeout: float = 10,
    ) -> Call:
        """The bot's `count`-th matching call to the user's chat (waits for it)."""
        calls = await self.telegram.wait_for(
            method,
            chat_id=user.chat_id,
            count=count,
            since=since,
            timeout=timeout,
            predicate=lambda c: containing in str(c.params.get("text", "")),
        )
        return calls[count - 1]

    def mark(self) -> int:
        """Where the calls recorded so far end (for `since=`)."""
        return len(self.telegram.calls)


class FlakyBackend(httpx.AsyncHTTPTransport):
    """The bot's way to the backend, with faults: a call that never reaches the backend
    (down), or one whose answer is lost after the backend did the work (a timeout)."""

    def __init__(self) -> None:
        super().__init__()
        self.faults: list[list[Any]] = []  # [path, times left, lose the answer]

    def down(self, path: str, times: int = 1) -> None:
        self.faults.append([path, times, False])

    def lose_answer(self, path: str, times: int = 1) -> None:
        self.faults.append([path, times, True])

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for fault in self.faults:
            if fault[1] > 0 and request.url.path == fault[0]:
                fault[1] -= 1
                if fault[2]:
                    response = await super().handle_async_request(request)
                    await response.aread()
                    raise httpx.ReadTimeout("the answer was lost", request=request)
                raise httpx.ConnectError("the backend is down", request=request)
        return await super().handle_async_request(request)


@contextlib.asynccontextmanager
async def polling_world(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None, **extra: Any
) -> AsyncIterator[World]:
    """The backend, and the bot polling the Telegram double (as `comfygram bot` does)."""
    async with contextlib.AsyncExitStack() as stack:
        telegram = await stack.enter_async_context(TelegramDouble())
        await seed_sqlite(settings.database_url)
        url = await stack.enter_async_context(
            serve(lambda url: create_app(bot_settings(settings, telegram, url)))
        )
        current = bot_settings(settings, telegram, url, **extra)
        client = await stack.enter_async_context(BackendClient(url, API_TOKEN))
        # The bot's own backend client (through `transport` when a test breaks the way there).
        bot_backend = BackendClient(url, API_TOKEN, transport=transport)
        runtime = BotRuntime(
            current, backend=bot_backend, status_interval=0.3, payments_interval=0.3
        )
        task = asyncio.create_task(runtime.run_polling(handle_signals=False))
        world = World(current, telegram, client, runtime, task)
        try:
            while not telegram.sent("getUpdates"):  # polling has begun
                await asyncio.sleep(0.01)
            yield world
        finally:
            await world.runtime.stop()
            assert world.task is not None
            await asyncio.wait_for(world.task, 15)


@contextlib.asynccontextmanager
async def webhook_world(settings: Settings, **extra: Any) -> AsyncIterator[World]:
    """The backend in webhook mode: it sets the webhook and runs the bot's dispatcher."""
    await seed_sqlite(settings.database_url)
    async with TelegramDouble() as telegram:
        apps: list[Any] = []

        def app_for(url: str) -> Any:
            apps.append(
                create_app(
                    bot_settings(settings, telegram, url, webhook_url=f"{url}/webhook", **extra)
                )
            )
            return apps[0]

        async with serve(app_for) as url:
            current = bot_settings(settings, telegram, url, webhook_url=f"{url}/webhook", **extra)
            async with BackendClient(url, API_TOKEN) as client:
                await telegram.wait_for("setWebhook")
                yield World(current, telegram, client, apps[0].state.bot)
