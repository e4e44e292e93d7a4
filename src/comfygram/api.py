"""Typed HTTP client for the backend's REST API, shared by the bot and the worker.

The only way the bot and the worker reach the backend. Every call carries the service token;
transport failures and 5xx answers raise BackendUnavailable (safe to retry later), 4xx
answers raise BackendError with the backend's error code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from comfygram.presets.contract import Contract, MediaKind
from comfygram.wire import MediaFile, ResultLimits

__all__ = [
    "BackendClient",
    "BackendError",
    "BackendUnavailable",
    "ChargeRefund",
    "Invoice",
    "Job",
    "MediaFile",
    "Payment",
    "Preset",
    "Refund",
    "ResultLimits",
    "Subscription",
    "User",
]


def _charge_report(
    payload: str,
    total_amount: int,
    currency: str,
    telegram_payment_charge_id: str,
    telegram_id: int,
    chat_id: int,
    language: str | None,
) -> dict[str, Any]:
    """A charge being reported (refused by confirm, or refunded): the charge, who paid it, and
    where and how to tell them."""
    return {
        "payload": payload,
        "total_amount": total_amount,
        "currency": currency,
        "telegram_payment_charge_id": telegram_payment_charge_id,
        "telegram_id": telegram_id,
        "chat_id": chat_id,
        "language": language,
    }


class BackendError(Exception):
    """The backend refused the request (4xx); ``code`` is its machine-readable reason."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body


class BackendUnavailable(Exception):
    """The backend could not be reached or failed (5xx); try again later."""


class User(BaseModel):
    telegram_id: int
    username: str | None = None
    first_name: str | None = None
    language_code: str | None = None
    balance: int
    blocked_bot: bool = False
    created_at: datetime


class ModelFile(BaseModel):
    folder: str
    name: str


class Preset(BaseModel):
    slug: str
    title: dict[str, str]
    description: dict[str, str]
    price: int  # the base price; a job costs contract.price(price, chosen options)
    takes_prompt: bool
    contract: Contract
    kind: MediaKind  # contract.output.kind
    models: list[ModelFile] = []
    available: bool = True


class PresetDetail(Preset):
    enabled: bool
    manifest: dict[str, Any]
    workflow: dict[str, Any]


class Job(BaseModel):
    id: str
    telegram_id: int
    language: str | None = None
    preset: str
    prompt: str | None
    options: dict[str, str] = {}
    status: str
    price: int
    attempts: int
    progress: int
    error: str | None
    position: int
    inputs: list[MediaFile] = []
    outputs: list[MediaFile] = []
    has_result: bool
    status_chat_id: int | None
    status_message_id: int | None
    delivery_status: str
    delivery_error: str | None
    comfyui_crashes: int = 0
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    delivered_at: datetime | None


class Refund(BaseModel):
    job: Job
    refunded: bool
    balance: int


class Invoice(BaseModel):
    payment_id: str
    payload: str
    title: str
    description: str
    currency: str
    amount: int
    credits: int


class Subscription(BaseModel):
    id: str
    plan: str
    credits: int
    amount: int
    currency: str
    payload: str
    state: str
    first_charge_id: str | None
    current_period_end: datetime | None


class ReferralReward(BaseModel):
    telegram_id: int
    credits: int
    balance: int
    language_code: str | None = None


class Payment(BaseModel):
    id: str
    status: str
    package: str
    credits: int
    amount: int
    currency: str
    telegram_payment_charge_id: str | None
    credited: bool
    balance: int
    # The bonus this confirmation gave the payer's referrer (only on the crediting call).
    referral: ReferralReward | None = None


class PromoRedeemed(BaseModel):
    code: str
    credits: int
    balance: int


class Invite(BaseModel):
    telegram_id: int
    invite_code: str
    invited: int
    rewarded: int
    credits: int


class ChargeRefund(BaseModel):
    """A Stars charge that could not be credited and is (being) given back."""

    telegram_payment_charge_id: str
    telegram_id: int
    chat_id: int
    language: str | None
    payload: str
    amount: int
    currency: str
    reason: str
    status: str  # due, refunded or failed
    attempts: int
    error: str | None
    claimed: bool = False
    changed: bool = False


