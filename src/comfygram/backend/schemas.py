"""Request and response bodies of the REST API."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from comfygram.backend import models
from comfygram.backend.presets import contract_of
from comfygram.domain.jobs import DeliveryStatus, JobStatus
from comfygram.presets.contract import Contract, MediaKind
from comfygram.wire import MediaFile

if TYPE_CHECKING:
    from comfygram.backend.jobs import JobView

# Telegram ids are positive 64-bit integers; anything else is a mistake on the caller's side.
TelegramId = Annotated[int, Field(gt=0, le=2**63 - 1, strict=True)]
ChatId = Annotated[int, Field(ge=-(2**63), le=2**63 - 1, strict=True)]


def no_nul(value: str) -> str:
    # PostgreSQL cannot store NUL in text; refuse it here rather than fail in the database.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return no_nul(value) if isinstance(value, str) else value


class RegisterRequest(Strict):
    telegram_id: TelegramId
    username: str | None = Field(default=None, max_length=64)
    first_name: str | None = Field(default=None, max_length=128)
    language_code: str | None = Field(default=None, max_length=16)
    referral: str | None = Field(default=None, max_length=64)


class UserOut(BaseModel):
    telegram_id: int
    username: str | None
    first_name: str | None
    language_code: str | None
    balance: int
    blocked_bot: bool
    # Blocked by an operator: job and payment requests answer 403 user_banned.
    banned: bool = False
    created_at: datetime

    @classmethod
    def of(cls, user: models.User) -> UserOut:
        return cls(
            telegram_id=user.telegram_id,
            username=user.username,
            first_name=user.first_name,
            language_code=user.language_code,
            balance=user.balance,
            blocked_bot=user.blocked_bot,
            banned=bool(user.banned),
            created_at=models.as_utc(user.created_at),
        )


class CreditAdjustment(Strict):
    amount: int = Field(ge=-1_000_000, le=1_000_000, strict=True)
    reason: str = Field(min_length=1, max_length=500)
    actor: str = Field(min_length=1, max_length=64)
    idempotency_key: str = Field(min_length=1, max_length=128)

    @field_validator("amount")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must not be zero")
        return value


class UserUpdate(Strict):
    """What the bot may change on a user: the /lang choice, and whether they blocked the bot."""

    language_code: str | None = Field(default=None, pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
    blocked_bot: bool | None = Field(default=None, strict=True)


class ModelFileOut(BaseModel):
    folder: str
    name: str


class PresetOut(BaseModel):
    slug: str
    title: dict[str, str]
    description: dict[str, str]
    price: int
    takes_prompt: bool
    # What the preset asks for (photo slots, prompt, options with their prices) and makes:
    # enough for a client to drive the whole conversation. `price` is the base price; a job
    # costs contract.price(price, chosen options).
    contract: Contract
    # The output's kind (contract.output.kind): image, animation or video.
    kind: MediaKind
    models: list[ModelFileOut]
    # False when live workers report that none of their ComfyUIs can run it.
    available: bool = True

    @classmethod
    def of(cls, preset: models.Preset, available: bool = True) -> PresetOut:
        contract = contract_of(preset)
        return cls(
            available=available,
            slug=preset.slug,
            title={"en": preset.title_en, "ru": preset.title_ru},
            description={"en": preset.description_en, "ru": preset.description_ru},
            price=preset.price,
            takes_prompt=contract.prompt is not None,
            contract=contract,
            kind=contract.output.kind,
            models=[ModelFileOut(**m) for m in preset.models],
        )


class PresetDetail(PresetOut):
    enabled: bool
    manifest: dict[str, Any]
    workflow: dict[str, Any]

    @classmethod
    def of(cls, preset: models.Preset, available: bool = True) -> PresetDetail:
        return cls(
            **dict(PresetOut.of(preset, available)),
            enabled=preset.enabled,
            manifest=preset.manifest,
            workflow=preset.workflow,
        )


class JobOut(BaseModel):
    id: str
    telegram_id: int
    language: str | None
    preset: str
    prompt: str | None
    # Every option's choice, the defaults filled in.
    options: dict[str, str]
    status: JobStatus
    price: int
    attempts: int
    progress: int
    error: str | None
    position: int
    # The photos, in slot order (GET /api/jobs/{id}/inputs/{index}).
    inputs: list[MediaFile]
    # The last successful attempt's files (GET /api/jobs/{id}/outputs/{index}).
    outputs: list[MediaFile]
    has_result: bool  # = bool(outputs)
    status_chat_id: int | None
    status_message_id: int | None
    delivery_status: DeliveryStatus
    delivery_error: str | None
    comfyui_crashes: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    delivered_at: datetime | None

    @classmethod
    def of(cls, job: models.Job, user: models.User, position: int = 0) -> JobOut:
        return cls.build(
            job, user.telegram_id, user.language_code, position, job.inputs, job.outputs
        )

    @classmethod
    def of_view(cls, view: JobView) -> JobOut:
        return cls.build(
            view.job, view.telegram_id, view.language, view.position, view.inputs, view.outputs
        )

    @classmethod
    def build(
        cls,
        job: Any,
        telegram_id: int,
        language: str | None,
        position: int,
        inputs: Sequence[Any],
        outputs: Sequence[Any],
    ) -> JobOut:
        """From anything with the jobs table's columns as attributes (a models.Job, or a row
        of backend.jobs.view), and the job_files table's for ``inputs`` and ``outputs``."""
        return cls(
            id=job.id,
            telegram_id=telegram_id,
            language=language,
            preset=job.preset_slug,
            prompt=job.prompt,
            options=dict(job.options or {}),
            status=JobStatus(job.status),
            price=job.price,
            attempts=job.attempts,
            progress=job.progress,
            error=job.error,
            position=position,
            inputs=[media_file(f) for f in inputs],
            outputs=[media_file(f) for f in outputs],
            has_result=bool(outputs),
            status_chat_id=job.status_chat_id,
            status_message_id=job.status_message_id,
            delivery_status=DeliveryStatus(job.delivery_status),
            delivery_error=job.delivery_error,
            comfyui_crashes=job.comfyui_crashes or 0,
            created_at=models.as_utc(job.created_at),
            updated_at=models.as_utc(job.updated_at),
            started_at=models.as_utc(job.started_at),
            finished_at=models.as_utc(job.finished_at),
            delivered_at=models.as_utc(job.delivered_at),
        )


