"""One settings object for every component, read from the environment and `.env`."""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
from pathlib import Path
from urllib.parse import SplitResult, quote, urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line naming the variable."""


class CreditPackage(BaseModel):
    """A top-up package sold for Telegram Stars."""

    id: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")
    # Bounded to fit the payments table's 32-bit columns.
    credits: int = Field(gt=0, le=1_000_000_000)
    stars: int = Field(gt=0, le=1_000_000_000)


class SubscriptionPlan(CreditPackage):
    """A monthly plan sold for Telegram Stars: ``credits`` granted once per paid 30 days (the
    only period Telegram offers)."""


DEFAULT_PACKAGES = [
    CreditPackage(id="small", credits=10, stars=50),
    CreditPackage(id="medium", credits=50, stars=200),
    CreditPackage(id="large", credits=150, stars=500),
]


ADMIN_PASSWORD_MIN_LENGTH = 12

# What a malformed value should look like, for the one-line error.
FORMATS = {
    "database_url": "sqlite:///./data/comfygram.db or postgresql://user:password@host:5432/dbname",
    "redis_url": "redis://[:password@]host:6379/0 (or rediss://, unix:///path/redis.sock)",
    "admin_telegram_ids": "a JSON list of Telegram ids, like [123456789, 987654321]",
    "credit_packages": (
        'a JSON list like [{"id": "small", "credits": 10, "stars": 50}, '
        '{"id": "large", "credits": 150, "stars": 500}]'
    ),
    "subscription_plans": 'a JSON list like [{"id": "monthly", "credits": 100, "stars": 300}]',
}
_DATABASE_SCHEMES = ("sqlite", "sqlite+aiosqlite", "postgres", "postgresql", "postgresql+asyncpg")
_REDIS_SCHEMES = ("redis", "rediss", "unix")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Service-to-service
    api_token: SecretStr | None = None
    backend_url: str = "http://127.0.0.1:8000"
    backend_api_url: str = "http://127.0.0.1:8000"
    backend_host: str = "127.0.0.1"
    backend_port: int = Field(default=8000, ge=1, le=65535)
    # Processes `comfygram backend` serves the API with (uvicorn's --workers); about one per
    # core. `comfygram run` always runs one.
    backend_workers: int = Field(default=1, ge=1, le=64)
    # New jobs each backend process works on at the same time, once their uploads are in
    # (0 = no limit): in a flood of new jobs the first reach the queue first, and the workers'
    # calls wait behind a couple of creations, not behind all of them, while the GPU waits.
    creation_turns: int = Field(default=2, ge=0, le=1000)

    # Storage
    database_url: str = "sqlite+aiosqlite:///./data/comfygram.db"
    media_dir: Path = Path("./data/media")
    auto_migrate: bool = True

    # Redis
    redis_url: str | None = None
    redis_host: str = "127.0.0.1"
    redis_port: int = Field(default=6379, ge=1, le=65535)
    redis_db: int = Field(default=0, ge=0)
    redis_password: SecretStr | None = None
    redis_prefix: str = Field(default="comfygram", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    reconcile_interval_seconds: float = Field(default=30.0, gt=0)
    # A job processing this long with no trace in Redis (its worker died and Redis lost the
    # queue) is queued again; longer than any preset's timeout.
    stale_processing_seconds: float = Field(default=900.0, gt=0)
    # Where `comfygram run` keeps the Redis it starts when none is configured (its AOF, socket).
    embedded_redis_dir: Path = Path("./data/redis")

    # ComfyUI and Telegram
    comfyui_url: str = "http://127.0.0.1:8188"
    bot_token: SecretStr | None = None
    telegram_api_url: str = "https://api.telegram.org"
    webhook_secret: SecretStr | None = None
    # Public HTTPS URL Telegram posts updates to (the backend's /webhook); unset = polling.
    webhook_url: str | None = None
    # Telegram ids allowed to use /stats, /user and /grant.
    admin_telegram_ids: list[int] = Field(default_factory=list)
    # Shared Telegram rate budget (bot and workers): seconds between edits of one chat's
    # messages, and calls per second for the whole bot.
    telegram_edit_interval: float = Field(default=3.0, ge=0)
    telegram_global_rate: int = Field(default=25, ge=1, le=30)

    # Worker
    worker_name: str | None = None
    # A job whose worker stops renewing its lease for this long is taken over by another.
    worker_lease_seconds: float = Field(default=30.0, gt=0)
    # On SIGTERM, how long the running job gets to finish before it is handed back.
    worker_grace_seconds: float = Field(default=30.0, ge=0)
    # How long a finished result stays cached in Redis.
    result_cache_seconds: int = Field(default=3600, ge=0)
    # Base of the exponential backoff between attempts of a job.
    retry_backoff_seconds: float = Field(default=5.0, ge=0)
    # Prompts kept waiting in ComfyUI's own queue behind the one it runs, so it starts the next
    # the moment one ends (0 = submit a job only once the previous one is done).
    comfyui_queue_depth: int = Field(default=2, ge=0, le=16)
    # While the queue holds at most this many jobs (a new one will be taken at once), a new
    # job's photos ride along in Redis for 30 s, so the worker need not fetch them from the
    # backend (0 = never).
    photo_ride_max_jobs: int = Field(default=4, ge=0, le=1000)
    # Older switch for the same thing: false is COMFYUI_QUEUE_DEPTH=0.
    worker_prefetch: bool = True
    # Port of the worker's Prometheus /metrics (0 = off).
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)

    # Business rules
    presets_dir: Path | None = None
    signup_bonus: int = Field(default=3, ge=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    max_active_jobs_per_user: int = Field(default=3, ge=1)
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    # A request's body must have arrived this many seconds after its headers, or it is
    # answered 408 and the connection closed (slow clients must not hold the backend).
    body_timeout_seconds: float = Field(default=60.0, gt=0)
    # Days a job's input and result files are kept after it ends (0 = forever); the job's
    # row stays, marked with when its media went.
    media_retention_days: int = Field(default=30, ge=0, le=36500)
    credit_packages: list[CreditPackage] = Field(default_factory=lambda: list(DEFAULT_PACKAGES))
    # An invoice can be paid for this long after /buy made it, and only while its package is
    # still sold at the same credits and Stars (docs/payments.md).
    payment_invoice_ttl_seconds: float = Field(default=86400.0, gt=0)
    # Monthly plans (docs/payments.md#subscriptions); none by default: nothing is sold monthly
    # until the operator says so.
    subscription_plans: list[SubscriptionPlan] = Field(default_factory=list)
    # Credits a user gets when someone they invited makes a first payment (0 = no referrals).
    referral_bonus: int = Field(default=5, ge=0, le=1_000_000_000)
    # How often the backend compares Telegram's Star transactions with the payments table, and
    # runs the ledger audit (0 = never; `comfygram payments reconcile` and `comfygram audit`
    # still run them by hand).
    stars_reconcile_interval_seconds: float = Field(default=3600.0, ge=0)
    audit_interval_seconds: float = Field(default=86400.0, ge=0)

    # Operator's admin panel at /admin; mounted only when both are set. The ledger names the
    # operator "admin:<username>" (64 characters at most).
    admin_username: str | None = Field(default=None, max_length=58)
    admin_password: SecretStr | None = None
    # Addresses (IPs or CIDR ranges) from which the right admin password is accepted even while
    # the username is locked by failed logins elsewhere: the operator's way in. Empty = none.
    admin_trusted_ips: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1"])

    # The API's documentation at /docs, /redoc and /openapi.json. Unset: off in `comfygram
    # backend`, on in `comfygram run` while it listens on loopback only.
    api_docs: bool | None = None

    # The worker and the bot rewrite this file every few seconds while they run, for
    # `comfygram healthcheck` (the image sets it; unset: no file).
    heartbeat_file: Path | None = None

    # Logging
    log_level: str = "INFO"
    log_json: bool = False

    @field_validator("database_url")
    @classmethod
    def _database_url_supported(cls, value: str) -> str:
        scheme, separator, _ = value.partition("://")
        if not separator:
            raise ValueError("not a URL")
        if scheme.lower() not in _DATABASE_SCHEMES:
            raise ValueError(f"{scheme} is not supported")
        _port_of(urlsplit(value))
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_supported(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        url = urlsplit(value)
        if url.scheme.lower() not in _REDIS_SCHEMES or "://" not in value:
            raise ValueError("no redis:// scheme")
        _port_of(url)
        database = url.path.strip("/") if url.scheme != "unix" else ""
        if database and not database.isdigit():
            raise ValueError(f"the database {database!r} is not a number (0-15)")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret_charset(cls, value: SecretStr | None) -> SecretStr | None:
        # Telegram accepts 1-256 characters of A-Z a-z 0-9 _ - for secret_token.
        if value is not None:
            raw = value.get_secret_value()
            if not raw or len(raw) > 256 or not all(c.isalnum() or c in "_-" for c in raw):
                raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @field_validator("comfyui_url", "backend_url", "backend_api_url", "telegram_api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("not an http(s) URL; use one like http://127.0.0.1:8188")
        _port_of(url)
        return value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("use DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url_https(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL, like https://bot.example.com/webhook")
        return value

    @field_validator("admin_trusted_ips")
    @classmethod
    def _trusted_ips_are_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or range, like 10.0.0.5 or 10.0.0.0/8"
                ) from None
        return value

    @field_validator(
        "api_token",
        "bot_token",
        "redis_password",
        "webhook_secret",
        "admin_username",
        "admin_password",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def redis_configured(self) -> bool:
        """Whether REDIS_URL or any of REDIS_HOST/PORT/DB/PASSWORD is set (not empty). When
        none is, `comfygram run` embeds a Redis and the components alone refuse to start."""
        if self.redis_url or self.redis_password is not None:
            return True
        return bool(self.model_fields_set & {"redis_host", "redis_port", "redis_db"})

    def require_shared_redis(self, command: str) -> None:
        """Stop with one line when `command` (worker, bot, backend) has no Redis to share."""
        if not self.redis_configured:
            raise ConfigError(
                f"REDIS_URL is not set: comfygram {command} shares the queue with the other "
                "processes through one Redis; set REDIS_URL to it (only comfygram run, all on "
                "one machine, starts a Redis of its own)"
            )

    @property
    def redis_dsn(self) -> str:
        """REDIS_URL when given, else one built from REDIS_HOST/PORT/DB/PASSWORD."""
        if self.redis_url:
            return self.redis_url
        auth = ""
        if self.redis_password is not None:
            auth = f":{quote(self.redis_password.get_secret_value(), safe='')}@"
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"

    @property
    def database_dsn(self) -> str:
        """DATABASE_URL with the async driver filled in for plain postgres:// or sqlite:// URLs."""
        url = self.database_url
        for plain, driver in (
            ("postgres://", "postgresql+asyncpg://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(plain):
                return driver + url[len(plain) :]
        return url

    def package(self, package_id: str) -> CreditPackage | None:
        return next((p for p in self.credit_packages if p.id == package_id), None)

    def plan(self, plan_id: str) -> SubscriptionPlan | None:
        return next((p for p in self.subscription_plans if p.id == plan_id), None)

    def secrets(self) -> list[str]:
        """Every secret value, so logging can redact them."""
        values = [
            self.api_token,
            self.bot_token,
            self.redis_password,
            self.webhook_secret,
            self.admin_password,
        ]
        return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]

    def require(self, *names: str) -> None:
        """Stop with one line naming the first of `names` that is not set."""
        for name in names:
            if getattr(self, name) in (None, ""):
                raise ConfigError(f"{name.upper()} is not set: add it to the environment or .env")

    @property
    def admin_enabled(self) -> bool:
        """Whether the backend mounts the admin panel: ADMIN_USERNAME and ADMIN_PASSWORD set."""
        return bool(self.admin_username) and self.admin_password is not None

    def check_admin_password(self) -> None:
        """Stop with one line when ADMIN_PASSWORD is too short or is the API token."""
        if self.admin_password is None:
            return
        password = self.admin_password.get_secret_value()
        if len(password) < ADMIN_PASSWORD_MIN_LENGTH:
            raise ConfigError(
                f"ADMIN_PASSWORD is too short: use at least {ADMIN_PASSWORD_MIN_LENGTH} "
                "characters (python3 -c 'import secrets; print(secrets.token_urlsafe(18))')"
            )
        token = self.api_token.get_secret_value() if self.api_token else ""
        if token and hmac.compare_digest(password.encode(), token.encode()):
            raise ConfigError("ADMIN_PASSWORD must not be the API_TOKEN: give the panel its own")


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning pydantic's report into one line naming the variable and,
    where it helps, the accepted format."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        reason = error["msg"].removeprefix("Value error, ")
        if len(error["loc"]) > 1:  # inside a JSON value: say where
            reason = f"{'.'.join(str(part) for part in error['loc'][1:])}: {reason}"
        raise ConfigError(_malformed(field, reason) + _source(field, overrides)) from None
    except SettingsError as exc:  # a list or object setting that is not JSON
        found = re.search(r'field "(\w+)"', str(exc))
        field = found[1] if found else ""
        raise ConfigError(_malformed(field, "not JSON") + _source(field, overrides)) from None


def _source(field: str, overrides: dict[str, object]) -> str:
    """Where a bad value came from, so the operator knows which file or variable to fix."""
    if not field or field in overrides:
        return ""
    if field.upper() in (name.upper() for name in os.environ):
        return " (set in the environment)"
    env_file = overrides.get("_env_file", Settings.model_config.get("env_file"))
    if isinstance(env_file, str | Path) and Path(env_file).is_file():
        return f" (set in {Path(env_file).resolve()})"
    return ""


def _port_of(url: SplitResult) -> int | None:
    try:
        return url.port
    except ValueError:
        raise ValueError("the port is not a number") from None


def _malformed(field: str, reason: str) -> str:
    hint = f": use {FORMATS[field]}" if field in FORMATS else ""
    return f"{field.upper() or 'a setting'} is malformed ({reason}){hint}"
