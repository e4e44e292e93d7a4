"""Database tables (SQLAlchemy 2 declarative). The migrations in migrations/ create them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(moment: datetime) -> datetime: ...
@overload
def as_utc(moment: None) -> None: ...
def as_utc(moment: datetime | None) -> datetime | None:
    """A stored time with its zone: SQLite hands timestamps back without one, and every
    stored time is UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


Timestamp = DateTime(timezone=True)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint("balance >= 0", name="balance_not_negative"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    telegram_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    username: Mapped[str | None] = mapped_column(String(64))
    first_name: Mapped[str | None] = mapped_column(String(128))
    language_code: Mapped[str | None] = mapped_column(String(16))
    referral: Mapped[str | None] = mapped_column(String(64))
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    blocked_bot: Mapped[bool] = mapped_column(Boolean, default=False)
    # Blocked by an operator (admin panel): may not create jobs or payments.
    banned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Who invited them (a ref_<invite_code> start link, honoured only when they registered
    # with it), and their own code for /invite, made the first time they ask.
    # (users.id; no foreign key, like ledger.payment_id, so migration 0006 adds plain columns
    # where SQLite would otherwise rebuild users under the foreign keys pointing at it)
    referred_by_id: Mapped[int | None] = mapped_column(Integer, index=True)
    invite_code: Mapped[str | None] = mapped_column(String(16), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class LedgerEntry(Base):
    __tablename__ = "ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)
    payment_id: Mapped[str | None] = mapped_column(String(36))
    actor: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class Preset(Base):
    __tablename__ = "presets"

    slug: Mapped[str] = mapped_column(String(32), primary_key=True)
    title_en: Mapped[str] = mapped_column(String(128))
    title_ru: Mapped[str] = mapped_column(String(128))
    description_en: Mapped[str] = mapped_column(Text, default="")
    description_ru: Mapped[str] = mapped_column(Text, default="")
    # The effective price and switch: the preset file's, unless an operator set their own
    # (operator_*, kept by sync_presets across restarts; None = follow the file).
    price: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    operator_price: Mapped[int | None] = mapped_column(Integer)
    operator_enabled: Mapped[bool | None] = mapped_column(Boolean)
    takes_prompt: Mapped[bool] = mapped_column(Boolean, default=False)
    models: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    workflow: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("user_id", "idempotency_key", name="uq_jobs_user_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    preset_slug: Mapped[str] = mapped_column(ForeignKey("presets.slug"))
    prompt: Mapped[str | None] = mapped_column(Text)
    price: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # sha256 hex of the whole request (preset, prompt, options, every photo's bytes): a replayed
    # Idempotency-Key must carry the same request. None for jobs made before migration 0005.
    request_digest: Mapped[str | None] = mapped_column(String(64))
    # The chosen options with the defaults filled in: {option id: choice id}.
    options: Mapped[dict[str, str]] = mapped_column(JSON, default=dict, server_default="{}")
    status_chat_id: Mapped[int | None] = mapped_column(BigInteger)
    status_message_id: Mapped[int | None] = mapped_column(BigInteger)
    delivery_status: Mapped[str] = mapped_column(String(16), default="pending")
    delivery_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(Timestamp)
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Set when the retention sweep deleted this job's input and result files.
    media_deleted_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Times a ComfyUI died or became unreachable while running this job.
    comfyui_crashes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Inputs and outputs, loaded with the job (one more query for any number of jobs).
    files: Mapped[list[JobFile]] = relationship(
        back_populates="job",
        lazy="selectin",
        cascade="all, delete-orphan",
        order_by="(JobFile.role, JobFile.position)",
    )

    @property
    def inputs(self) -> list[JobFile]:
        """The photos, in the preset's slot order."""
        return sorted((f for f in self.files if f.role == FileRole.INPUT), key=_position)

    @property
    def outputs(self) -> list[JobFile]:
        """What the last successful attempt made, in ComfyUI's order."""
        return sorted((f for f in self.files if f.role == FileRole.OUTPUT), key=_position)


def _position(file: JobFile) -> int:
    return file.position


class FileRole:
    INPUT = "input"
    OUTPUT = "output"


class JobFile(Base):
    """One stored photo a job was given, or one file it made; the bytes live under MEDIA_DIR,
    written by backend.storage.MediaStore only."""

    __tablename__ = "job_files"
    __table_args__ = (
        UniqueConstraint("job_id", "role", "position", name="uq_job_files_job_role_position"),
        CheckConstraint("role IN ('input', 'output')", name="role"),
        CheckConstraint("kind IN ('image', 'animation', 'video')", name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    role: Mapped[str] = mapped_column(String(8))
    # Inputs: the slot's index in contract order; outputs: the output's index.
    position: Mapped[int] = mapped_column(Integer)
    # Inputs: the slot's name; outputs: None.
    slot: Mapped[str | None] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    mime: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(String(300))
    # None only for files stored before migration 0005 (never measured).
    size: Mapped[int | None] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    frames: Mapped[int | None] = mapped_column(Integer)
    # None for a still image.
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    job: Mapped[Job] = relationship(back_populates="files")


class Payment(Base):
    __tablename__ = "payments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    package: Mapped[str] = mapped_column(String(32))
    credits: Mapped[int] = mapped_column(Integer)
    amount: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    payload: Mapped[str] = mapped_column(String(128), unique=True)
    telegram_payment_charge_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    paid_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # When Telegram's pre-checkout for this invoice was approved (a second one is refused).
    precheckout_at: Mapped[datetime | None] = mapped_column(Timestamp)
    refunded_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # An operator's refund of a credited payment: who asked, why, and when it was claimed (one
    # refundStarPayment call at a time); refunded_at is set once the Stars went back.
    refund_claimed_at: Mapped[datetime | None] = mapped_column(Timestamp)
    refund_actor: Mapped[str | None] = mapped_column(String(64))
    refund_reason: Mapped[str | None] = mapped_column(String(500))
    # A period of a subscription (None for a credit package).
    # (subscriptions.id; a plain column for the same reason as users.referred_by_id)
    subscription_id: Mapped[str | None] = mapped_column(String(36), index=True)


class ChargeRefund(Base):
    """A Stars charge Telegram took that cannot be credited, given back with refundStarPayment.

    One row per telegram_payment_charge_id, whoever reports it first; ``claimed_until`` lets one
    caller at a time call Telegram, and ``refunded_at`` is set once (docs/payments.md).
    """

    __tablename__ = "charge_refunds"

    telegram_payment_charge_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    # Who paid (refundStarPayment's user_id) and where and in which language to tell them.
    telegram_id: Mapped[int] = mapped_column(BigInteger)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    language: Mapped[str | None] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(String(128))
    payment_id: Mapped[str | None] = mapped_column(ForeignKey("payments.id"))
    amount: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(8))
    # Why it could not be credited: the backend's error code (payment_closed, ...).
    reason: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    claimed_until: Mapped[datetime | None] = mapped_column(Timestamp)
    error: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    refunded_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Telegram refused the refund for good (not a network error): an operator looks at it.
    failed_at: Mapped[datetime | None] = mapped_column(Timestamp)


class PromoCode(Base):
    """Credits an operator gives away: a code redeemed at most ``max_uses`` times in all and
    once per user, until ``expires_at``."""

    __tablename__ = "promo_codes"
    __table_args__ = (
        CheckConstraint("credits > 0", name="credits_positive"),
        CheckConstraint("uses >= 0 AND uses <= max_uses", name="uses_within_max"),
    )

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    credits: Mapped[int] = mapped_column(Integer)
    max_uses: Mapped[int] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class PromoRedemption(Base):
    __tablename__ = "promo_redemptions"
    __table_args__ = (UniqueConstraint("code", "user_id", name="uq_promo_redemptions_code_user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(ForeignKey("promo_codes.code"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    credits: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class Subscription(Base):
    """A monthly plan paid in Stars; each paid period is a Payment with its subscription_id."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    plan: Mapped[str] = mapped_column(String(32))
    credits: Mapped[int] = mapped_column(Integer)
    amount: Mapped[int] = mapped_column(Integer)
    # The invoice link's payload: every renewal's successful_payment carries it.
    payload: Mapped[str] = mapped_column(String(128), unique=True)
    # pending (link made, not paid) | active | cancelled (runs to its end, not renewed) | expired
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # The first charge's id: what editUserStarSubscription names the subscription by.
    first_charge_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    current_period_end: Mapped[datetime | None] = mapped_column(Timestamp)
    cancelled_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class SupportRequest(Base):
    """A /paysupport request: a user's problem with a payment, for an operator to answer."""

    __tablename__ = "support_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    payment_id: Mapped[str | None] = mapped_column(ForeignKey("payments.id"))
    chat_id: Mapped[int] = mapped_column(BigInteger)
    text: Mapped[str] = mapped_column(Text)
    # open | answered | refunded | closed
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    reply: Mapped[str | None] = mapped_column(Text)
    answered_by: Mapped[str | None] = mapped_column(String(64))
    answered_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class StarReconciliation(Base):
    """One pass over getStarTransactions compared with the payments table."""

    __tablename__ = "star_reconciliations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    transactions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    credited: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    flagged: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Why the pass stopped short (Telegram unreachable, ...); None when it went through.
    error: Mapped[str | None] = mapped_column(String(300))


class StarDiscrepancy(Base):
    """Where Telegram's Star transactions and our payments disagree, once per (kind, charge)."""

    __tablename__ = "star_discrepancies"
    __table_args__ = (
        UniqueConstraint("kind", "telegram_payment_charge_id", name="uq_star_discrepancies_kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # credited_late (Telegram had it, we had not credited it: credited now) |
    # unknown_to_telegram | amount_mismatch | refund_mismatch
    kind: Mapped[str] = mapped_column(String(32))
    telegram_payment_charge_id: Mapped[str] = mapped_column(String(200))
    payment_id: Mapped[str | None] = mapped_column(ForeignKey("payments.id"))
    detail: Mapped[str] = mapped_column(String(500))
    found_by: Mapped[int | None] = mapped_column(ForeignKey("star_reconciliations.id"))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(Timestamp)
    resolved_by: Mapped[str | None] = mapped_column(String(64))
