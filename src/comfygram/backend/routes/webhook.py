from __future__ import annotations

import hmac

from fastapi import APIRouter, Request

from comfygram.backend.errors import ApiError

router = APIRouter(tags=["telegram"])


@router.post("/webhook", include_in_schema=False)
async def telegram_webhook(request: Request) -> None:
    """Telegram's updates. Only the secret check lives here until the bot's dispatcher does."""
    secret = request.app.state.settings.webhook_secret
    sent = request.headers.get("x-telegram-bot-api-secret-token", "")
    if secret is None or not hmac.compare_digest(sent.encode(), secret.get_secret_value().encode()):
        raise ApiError(401, "unauthorized", "Wrong or missing X-Telegram-Bot-Api-Secret-Token.")
    raise ApiError(
        501, "webhook_not_ready", "Webhook updates are not handled yet; run the bot with polling."
    )