class PaymentRefund(BaseModel):
    """A refunded payment's take-back (``credited`` false: never credited, nothing taken)."""

    payment: Payment | None
    telegram_id: int | None
    credited: bool
    taken_back: int
    shortfall: int
    balance: int | None
    changed: bool


class RecentPayment(BaseModel):
    id: str
    status: str
    credits: int
    amount: int
    currency: str
    paid_at: datetime | None


class SupportRequest(BaseModel):
    id: int
    telegram_id: int
    payment_id: str | None
    chat_id: int
    text: str
    status: str


class Stats(BaseModel):
    users: int
    users_today: int
    jobs_today: dict[str, int]
    queued: int
    processing: int
    revenue_today: int
    revenue_total: int
    credits_sold_total: int
    currency: str


class QueuedJob(BaseModel):
    id: str
    preset: str
    position: int


class RunTimes(BaseModel):
    median_seconds: float | None
    presets: dict[str, float]
    workers: int


class BackendClient:
    """``base_url`` is BACKEND_URL (bot) or BACKEND_API_URL (worker)."""

    def __init__(
        self,
        base_url: str,
        api_token: str,
        *,
        timeout: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_token}"},
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> BackendClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            url = self._http.base_url
            where = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
            raise BackendUnavailable(
                f"backend unreachable at {where} ({type(exc).__name__}): "
                "is `comfygram backend` running there? (BACKEND_URL)"
            ) from exc
        if response.status_code >= 500:
            raise BackendUnavailable(f"backend answered {response.status_code} to {path}")
        if response.status_code >= 400:
            try:
                body = response.json()
                error = body.get("error") or {}
                code, message = str(error.get("code", "error")), str(error.get("message", ""))
            except (ValueError, AttributeError):
                body, code, message = {}, "error", response.text[:200]
            raise BackendError(response.status_code, code, message, body)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._call(method, path, **kwargs)).json()

    # -- users ------------------------------------------------------------------------------

    async def register(
        self,
        telegram_id: int,
        *,
        username: str | None = None,
        first_name: str | None = None,
        language_code: str | None = None,
        referral: str | None = None,
    ) -> User:
        body = {
            "telegram_id": telegram_id,
            "username": username,
            "first_name": first_name,
            "language_code": language_code,
            "referral": referral,
        }
        return User.model_validate(await self._json("POST", "/api/users/register", json=body))

    async def user(self, telegram_id: int) -> User:
        return User.model_validate(
            await self._json("GET", f"/api/users/by-telegram-id/{telegram_id}")
        )

    async def adjust_credits(
        self, telegram_id: int, amount: int, *, reason: str, actor: str, idempotency_key: str
    ) -> User:
        body = {
            "amount": amount,
            "reason": reason,
            "actor": actor,
            "idempotency_key": idempotency_key,
        }
        path = f"/api/users/by-telegram-id/{telegram_id}/credits"
        return User.model_validate(await self._json("POST", path, json=body))

    # -- presets ----------------------------------------------------------------------------

    async def presets(self, *, available_only: bool = False) -> list[Preset]:
        params = {"available": "true"} if available_only else None
        rows = await self._json("GET", "/api/presets", params=params)
        return [Preset.model_validate(row) for row in rows]

    async def preset(self, slug: str) -> PresetDetail:
        return PresetDetail.model_validate(await self._json("GET", f"/api/presets/{slug}"))

    # -- jobs -------------------------------------------------------------------------------

    async def create_job(
        self,
        telegram_id: int,
        preset: str,
        images: Sequence[tuple[bytes, str]],
        *,
        prompt: str | None = None,
        options: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[Job, bool]:
        """Create (or replay) a job; returns (job, replayed). ``images``: (data, filename) of
        each photo, in the preset's slot order; ``options``: {option id: choice id}."""
        data = {"telegram_id": str(telegram_id), "preset": preset}
        if prompt is not None:
            data["prompt"] = prompt
        if options:
            data["options"] = json.dumps(dict(options))
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        response = await self._call(
            "POST",
            "/api/jobs/create",
            data=data,
            files=[("image", (filename, image)) for image, filename in images],
            headers=headers,
        )
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        return Job.model_validate(response.json()), replayed

    async def jobs(self, telegram_id: int, *, limit: int = 10) -> list[Job]:
        rows = await self._json(
            "GET", "/api/jobs", params={"telegram_id": telegram_id, "limit": limit}
        )
        return [Job.model_validate(row) for row in rows]

    async def job(self, job_id: str) -> Job:
        return Job.model_validate(await self._json("GET", f"/api/jobs/{job_id}"))

    async def start(self, job_id: str, worker: str) -> tuple[Job, bool]:
        """Take the job: a queued one moves to processing. The job, and whether it was queued
        (then no earlier run of this attempt can exist)."""
        body = await self._json("POST", f"/api/jobs/{job_id}/start", json={"worker": worker})
        return Job.model_validate(body["job"]), bool(body["fresh"])

    async def set_status(
        self,
        job_id: str,
        status: str,
        *,
        error: str | None = None,
        worker: str | None = None,
        deliver: bool = False,
    ) -> Job:
        """``deliver``: with a final status, claim the final message in the same step (a
        BackendError ``delivery_claimed`` when someone has, and nothing changed)."""
        body = {"status": status, "error": error, "worker": worker, "deliver": deliver}
        return Job.model_validate(await self._json("POST", f"/api/jobs/{job_id}/status", json=body))

    async def refund(self, job_id: str) -> Refund:
        return Refund.model_validate(await self._json("POST", f"/api/jobs/{job_id}/refund"))

    async def job_input(self, job_id: str, index: int = 0) -> tuple[bytes, str]:
        """The user's photo of slot ``index`` and its content type."""
        response = await self._call("GET", f"/api/jobs/{job_id}/inputs/{index}")
        return response.content, response.headers.get("content-type", "")

    async def job_output(self, job_id: str, index: int = 0) -> tuple[bytes, str]:
        """Output ``index`` of the job and its content type."""
        response = await self._call("GET", f"/api/jobs/{job_id}/outputs/{index}")
        return response.content, response.headers.get("content-type", "")

    async def put_outputs(
        self,
        job_id: str,
        files: Sequence[tuple[bytes, str, str]],
        *,
        succeed: bool = False,
        claim: bool = True,
    ) -> Job:
        """Store all of this attempt's outputs at once ((data, filename, mime) each, in order),
        replacing an earlier attempt's; all or nothing. ``succeed``: and mark the job succeeded
        and (unless not ``claim``: claimed while it ran) claim its final message, in the same
        step."""
        params = {"succeed": "true", "claim": "true" if claim else "false"} if succeed else None
        response = await self._call(
            "PUT",
            f"/api/jobs/{job_id}/outputs",
            params=params,
            files=[("file", (filename, data, mime)) for data, filename, mime in files],
        )
        return Job.model_validate(response.json())

    async def result_limits(self) -> ResultLimits:
        """Per-file size and pixels, and the number of outputs, PUT outputs takes."""
        return ResultLimits.model_validate(await self._json("GET", "/api/jobs/limits"))

    async def record_delivery(self, job_id: str, status: str, error: str | None = None) -> Job:
        body = {"status": status, "error": error}
        return Job.model_validate(
            await self._json("POST", f"/api/jobs/{job_id}/delivery", json=body)
        )

    async def record_comfyui_crash(self, job_id: str, *, seen: int) -> Job:
        """ComfyUI died while running the job; ``seen`` is the count the caller knew, so a
        retried call counts the death once."""
        return Job.model_validate(
            await self._json("POST", f"/api/jobs/{job_id}/comfyui-crash", json={"seen": seen})
        )

    async def record_status_message(self, job_id: str, chat_id: int, message_id: int) -> Job:
        """Record the job's status message. A job that has already ended (its final message
        claimed, or cancelled) records nothing: the answer's ``status_message_id`` is then not
        ``message_id``, and the caller deletes that message, which nothing would update."""
        body = {"chat_id": chat_id, "message_id": message_id}
        return Job.model_validate(
            await self._json("POST", f"/api/jobs/{job_id}/status-message", json=body)
        )

    # -- payments ---------------------------------------------------------------------------

    async def create_payment(self, telegram_id: int, package: str) -> Invoice:
        body = {"telegram_id": telegram_id, "package": package}
        return Invoice.model_validate(await self._json("POST", "/api/payments/create", json=body))

    async def precheck_payment(
        self, payload: str, total_amount: int, currency: str, *, telegram_id: int | None = None
    ) -> Payment:
        """May the invoice be paid now (by ``telegram_id``)? Yes holds it for a minute."""
        body = {
            "payload": payload,
            "total_amount": total_amount,
            "currency": currency,
            "telegram_id": telegram_id,
        }
        return Payment.model_validate(await self._json("POST", "/api/payments/precheck", json=body))

    async def confirm_payment(
        self,
        payload: str,
        total_amount: int,
        currency: str,
        telegram_payment_charge_id: str,
        *,
        subscription_expiration_date: int | None = None,
    ) -> Payment:
        body: dict[str, Any] = {
            "payload": payload,
            "total_amount": total_amount,
            "currency": currency,
            "telegram_payment_charge_id": telegram_payment_charge_id,
        }
        if subscription_expiration_date is not None:
            body["subscription_expiration_date"] = subscription_expiration_date
        return Payment.model_validate(await self._json("POST", "/api/payments/confirm", json=body))

    async def create_subscription(self, telegram_id: int, plan: str) -> Subscription:
        body = {"telegram_id": telegram_id, "plan": plan}
        return Subscription.model_validate(
            await self._json("POST", "/api/subscriptions/create", json=body)
        )

    async def subscriptions(self, telegram_id: int) -> list[Subscription]:
        """The user's paid-up subscriptions, newest first."""
        rows = await self._json("GET", "/api/subscriptions", params={"telegram_id": telegram_id})
        return [Subscription.model_validate(row) for row in rows]

    async def set_subscription_cancelled(
        self, subscription_id: str, telegram_id: int, cancelled: bool
    ) -> Subscription:
        body = {"telegram_id": telegram_id, "cancelled": cancelled}
        return Subscription.model_validate(
            await self._json("POST", f"/api/subscriptions/{subscription_id}/cancel", json=body)
        )

    async def record_refund(
        self,
        payload: str,
        total_amount: int,
        currency: str,
        telegram_payment_charge_id: str,
        *,
        telegram_id: int,
        chat_id: int,
        language: str | None,
    ) -> ChargeRefund:
        """Record a charge confirm refused for a refund (once per charge id); ``claimed`` says
        whether this caller is the one to call refundStarPayment now."""
        body = _charge_report(
            payload,
            total_amount,
            currency,
            telegram_payment_charge_id,
            telegram_id,
            chat_id,
            language,
        )
        return ChargeRefund.model_validate(
            await self._json("POST", "/api/payments/refunds", json=body)
        )

    async def due_refunds(self, *, limit: int = 50) -> list[ChargeRefund]:
        """Refunds still to make that nobody holds now."""
        rows = await self._json("GET", "/api/payments/refunds", params={"limit": limit})
        return [ChargeRefund.model_validate(row) for row in rows]

    async def claim_refund(self, telegram_payment_charge_id: str) -> ChargeRefund:
        path = f"/api/payments/refunds/{quote(telegram_payment_charge_id, safe='')}/claim"
        return ChargeRefund.model_validate(await self._json("POST", path))

    async def refund_result(
        self, telegram_payment_charge_id: str, outcome: str, error: str | None = None
    ) -> ChargeRefund:
        """refunded, failed (for good) or retry; ``changed`` on the one call that changed it."""
        path = f"/api/payments/refunds/{quote(telegram_payment_charge_id, safe='')}/result"
        body = {"outcome": outcome, "error": error}
        return ChargeRefund.model_validate(await self._json("POST", path, json=body))

    async def refund_payment(self, ref: str, *, reason: str, actor: str) -> PaymentRefund:
        """An operator's refund of a credited payment (charge id or payment id)."""
        path = f"/api/payments/{quote(ref, safe='')}/refund"
        body = {"reason": reason, "actor": actor}
        return PaymentRefund.model_validate(await self._json("POST", path, json=body))

    async def payment_refunded(
        self,
        payload: str,
        total_amount: int,
        currency: str,
        telegram_payment_charge_id: str,
        *,
        telegram_id: int,
        chat_id: int,
        language: str | None = None,
    ) -> PaymentRefund:
        """A refunded_payment service message: the credits are taken back once per charge."""
        body = _charge_report(
            payload,
            total_amount,
            currency,
            telegram_payment_charge_id,
            telegram_id,
            chat_id,
            language,
        )
        return PaymentRefund.model_validate(
            await self._json("POST", "/api/payments/refunded", json=body)
        )

    async def recent_payments(self, telegram_id: int, *, limit: int = 5) -> list[RecentPayment]:
        params = {"telegram_id": telegram_id, "limit": limit}
        rows = await self._json("GET", "/api/payments/recent", params=params)
        return [RecentPayment.model_validate(row) for row in rows]

    async def open_support_request(
        self, telegram_id: int, chat_id: int, text: str, *, payment_id: str | None = None
    ) -> SupportRequest:
        body = {
            "telegram_id": telegram_id,
            "chat_id": chat_id,
            "text": text,
            "payment_id": payment_id,
        }
        return SupportRequest.model_validate(
            await self._json("POST", "/api/payments/support", json=body)
        )

    # -- workers ----------------------------------------------------------------------------

    async def worker_heartbeat(
        self,
        name: str,
        *,
        comfyui_url: str,
        healthy: bool,
        runnable: list[str],
        problems: dict[str, str],
        ttl_seconds: float,
    ) -> None:
        """Tell the backend this worker is alive and which presets its ComfyUI can run."""
        body = {
            "comfyui_url": comfyui_url,
            "healthy": healthy,
            "runnable": runnable,
            "problems": problems,
            "ttl_seconds": ttl_seconds,
        }
        await self._call("PUT", f"/api/workers/{name}", json=body)

    async def workers(self) -> list[dict[str, Any]]:
        """Live workers with their ComfyUI health and runnable presets."""
        return await self._json("GET", "/api/workers")

    # -- bot: profile changes and operator numbers -------------------------------------------

    async def update_user(
        self,
        telegram_id: int,
        *,
        language_code: str | None = None,
        blocked_bot: bool | None = None,
    ) -> User:
        """Store the /lang choice and/or whether the user blocked the bot (None: unchanged)."""
        body: dict[str, Any] = {}
        if language_code is not None:
            body["language_code"] = language_code
        if blocked_bot is not None:
            body["blocked_bot"] = blocked_bot
        path = f"/api/users/by-telegram-id/{telegram_id}"
        return User.model_validate(await self._json("PATCH", path, json=body))

    async def stats(self) -> Stats:
        return Stats.model_validate(await self._json("GET", "/api/stats"))

    async def run_times(self) -> RunTimes:
        return RunTimes.model_validate(await self._json("GET", "/api/stats/run-times"))

    async def queue(self) -> list[QueuedJob]:
        """Every queued job with its position (1 = next to run)."""
        body = await self._json("GET", "/api/stats/queue")
        return [QueuedJob.model_validate(row) for row in body["jobs"]]

    # -- promo codes and referrals ------------------------------------------------------------

    async def redeem_promo(self, telegram_id: int, code: str) -> PromoRedeemed:
        """Redeem a promo code; BackendError codes: promo_not_found, promo_expired,
        promo_disabled, promo_used_up, promo_already_redeemed, user_banned."""
        body = {"telegram_id": telegram_id, "code": code}
        return PromoRedeemed.model_validate(
            await self._json("POST", "/api/promos/redeem", json=body)
        )

    async def invite(self, telegram_id: int) -> Invite:
        """The user's invite code (made on first ask) and how their invitations went."""
        body = {"telegram_id": telegram_id}
        return Invite.model_validate(await self._json("POST", "/api/referrals/invite", json=body))