def media_file(stored: models.JobFile | Any) -> MediaFile:
    return MediaFile(
        index=stored.position,
        slot=stored.slot,
        kind=MediaKind(stored.kind),
        mime=stored.mime,
        size=stored.size,
        width=stored.width,
        height=stored.height,
        frames=stored.frames,
        duration_seconds=None if stored.duration_ms is None else stored.duration_ms / 1000,
    )


class StatusChange(Strict):
    status: JobStatus
    error: str | None = Field(default=None, max_length=4000)
    worker: str | None = Field(default=None, max_length=200)
    deliver: bool = Field(
        default=False,
        description="With succeeded or failed: also claim the final message for sending (as "
        "POST delivery with sending), in the same step",
    )


class StartRequest(Strict):
    worker: str = Field(min_length=1, max_length=200)


class StartOut(BaseModel):
    job: JobOut
    # True when this call moved the job from queued to processing: no earlier run of this
    # attempt can exist in ComfyUI.
    fresh: bool


class RefundOut(BaseModel):
    job: JobOut
    refunded: bool
    balance: int


class DeliveryReport(Strict):
    """``sending`` claims the delivery before the message goes out (at most one sender);
    ``pending`` gives a processing job's claim back before anything was sent."""

    status: DeliveryStatus
    error: str | None = Field(default=None, max_length=4000)


class ComfyUICrash(Strict):
    """ComfyUI died while running the job; ``seen`` is the count the worker knew (so a retried
    report counts once)."""

    seen: int = Field(ge=0, le=1000, strict=True)


class StatusMessage(Strict):
    chat_id: ChatId
    message_id: int = Field(gt=0, le=2**63 - 1, strict=True)


class PaymentCreate(Strict):
    telegram_id: TelegramId
    package: str = Field(min_length=1, max_length=32)


class Invoice(BaseModel):
    payment_id: str
    payload: str
    title: str
    description: str
    currency: str
    amount: int
    credits: int


class PaymentFields(Strict):
    payload: str = Field(min_length=1, max_length=128)
    total_amount: int = Field(gt=0, le=1_000_000_000, strict=True)
    currency: str = Field(min_length=1, max_length=8)


class PaymentCheck(PaymentFields):
    # Who is paying (the pre_checkout_query's from): someone else's invoice is refused.
    telegram_id: TelegramId | None = None


class PaymentConfirm(PaymentFields):
    telegram_payment_charge_id: str = Field(min_length=1, max_length=200)
    # A subscription's period: when Telegram says it ends (unix time); None = 30 days on.
    subscription_expiration_date: int | None = Field(default=None, gt=0, le=2**40, strict=True)


class ChargeRefundCreate(PaymentConfirm):
    """A successful_payment that confirm refused: the Stars must go back to who paid."""

    telegram_id: TelegramId
    chat_id: ChatId
    language: str | None = Field(default=None, max_length=16)


class ChargeRefundResult(Strict):
    """What refundStarPayment answered (docs/payments.md)."""

    outcome: Literal["refunded", "failed", "retry"]
    error: str | None = Field(default=None, max_length=300)


