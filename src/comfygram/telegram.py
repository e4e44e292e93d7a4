"""Telegram plumbing shared by the bot and the worker: one bot, one rate budget, one sender.

Both components use the same bot token, so Telegram counts their calls together. The budget
therefore lives in Redis, and the clock is Redis's own (``TIME``), so processes on different
machines agree on when a slot is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable
from typing import Any, ClassVar, TypeVar

from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods import SendMediaGroup, TelegramMethod
from aiogram.methods.base import Response

from comfygram import metrics
from comfygram.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# How often one call may wait out a 429 before we stop: Telegram escalates repeated floods.
MAX_RETRY_AFTER_WAITS = 10
# A skippable edit may still wait this long for a global slot.
_EDIT_SLOT_WAIT_MS = 1000
_HANDOVER_POLL_SECONDS = 0.05


class _Session(AiohttpSession):
    """aiogram's session, keeping alive the class each kind of answer is read into.

    aiogram reads an answer into ``Response[T]``, a generic class pydantic caches only weakly:
    every garbage collection dropped them, and the next answer built its class again (3 ms of
    CPU, over 10 under load, in the middle of sending a result)."""

    _answer_classes: ClassVar[dict[Any, type[Response[Any]]]] = {}

    def check_response(
        self, bot: Bot, method: TelegramMethod[T], status_code: int, content: str
    ) -> Response[T]:
        answer = method.__returning__
        if answer not in self._answer_classes:
            self._answer_classes[answer] = Response[answer]  # type: ignore[valid-type]
        return super().check_response(bot, method, status_code, content)


def create_bot(settings: Settings) -> Bot:
    """The aiogram Bot for settings.bot_token, talking to settings.telegram_api_url, HTML mode."""
    settings.require("bot_token")
    assert settings.bot_token is not None
    session = _Session(api=TelegramAPIServer.from_base(settings.telegram_api_url))
    return Bot(
        token=settings.bot_token.get_secret_value(),
        session=session,
        default=DefaultBotProperties(parse_mode=ParseMode.HTML),
    )


# Reserves the earliest moment a call may run, and returns how many ms away it is (-1 when a
# non-blocking reservation is refused). Times are integer milliseconds of Redis's clock.
# Global rate: time is cut into slots of 1/rate seconds holding one call each, so no second
# ever holds more than `rate` + 1 calls, and a chat that must wait does not hold up other chats.
# A call takes the slot it falls in when that one is free: an idle budget never makes it wait.
# A call that sends several messages at once (an album of n items) weighs n: it takes n global
# slots, runs at the last of them, and holds its chat for n chat intervals. An edit (or a
# delete) waits for its chat's turn but does not take it: it sends no message, and has its own
# interval, so a result is never held up by the progress edit just before it.
# KEYS: slots zset, global pause, chat next, chat edit next, chat pause
# ARGV: slot ms, chat interval ms, edit interval ms, has chat (0/1), is edit (0/1),
#       max wait ms (-1: wait as long as needed), weight (>= 1)
_RESERVE = """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local slot_ms = tonumber(ARGV[1])
local has_chat = ARGV[4] == '1'
local is_edit = ARGV[5] == '1'
local max_wait = tonumber(ARGV[6])
local start = now
local function not_before(key)
  local value = tonumber(redis.call('GET', key))
  if value and value > start then start = value end
end
not_before(KEYS[2])
if has_chat then
  not_before(KEYS[3])
  not_before(KEYS[5])
  if is_edit then not_before(KEYS[4]) end
