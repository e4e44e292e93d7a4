"""Redis keys of the bot: all under ``{REDIS_PREFIX}:bot:``, apart from the job queue's."""

from __future__ import annotations


def bot_key(prefix: str, *parts: object) -> str:
    return ":".join([prefix, "bot", *(str(part) for part in parts)])