class ChargeRefundOut(BaseModel):
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
    created_at: datetime
    refunded_at: datetime | None
    # Whether this answer hands the caller the refund to make (it alone calls Telegram now).
    claimed: bool = False
    # On a result: whether this call changed it (only then is the user told).
    changed: bool = False

    @classmethod
    def of(
        cls, refund: models.ChargeRefund, *, claimed: bool = False, changed: bool = False
    ) -> ChargeRefundOut:
        status = "refunded" if refund.refunded_at else "failed" if refund.failed_at else "due"
        return cls(
            telegram_payment_charge_id=refund.telegram_payment_charge_id,
            telegram_id=refund.telegram_id,
            chat_id=refund.chat_id,
            language=refund.language,
            payload=refund.payload,
            amount=refund.amount,
            currency=refund.currency,
            reason=refund.reason,
            status=status,
            attempts=refund.attempts,
            error=refund.error,
            created_at=models.as_utc(refund.created_at),
            refunded_at=models.as_utc(refund.refunded_at),
            claimed=claimed,
            changed=changed,
        )


class PaymentOut(BaseModel):
    id: str
    status: str
    package: str
    credits: int
    amount: int
    currency: str
    telegram_payment_charge_id: str | None
    credited: bool
    balance: int
    # The referrer's bonus this payment's confirmation posted (on the crediting call only):
    # whom the bot tells.
    referral: ReferralRewardOut | None = None

    @classmethod
    def of(
        cls,
        payment: models.Payment,
        balance: int,
        credited: bool,
        referral: ReferralRewardOut | None = None,
    ) -> PaymentOut:
        return cls(
            id=payment.id,
            status=payment.status,
            package=payment.package,
            credits=payment.credits,
            amount=payment.amount,
            currency=payment.currency,
            telegram_payment_charge_id=payment.telegram_payment_charge_id,
            credited=credited,
            balance=balance,
            referral=referral,
        )


class WorkerReport(Strict):
    comfyui_url: str = Field(min_length=1, max_length=500)
    healthy: bool = Field(strict=True)
    runnable: list[str] = Field(max_length=1000)
    problems: dict[str, str] = Field(default_factory=dict, max_length=1000)
    ttl_seconds: float = Field(gt=0, le=3600)


class WorkerOut(WorkerReport):
    name: str
    seen_at: datetime


class StatsOut(BaseModel):
    """For operators: users, today's jobs by status, the queue, Stars revenue."""

    users: int
    users_today: int
    jobs_today: dict[str, int]
    queued: int
    processing: int
    revenue_today: int
    revenue_total: int
    credits_sold_total: int
    currency: str


class RunTimesOut(BaseModel):
    """Median seconds per run of recent successful jobs (None before the first), and how many
    live workers share the queue: what the bot's wait estimate is made of."""

    median_seconds: float | None
    presets: dict[str, float]
    workers: int


class QueuedJobOut(BaseModel):
    id: str
    preset: str
    position: int


class QueueOut(BaseModel):
    """Every queued job in the order workers take them (1 = next), for live positions."""

    jobs: list[QueuedJobOut]


class SubscriptionCreate(Strict):
    telegram_id: TelegramId
    plan: str = Field(min_length=1, max_length=32)


class SubscriptionCancel(Strict):
    """What editUserStarSubscription did: cancelled (runs to its end) or resumed."""

    telegram_id: TelegramId
    cancelled: bool


class SubscriptionOut(BaseModel):
    id: str
    plan: str
    credits: int
    amount: int
    currency: str
    payload: str
    # pending | active | cancelled (paid up, not renewed) | expired
    state: str
    first_charge_id: str | None
    current_period_end: datetime | None

    @classmethod
    def of(cls, subscription: models.Subscription, state: str) -> SubscriptionOut:
        return cls(
            id=subscription.id,
            plan=subscription.plan,
            credits=subscription.credits,
            amount=subscription.amount,
            currency="XTR",
            payload=subscription.payload,
            state=state,
            first_charge_id=subscription.first_charge_id,
            current_period_end=subscription.current_period_end,
        )


# -- promo codes and referrals -----------------------------------------------------------------


class ReferralRewardOut(BaseModel):
    """A referral bonus just posted: the referrer, what they got, their language."""

    telegram_id: int
    credits: int
    balance: int
    language_code: str | None


class PromoCreate(Strict):
    code: str = Field(min_length=1, max_length=64)
    credits: int = Field(strict=True)
    max_uses: int = Field(strict=True)
    expires_at: datetime | None = None
    actor: str = Field(min_length=1, max_length=64)


class PromoDisable(Strict):
    actor: str = Field(min_length=1, max_length=64)


