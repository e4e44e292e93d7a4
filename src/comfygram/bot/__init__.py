"""The Telegram bot: the user's journey, talking to the backend over HTTP only.

``BotRuntime`` runs it, by long polling (``comfygram bot``) or fed by the backend's
``POST /webhook``; ``create_dispatcher`` builds the aiogram dispatcher (one router per feature
in ``routers/``, middlewares in ``middlewares.py``). Its own state — conversations, flood
counters, seen update ids, tracked status messages — lives in Redis under
``{REDIS_PREFIX}:bot:``; it never touches the job queue, job data or ComfyUI.
"""

from comfygram.bot.app import BotRuntime, create_dispatcher

__all__ = ["BotRuntime", "create_dispatcher"]
