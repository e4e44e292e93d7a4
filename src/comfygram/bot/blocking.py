"""Whether the user blocked the bot (``blocked_bot`` in the backend, which the worker reads
too, so it does not send results into a chat that refuses them).

Set when Telegram refuses a message with 403 or tells us (``my_chat_member``: "kicked"); cleared
when the user unblocks the bot (``my_chat_member``: "member") or simply writes to it, since
someone who talks to the bot can be answered. Checking costs one backend call per user at most
once a minute (a Redis mark), and none while the user keeps chatting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware, F, Router
from aiogram.enums import ChatMemberStatus, ChatType
from aiogram.types import ChatMemberUpdated, Message, TelegramObject, User
from redis.asyncio import Redis
from redis.exceptions import RedisError

from comfygram.api import BackendClient, BackendError, BackendUnavailable
from comfygram.bot.keys import bot_key

log = logging.getLogger(__name__)

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]

# How long a user who wrote counts as known to be reachable (no backend call meanwhile).
HEARD_SECONDS = 60
LOOKUP_TIMEOUT_SECONDS = 2.0


class BlockedFlags:
    def __init__(self, redis: Redis, prefix: str, backend: BackendClient) -> None:
        self.redis = redis
        self.prefix = prefix
        self.backend = backend

    def _heard(self, telegram_id: int) -> str:
        return bot_key(self.prefix, "heard", telegram_id)

    async def mark(self, telegram_id: int, blocked: bool) -> None:
        """Store the flag in the backend; best effort (the next message or send corrects it)."""
        if blocked:
            # So the user's next message clears it at once (else the mark expires in a minute).
            with contextlib.suppress(RedisError):
                await self.redis.delete(self._heard(telegram_id))
        try:
            await self.backend.update_user(telegram_id, blocked_bot=blocked)
        except (BackendError, BackendUnavailable) as exc:
            log.info("user %s: blocked_bot=%s not stored: %s", telegram_id, blocked, exc)
            return
        log.info("user %s %s the bot", telegram_id, "blocked" if blocked else "unblocked")

    async def heard_from(self, telegram_id: int) -> None:
        """The user wrote to us: clear a blocked mark (checked once a minute at most)."""
        try:
            if not await self.redis.set(self._heard(telegram_id), "1", nx=True, ex=HEARD_SECONDS):
                return
        except RedisError:
            return
        try:
            user = await asyncio.wait_for(self.backend.user(telegram_id), LOOKUP_TIMEOUT_SECONDS)
        except (BackendError, BackendUnavailable, TimeoutError):
            return  # not registered yet, or the backend is away: the next minute will tell
        if user.blocked_bot:
            await self.mark(telegram_id, blocked=False)


class HeardFromMiddleware(BaseMiddleware):
    """Every message a user sends clears their blocked mark (see BlockedFlags)."""

    def __init__(self, flags: BlockedFlags) -> None:
        self.flags = flags

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        user: User | None = data.get("event_from_user")
        if isinstance(event, Message) and user is not None and not user.is_bot:
            await self.flags.heard_from(user.id)
        return await handler(event, data)


async def membership_changed(update: ChatMemberUpdated, blocked_flags: BlockedFlags) -> None:
    status = update.new_chat_member.status
    if status == ChatMemberStatus.KICKED:
        await blocked_flags.mark(update.from_user.id, blocked=True)
    elif status == ChatMemberStatus.MEMBER:
        await blocked_flags.mark(update.from_user.id, blocked=False)


def create_router() -> Router:
    router = Router(name="blocking")
    router.my_chat_member.register(membership_changed, F.chat.type == ChatType.PRIVATE)
    return router