class PromoOut(BaseModel):
    code: str
    credits: int
    max_uses: int
    uses: int
    expires_at: datetime | None
    disabled: bool
    created_by: str | None
    created_at: datetime

    @classmethod
    def of(cls, promo: models.PromoCode) -> PromoOut:
        return cls(
            code=promo.code,
            credits=promo.credits,
            max_uses=promo.max_uses,
            uses=promo.uses,
            expires_at=models.as_utc(promo.expires_at),
            disabled=bool(promo.disabled),
            created_by=promo.created_by,
            created_at=models.as_utc(promo.created_at),
        )


class PromoRedeem(Strict):
    telegram_id: TelegramId
    code: str = Field(min_length=1, max_length=64)


class PromoRedeemed(BaseModel):
    code: str
    credits: int
    balance: int


class InviteRequest(Strict):
    telegram_id: TelegramId


class InviteOut(BaseModel):
    telegram_id: int
    invite_code: str
    invited: int
    rewarded: int
    credits: int


PaymentOut.model_rebuild()


# -- operator refunds, refunded_payment, /paysupport (issue 14) ---------------------------------


class PaymentRefundRequest(Strict):
    """An operator's refund of a credited payment: why, and who asks."""

    reason: str = Field(min_length=1, max_length=500)
    actor: str = Field(min_length=1, max_length=64)


class RefundedPayment(PaymentConfirm):
    """A refunded_payment service message, as the bot received it."""

    telegram_id: TelegramId
    chat_id: ChatId
    language: str | None = Field(default=None, max_length=16)


class PaymentRefundOut(BaseModel):
    """A refunded payment's take-back. ``credited`` false: the charge was never credited here,
    so there was nothing to take back (``payment`` is then null)."""

    payment: PaymentOut | None
    telegram_id: int | None
    credited: bool
    taken_back: int
    shortfall: int
    balance: int | None
    # Whether this call marked the payment refunded (the first report of the refund).
    changed: bool
    refund_actor: str | None = None
    refund_reason: str | None = None
    refunded_at: datetime | None = None

    @classmethod
    def of(cls, done: Any) -> PaymentRefundOut:
        payment, user = done.payment, done.user
        return cls(
            payment=PaymentOut.of(payment, user.balance, True) if payment is not None else None,
            telegram_id=user.telegram_id if user is not None else None,
            credited=payment is not None,
            taken_back=done.taken_back,
            shortfall=done.shortfall,
            balance=user.balance if user is not None else None,
            changed=done.changed,
            refund_actor=payment.refund_actor if payment is not None else None,
            refund_reason=payment.refund_reason if payment is not None else None,
            refunded_at=models.as_utc(payment.refunded_at) if payment is not None else None,
        )


class PaymentRefundPreview(BaseModel):
    """What a refund would do now: the credits bought, the balance, what would be taken back
    and what is short (credits already spent stay spent; a balance never goes below 0)."""

    payment: PaymentOut
    telegram_id: int
    credits: int
    balance: int
    take_back: int
    shortfall: int
    refundable: bool
    why_not: str | None

    @classmethod
    def of(cls, preview: Any) -> PaymentRefundPreview:
        return cls(
            payment=PaymentOut.of(preview.payment, preview.balance, False),
            telegram_id=preview.user.telegram_id,
            credits=preview.credits,
            balance=preview.balance,
            take_back=preview.take_back,
            shortfall=preview.shortfall,
            refundable=preview.refundable,
            why_not=preview.why_not,
        )


class SupportRequestCreate(Strict):
    """A /paysupport request: the user, the payment they picked (or none), their words."""

    telegram_id: TelegramId
    chat_id: ChatId
    payment_id: str | None = Field(default=None, min_length=1, max_length=36)
    text: str = Field(min_length=1, max_length=4000)


class SupportRequestOut(BaseModel):
    id: int
    telegram_id: int
    payment_id: str | None
    chat_id: int
    text: str
    status: str
    reply: str | None
    created_at: datetime

    @classmethod
    def of(cls, request: models.SupportRequest, telegram_id: int) -> SupportRequestOut:
        return cls(
            id=request.id,
            telegram_id=telegram_id,
            payment_id=request.payment_id,
            chat_id=request.chat_id,
            text=request.text,
            status=request.status,
            reply=request.reply,
            created_at=models.as_utc(request.created_at),
        )


class RecentPaymentOut(BaseModel):
    """One of a user's recent paid (or refunded) payments, for /paysupport's buttons."""

    id: str
    status: str
    credits: int
    amount: int
    currency: str
    paid_at: datetime | None

    @classmethod
    def of(cls, payment: models.Payment) -> RecentPaymentOut:
        return cls(
            id=payment.id,
            status=payment.status,
            credits=payment.credits,
            amount=payment.amount,
            currency=payment.currency,
            paid_at=models.as_utc(payment.paid_at),
        )
