"""Telegram's webhook: check the secret, answer at once, hand the update to the bot."""

from __future__ import annotations

import hmac
import json
import logging

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from comfygram.backend.errors import ApiError

log = logging.getLogger(__name__)
router = APIRouter(tags=["telegram"])


@router.post("/webhook", include_in_schema=False)
async def telegram_webhook(request: Request) -> Response:
    """An update from Telegram, for the bot's dispatcher (running in this process when
    WEBHOOK_URL and BOT_TOKEN are set).

    The secret is compared in constant time before the body is read. The answer is 200 as soon
    as the update parses: Telegram retries updates that get no 2xx, and handling (downloads,
    the backend, Telegram calls) happens in the background; a retried update_id is dropped.
    """
    secret = request.app.state.settings.webhook_secret
    sent = request.headers.get("x-telegram-bot-api-secret-token", "")
    if secret is None or not hmac.compare_digest(sent.encode(), secret.get_secret_value().encode()):
        raise ApiError(401, "unauthorized", "Wrong or missing X-Telegram-Bot-Api-Secret-Token.")
    runtime = getattr(request.app.state, "bot", None)
    if runtime is None:
        raise ApiError(
            503,
            "webhook_not_configured",
            "This backend does not run the bot: set BOT_TOKEN and WEBHOOK_URL, or use polling.",
        )
    try:
        raw = json.loads(await request.body())
        if not isinstance(raw, dict) or not isinstance(raw.get("update_id"), int):
            raise ValueError("not an update")
        update = runtime.parse(raw)
    except (ValueError, ValidationError):
        raise ApiError(
            400, "bad_update", "The body is not a Telegram Update (JSON with an update_id)."
        ) from None
    runtime.feed(update)
    return Response(status_code=200)