end
if max_wait >= 0 and start > now then return -1 end
local weight = math.max(1, tonumber(ARGV[7]) or 1)
local slot = math.floor(start / slot_ms)
local tries = 0
local taken = {}
while true do
  if not redis.call('ZSCORE', KEYS[1], slot) then
    taken[#taken + 1] = slot
    if #taken >= weight then break end
  end
  slot = slot + 1
  tries = tries + 1
  if tries > 100000 then return redis.error_reply('rate budget: no free slot') end
end
local at = math.max(start, math.ceil(slot * slot_ms))
if max_wait >= 0 and at - now > max_wait then return -1 end
for _, free in ipairs(taken) do redis.call('ZADD', KEYS[1], free, free) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', math.floor(now / slot_ms) - 1)
if redis.call('PTTL', KEYS[1]) < at - now + 60000 then
  redis.call('PEXPIRE', KEYS[1], at - now + 60000)
end
if has_chat then
  if is_edit then
    local edit_next = at + tonumber(ARGV[3])
    redis.call('SET', KEYS[4], edit_next, 'PX', edit_next - now + 1000)
  else
    local chat_next = at + tonumber(ARGV[2]) * weight
    redis.call('SET', KEYS[3], chat_next, 'PX', chat_next - now + 1000)
  end
end
return at - now
"""

# KEYS: pause key. ARGV: ms. Extends the pause, never shortens it.
_PAUSE = """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local until_ms = now + math.ceil(tonumber(ARGV[1]))
local current = tonumber(redis.call('GET', KEYS[1]))
if not current or current < until_ms then
  redis.call('SET', KEYS[1], until_ms, 'PX', until_ms - now + 1000)
end
return 1
"""

# KEYS: pause keys. Returns ms left of the longest pause (<= 0: none).
_PAUSED_FOR = """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local left = 0
for _, key in ipairs(KEYS) do
  local value = tonumber(redis.call('GET', key))
  if value and value - now > left then left = value - now end
end
return left
"""


class RateBudget:
    """Telegram's rate limits, shared by every process using the same Redis and prefix."""

    def __init__(
        self,
        redis: Any,
        prefix: str,
        *,
        edit_interval: float = 3.0,
        global_rate: int = 25,
        chat_interval: float = 1.0,
    ) -> None:
        if global_rate < 1:
            raise ValueError("global_rate must be at least 1")
        self.redis = redis
        self.prefix = prefix
        self._base = f"{prefix}:tg:"
        self._slot_ms = 1000 / global_rate
        self._chat_ms = round(chat_interval * 1000)
        self._edit_ms = round(edit_interval * 1000)
        self._reserve = redis.register_script(_RESERVE)
        self._pause = redis.register_script(_PAUSE)
        self._paused_for = redis.register_script(_PAUSED_FOR)

    @classmethod
    def from_settings(cls, redis: Any, settings: Settings) -> RateBudget:
        return cls(
            redis,
            settings.redis_prefix,
            edit_interval=settings.telegram_edit_interval,
            global_rate=settings.telegram_global_rate,
        )

    def _chat_key(self, chat_id: int | None, kind: str) -> str:
        return f"{self._base}chat:{chat_id if chat_id is not None else '-'}:{kind}"

    async def _reserve_ms(
        self, chat_id: int | None, edit: bool, max_wait_ms: int, weight: int = 1
    ) -> int:
        keys = [
            f"{self._base}slots",
            f"{self._base}pause",
            self._chat_key(chat_id, "next"),
            self._chat_key(chat_id, "edit"),
            self._chat_key(chat_id, "pause"),
        ]
        args = [
            self._slot_ms,
            self._chat_ms,
            self._edit_ms,
            int(chat_id is not None),
            int(edit),
            max_wait_ms,
            max(1, weight),
        ]
        return int(await self._reserve(keys=keys, args=args))

    async def _paused_ms(self, chat_id: int | None) -> int:
        keys = [f"{self._base}pause"]
        if chat_id is not None:
            keys.append(self._chat_key(chat_id, "pause"))
        return int(await self._paused_for(keys=keys))

    async def acquire(self, chat_id: int | None, *, edit: bool = False, weight: int = 1) -> None:
        """Wait until a call to `chat_id` (None: no chat) fits the budget, and take its slot
        (``weight`` slots for a call that sends that many messages, such as an album)."""
        while True:
            wait_ms = await self._reserve_ms(chat_id, edit, -1, weight)
            if wait_ms <= 0:
                return  # the reservation itself saw no pause
            # A little over, so the pause check below never sees the tail of a pause that our
            # own reservation already waited out.
            await asyncio.sleep(wait_ms / 1000 + 0.005)
            # A 429 seen by another process while we slept moves our turn back.
            if await self._paused_ms(chat_id) <= 0:
                return

    async def try_acquire_edit(self, chat_id: int) -> bool:
        """Take an edit slot for `chat_id` if one is free now; False means skip this edit."""
        wait_ms = await self._reserve_ms(chat_id, True, _EDIT_SLOT_WAIT_MS)
        if wait_ms < 0:
            return False
        if wait_ms > 0:
            await asyncio.sleep(wait_ms / 1000)
        return True

    async def pause(self, seconds: float, chat_id: int | None = None) -> None:
        """Hold every call (or every call to `chat_id`) for at least `seconds`."""
        key = f"{self._base}pause" if chat_id is None else self._chat_key(chat_id, "pause")
        await self._pause(keys=[key], args=[seconds * 1000])


_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class StatusHandover:
    """A job's status message belongs to the bot while the job waits and to the worker once it
    runs. The worker marks the message taken, then waits out an edit the bot has in flight, so
    a stale "queued" edit can never land on top of the worker's progress."""

    TAKEN_SECONDS = 24 * 3600

    def __init__(self, redis: Any, prefix: str, *, edit_seconds: float = 30.0) -> None:
        self.redis = redis
        self.base = f"{prefix}:tg:status"
        self.edit_seconds = edit_seconds
        self._release = redis.register_script(_RELEASE)

    def _keys(self, chat_id: int, message_id: int) -> tuple[str, str]:
        return (
            f"{self.base}:{chat_id}:{message_id}:taken",
            f"{self.base}:{chat_id}:{message_id}:edit",
        )

    async def take(self, chat_id: int, message_id: int) -> None:
        """The worker's, from now on; returns once no edit of the bot's is in flight."""
        taken, editing = self._keys(chat_id, message_id)
        if not await self.redis.set(taken, "1", nx=True, ex=self.TAKEN_SECONDS):
            return  # taken before: by an earlier attempt, or another worker
        # The bot's edit holds its key for at most edit_seconds; poll it out (another process).
        for _ in range(round(self.edit_seconds / _HANDOVER_POLL_SECONDS)):
            if not await self.redis.exists(editing):
                return
            await asyncio.sleep(_HANDOVER_POLL_SECONDS)

    @contextlib.asynccontextmanager
    async def bot_edit(self, chat_id: int, message_id: int) -> AsyncIterator[bool]:
        """Yields whether the bot may edit the message now (not taken, no other edit going)."""
        taken, editing = self._keys(chat_id, message_id)
        token = secrets.token_hex(8)
        if not await self.redis.set(editing, token, nx=True, px=round(self.edit_seconds * 1000)):
            yield False
            return
        try:
            yield not await self.redis.exists(taken)
        finally:
            await self._release(keys=[editing], args=[token])


class UserBlocked(Exception):
    """The user blocked the bot, deleted the account, or the private chat does not exist."""


class MessageGone(Exception):
    """The message to edit or delete no longer exists or can no longer be edited."""


class TelegramUnavailable(Exception):
    """Network errors or 5xx answers outlasted the retries."""


_GONE = (
    "message to edit not found",
    "message can't be edited",
    "message to delete not found",
    "message can't be deleted",
    "message_id_invalid",
)


# Telegram's error codes by aiogram exception, for the errors metric.
_ERROR_CODES: tuple[tuple[type[TelegramAPIError], str], ...] = (
    (TelegramRetryAfter, "429"),
    (TelegramForbiddenError, "403"),
    (TelegramEntityTooLarge, "413"),
    (TelegramBadRequest, "400"),
    (TelegramUnauthorizedError, "401"),
    (TelegramConflictError, "409"),
    (TelegramNotFound, "404"),
    (TelegramServerError, "5xx"),
)


async def _counted(call: Awaitable[T]) -> T:
    try:
        return await call
    except TelegramNetworkError:
        metrics.TELEGRAM_ERRORS.labels("network").inc()
        raise
    except TelegramAPIError as exc:
        if "message is not modified" not in str(exc).lower():
            code = next((c for kind, c in _ERROR_CODES if isinstance(exc, kind)), "other")
            metrics.TELEGRAM_ERRORS.labels(code).inc()
        raise


def message_weight(method: TelegramMethod[Any]) -> int:
    """How many messages a call sends: an album (sendMediaGroup) one per item, as Telegram's
    flood control counts them."""
    if isinstance(method, SendMediaGroup):
        return max(1, len(method.media))
    return 1


class TelegramSender:
    """Calls Telegram within the shared budget and turns its errors into a few decisions.

    Media go through ``call`` like any method: ``sendPhoto``, ``sendVideo``,
    ``sendAnimation``, ``sendDocument``, and ``sendMediaGroup``, which weighs its item count
    in the budget."""

    def __init__(
        self, bot: Bot, budget: RateBudget, *, max_attempts: int = 5, backoff: float = 0.5
    ) -> None:
        self.bot = bot
        self.budget = budget
        self.handover = StatusHandover(budget.redis, budget.prefix)
        self.max_attempts = max_attempts
        self.backoff = backoff

    async def call(
        self, method: TelegramMethod[T], *, chat_id: int | None, edit: bool = False
    ) -> T | None:
        """Run `method`; None when Telegram says the edit changed nothing."""
        failures = 0
        waits = 0
        weight = message_weight(method)
        while True:
            await self.budget.acquire(chat_id, edit=edit, weight=weight)
            try:
                return await self._send(method, chat_id)
            except TelegramRetryAfter as exc:
                waits += 1
                if waits > MAX_RETRY_AFTER_WAITS:
                    raise TelegramUnavailable(
                        f"{method.__api_method__}: still flood-limited after {waits - 1} waits"
                    ) from None
                await self._flood_pause(method, chat_id, exc.retry_after)
            except TelegramEntityTooLarge:
                raise
            except (TelegramNetworkError, TelegramServerError) as exc:
                failures += 1
                reason = self._reason(exc)
                if failures >= self.max_attempts:
                    # `from None`: the cause's text may hold the request URL, hence the token.
                    raise TelegramUnavailable(
                        f"{method.__api_method__} failed {failures} times, last: {reason}"
                    ) from None
                delay = self.backoff * 2 ** (failures - 1)
                log.warning(
                    "Telegram %s failed (%s), retrying in %.1fs (%d/%d)",
                    method.__api_method__,
                    reason,
                    delay,
                    failures,
                    self.max_attempts,
                )
                await asyncio.sleep(delay)

    async def edit_progress(self, method: TelegramMethod[T], *, chat_id: int) -> T | None:
        """A skippable edit: None when the budget says not now or Telegram is busy."""
        if not await self.budget.try_acquire_edit(chat_id):
            return None
        try:
            return await self._send(method, chat_id)
        except TelegramRetryAfter as exc:
            await self._flood_pause(method, chat_id, exc.retry_after)
        except TelegramEntityTooLarge:
            raise
        except (TelegramNetworkError, TelegramServerError) as exc:
            log.warning(
                "Telegram %s failed (%s), skipped", method.__api_method__, self._reason(exc)
            )
        return None

    async def _send(self, method: TelegramMethod[T], chat_id: int | None) -> T | None:
        """One request, with the permanent errors translated."""
        try:
            return await _counted(self.bot(method))
        except TelegramForbiddenError as exc:
            raise UserBlocked(f"chat {chat_id}: {exc.message}") from None
        except TelegramBadRequest as exc:
            text = exc.message.lower()
            if "message is not modified" in text:
                return None
            if any(marker in text for marker in _GONE):
                raise MessageGone(f"chat {chat_id}: {exc.message}") from None
            # Private chats have positive ids; "chat not found" there means the user is gone.
            if "chat not found" in text and chat_id is not None and chat_id > 0:
                raise UserBlocked(f"chat {chat_id}: {exc.message}") from None
            raise

    async def _flood_pause(
        self, method: TelegramMethod[Any], chat_id: int | None, seconds: int
    ) -> None:
        log.warning(
            "Telegram flood control on %s (chat %s): waiting %ss",
            method.__api_method__,
            chat_id,
            seconds,
        )
        await self.budget.pause(seconds, chat_id)

    def _reason(self, exc: Exception) -> str:
        """The error's class and text, with the token cut out (aiohttp may quote the URL)."""
        text = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
        return text.replace(self.bot.token, "<token>")
