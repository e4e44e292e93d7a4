"""Bad input to every backend route: the documented 4xx, a clear JSON error, nothing changed.

Every error body is {"error": {"code": "<snake_case>", "message": "<sentence>"}}. Each case
snapshots the database (row counts and the fields that matter), the media directory and the
Redis queue before and after the bad request and demands they are equal.

The tables below are the documentation of the API's error contract.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from comfygram.backend import retention
from comfygram.backend.models import ChargeRefund, Job, JobFile, LedgerEntry, Payment, User
from comfygram.backend.storage import MediaStore
from comfygram.settings import Settings
from tests import images
from tests.conftest import WEBHOOK_SECRET
from tests.helpers import API_TOKEN, backend_client, create_job, grant, register
from tests.rich_presets import write_rich_presets

Kwargs = dict[str, Any]
PNG = images.png()
NOT_AN_IMAGE = b"hello, not an image"
_SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_DROP = object()  # a field value meaning "leave this field out of the request"
WORLD_JOB_KEY = "world-job"  # the Idempotency-Key the world's job was created with
UNKNOWN_JOB = "00000000-0000-0000-0000-000000000000"
FORM_ENCODED = "application/x-www-form-urlencoded"


# -- the world every case starts from ------------------------------------------------------


@dataclass(frozen=True)
class World:
    """Ids of real rows, so routes get past "not found" to the check under test."""

    telegram_id: int
    job_id: str  # queued, preset bw, price 1, created with Idempotency-Key WORLD_JOB_KEY
    payment_id: str  # pending, package small: 10 credits for 50 XTR
    payload: str
    max_upload_bytes: int
    sessions: Any  # the app's sessionmaker, for setups that act as the operator
    media_dir: Path


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """Plus the test presets of tests/rich_presets.py: `duo` takes two photos, a prompt and
    options; `clip` makes a video."""
    settings.presets_dir = write_rich_presets(tmp_path / "presets")
    return settings


@pytest.fixture
async def world(app: FastAPI, api: httpx.AsyncClient, settings: Settings) -> World:
    """User 1001 (balance 3 - 1 = 2), one queued bw job and one pending `small` payment."""
    user = await register(api, 1001)
    assert user["balance"] == 3
    job = await create_job(api, 1001, "bw", key=WORLD_JOB_KEY)
    assert job.status_code == 201, job.text
    payment = await api.post("/api/payments/create", json={"telegram_id": 1001, "package": "small"})
    assert payment.status_code == 201, payment.text
    invoice = payment.json()
    assert (invoice["amount"], invoice["credits"], invoice["currency"]) == (50, 10, "XTR")
    return World(
        telegram_id=1001,
        job_id=job.json()["id"],
        payment_id=invoice["payment_id"],
        payload=invoice["payload"],
        max_upload_bytes=settings.max_upload_bytes,
        sessions=app.state.sessions,
        media_dir=settings.media_dir,
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Like `api`, but an unhandled exception comes back as the 500 a real server would send."""
    async with backend_client(app, raise_app_exceptions=False) as http:
        yield http


async def snapshot(app: FastAPI) -> dict[str, Any]:
    """Everything a rejected request must leave alone: rows, balances, states, files, queue."""
    async with app.state.sessions() as session:
        counts = {
            model.__tablename__: await session.scalar(select(func.count()).select_from(model))
            for model in (User, Job, JobFile, LedgerEntry, Payment, ChargeRefund)
        }
        users = await session.execute(
            select(User.telegram_id, User.balance, User.blocked_bot).order_by(User.telegram_id)
        )
        jobs = await session.execute(
            select(
                Job.id,
                Job.status,
                Job.attempts,
                Job.delivery_status,
                Job.status_message_id,
            ).order_by(Job.id)
        )
        files = await session.execute(
            select(JobFile.job_id, JobFile.role, JobFile.position, JobFile.path).order_by(
                JobFile.job_id, JobFile.role, JobFile.position
            )
        )
        payments = await session.execute(
            select(
                Payment.id,
                Payment.status,
                Payment.telegram_payment_charge_id,
                Payment.precheckout_at,
            ).order_by(Payment.id)
        )
        state: dict[str, Any] = {
            "counts": counts,
            "users": [tuple(row) for row in users],
            "jobs": [tuple(row) for row in jobs],
            "files": [tuple(row) for row in files],
            "payments": [tuple(row) for row in payments],
        }
    media = app.state.settings.media_dir
    state["media"] = sorted(
        str(path.relative_to(media)) for path in media.rglob("*") if path.is_file()
    )
    state["queue"] = await app.state.queue.length()
    state["workers"] = [w.model_dump() for w in await app.state.workers.live()]
    return state


def assert_error(response: httpx.Response, status: int, code: str | None) -> None:
    """The status, and the one error shape with a snake_case code and a real sentence."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert _SNAKE_CASE.match(error["code"]), error
    if code is not None:
        assert error["code"] == code, error
    assert isinstance(error["message"], str) and len(error["message"].strip()) > 5, error


async def send(client: httpx.AsyncClient, method: str, path: str, kwargs: Kwargs) -> httpx.Response:
    return await client.request(method, path, **kwargs)


async def test_snapshot_sees_what_a_good_request_changes(
    app: FastAPI, api: httpx.AsyncClient, world: World
) -> None:
    """The check the tables rely on is not blind: an accepted job shows up everywhere."""
    before = await snapshot(app)
    response = await create_job(api, world.telegram_id, "bw")
    assert response.status_code == 201, response.text
    after = await snapshot(app)
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {"counts", "users", "jobs", "files", "media", "queue"}


# -- request builders: a valid request, with the fields a case overrides ------------------

Build = Callable[[World], Kwargs]


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in {**base, **overrides}.items() if v is not _DROP}


def nothing(_world: World) -> Kwargs:
    return {}


def body(**fields: Any) -> Build:
    """This exact JSON body."""
    return lambda _world: {"json": fields}


def raw(content: bytes, content_type: str = "application/json") -> Build:
    """These exact bytes as the body."""
    return lambda _world: {"content": content, "headers": {"content-type": content_type}}


def secret(value: str) -> Build:
    """Telegram's webhook secret header."""
    return lambda _world: {"headers": {"X-Telegram-Bot-Api-Secret-Token": value}}


def register_body(**overrides: Any) -> Build:
    """Registering the new user 1002, which would add a row if it got through."""
    return lambda _world: {"json": _merge({"telegram_id": 1002, "username": "new"}, overrides)}


def credits_body(**overrides: Any) -> Build:
    base = {"amount": 5, "reason": "goodwill", "actor": "ops", "idempotency_key": "adj-1"}
    return lambda _world: {"json": _merge(base, overrides)}


def promo_body(**overrides: Any) -> Build:
    """Creating promo code NEW1 (a row if it got through)."""
    base = {"code": "NEW1", "credits": 5, "max_uses": 3, "actor": "ops"}
    return lambda _world: {"json": _merge(base, overrides)}


def status_body(**overrides: Any) -> Build:
    return lambda _world: {"json": _merge({"status": "processing", "worker": "w1"}, overrides)}


def worker_body(**overrides: Any) -> Build:
    base = {
        "comfyui_url": "http://gpu-1:8188",
        "healthy": True,
        "runnable": ["bw"],
        "problems": {},
        "ttl_seconds": 30,
    }
    return lambda _world: {"json": _merge(base, overrides)}


def status_message_body(**overrides: Any) -> Build:
    return lambda _world: {"json": _merge({"chat_id": 1001, "message_id": 42}, overrides)}


def payment_body(**overrides: Any) -> Build:
    return lambda world: {
        "json": _merge({"telegram_id": world.telegram_id, "package": "small"}, overrides)
    }


def precheck_body(**overrides: Any) -> Build:
    def build(world: World) -> Kwargs:
        base = {"payload": world.payload, "total_amount": 50, "currency": "XTR"}
        return {"json": _merge(base, overrides)}

    return build


def confirm_body(**overrides: Any) -> Build:
    def build(world: World) -> Kwargs:
        base = {
            "payload": world.payload,
            "total_amount": 50,
            "currency": "XTR",
            "telegram_payment_charge_id": "charge-B",
        }
        return {"json": _merge(base, overrides)}

    return build


def refund_body(**overrides: Any) -> Build:
    """A charge of the world's invoice reported for a refund by user 1001."""

    def build(world: World) -> Kwargs:
        base = {
            "payload": world.payload,
            "total_amount": 50,
            "currency": "XTR",
            "telegram_payment_charge_id": "charge-B",
            "telegram_id": 1001,
            "chat_id": 1001,
            "language": "en",
        }
        return {"json": _merge(base, overrides)}

    return build


def oversized_png(size: int) -> bytes:
    """A real PNG's opening bytes padded to exactly `size` bytes."""
    prefix = images.png()
    return prefix + b"\0" * (size - len(prefix))


def upload(
    file: Callable[[World], bytes] | bytes | None = PNG, *, key: str | None = None, **fields: Any
) -> Build:
    """A multipart /api/jobs/create (or result) upload; `file=None` sends no file."""

    def build(world: World) -> Kwargs:
        data = file(world) if callable(file) else file
        form = _merge({"telegram_id": str(world.telegram_id), "preset": "bw"}, fields)
        kwargs: Kwargs = {"data": {k: str(v) for k, v in form.items()}}
        if data is not None:
            kwargs["files"] = {"image": ("photo.png", data, "image/png")}
        if key is not None:
            kwargs["headers"] = {"Idempotency-Key": key}
        return kwargs

    return build


def outputs(*files: Callable[[World], bytes] | bytes) -> Build:
    """A multipart PUT /api/jobs/{id}/outputs: one `file` field per output, in order."""

    def build(world: World) -> Kwargs:
        parts = [f(world) if callable(f) else f for f in files]
        return {
            "files": [("file", (f"out-{i}.png", data, "image/png")) for i, data in enumerate(parts)]
        }

    return build


def photos(*files: Callable[[World], bytes] | bytes, **fields: Any) -> Build:
    """A /api/jobs/create with one `image` field per photo (slot order) and these fields."""

    def build(world: World) -> Kwargs:
        form = _merge({"telegram_id": str(world.telegram_id), "preset": "duo"}, fields)
        parts = [f(world) if callable(f) else f for f in files]
        return {
            "data": {k: str(v) for k, v in form.items()},
            "files": [("image", (f"p{i}.png", d, "image/png")) for i, d in enumerate(parts)],
        }

    return build


def truncated_jpeg(_world: World) -> bytes:
    """The first half of a 256x256 JPEG."""
    data = images.jpeg(256, 256)
    return data[: len(data) // 2]


def png_bomb(_world: World) -> bytes:
    """A 20000x20000 PNG (400 megapixels) of about 50 KB."""
    return images.png_bomb()


def damaged_png(_world: World) -> bytes:
    """A valid 4000x4000 PNG header over noise: only a full decode finds the damage."""
    return images.damaged_png()


def first_bytes(kind: str, count: int) -> Callable[[World], bytes]:
    """The first `count` bytes of a good JPEG, PNG or WebP: a damaged header."""
    make = {"jpeg": lambda: images.jpeg(256, 256), "png": images.png, "webp": images.webp}[kind]
    return lambda _world: make()[:count]


DAMAGED_HEADERS = (
    [("jpeg", n) for n in (3, 30, 64, 100, 160, 200, 300, 346)]
    + [("png", n) for n in (8, 16, 20, 33, 40)]
    + [("webp", n) for n in (12, 16, 20, 26, 30, 40)]
)


def streamed(size: int, content_type: str = "application/json", opening: bytes = b"") -> Build:
    """A body of `size` bytes sent chunked, with no Content-Length to check up front."""

    async def chunks() -> AsyncIterator[bytes]:
        yield opening
        for start in range(0, size, 64 * 1024):
            yield b"a" * min(64 * 1024, size - start)

    return lambda _world: {"content": chunks(), "headers": {"content-type": content_type}}


def over_limit(extra: int) -> Callable[[World], bytes]:
    """A file `extra` bytes over MAX_UPLOAD_BYTES."""
    return lambda world: oversized_png(world.max_upload_bytes + extra)


def over_limit_result(world: World) -> bytes:
    """An output one byte over its limit (4 x MAX_UPLOAD_BYTES)."""
    return oversized_png(4 * world.max_upload_bytes + 1)


INVALID = "invalid_request"  # any request FastAPI's validation refuses
Row = tuple[str, Build, int, str | None]  # (case id, request, expected status, expected code)


def route(method: str, path: str, *rows: Row) -> list[Any]:
    """The table rows of one route; `path` may name {telegram_id}, {job_id} or {slug}."""
    return [
        pytest.param(method, path, build, status, code, id=name)
        for name, build, status, code in rows
    ]


def params(**values: Any) -> Build:
    """This query string."""
    return lambda _world: {"params": values}


# -- routes and their service-token check ---------------------------------------------------

# Every /api route with a request that would succeed (or at least do something) with the token.
API_ROUTES: list[tuple[str, str, Build]] = [
    ("POST", "/api/users/register", register_body()),
    ("GET", "/api/users/by-telegram-id/{telegram_id}", nothing),
    ("POST", "/api/users/by-telegram-id/{telegram_id}/credits", credits_body()),
    ("GET", "/api/presets", nothing),
    ("GET", "/api/presets/{slug}", nothing),
    ("POST", "/api/jobs/create", upload()),
    ("GET", "/api/jobs", lambda w: {"params": {"telegram_id": w.telegram_id}}),
    ("GET", "/api/jobs/limits", nothing),
    ("GET", "/api/jobs/{job_id}", nothing),
    ("POST", "/api/jobs/{job_id}/start", body(worker="w1")),
    ("POST", "/api/jobs/{job_id}/status", status_body()),
    ("POST", "/api/jobs/{job_id}/refund", nothing),
    ("GET", "/api/jobs/{job_id}/input", nothing),
    ("GET", "/api/jobs/{job_id}/inputs/{index}", nothing),
    ("PUT", "/api/jobs/{job_id}/outputs", outputs(PNG)),
    ("GET", "/api/jobs/{job_id}/outputs/{index}", nothing),
    ("PUT", "/api/jobs/{job_id}/result", upload(PNG)),
    ("GET", "/api/jobs/{job_id}/result", nothing),
    ("POST", "/api/jobs/{job_id}/delivery", body(status="delivered")),
    ("POST", "/api/jobs/{job_id}/status-message", status_message_body()),
    ("POST", "/api/jobs/{job_id}/comfyui-crash", body(seen=0)),
    ("POST", "/api/payments/create", payment_body()),
    ("POST", "/api/payments/precheck", precheck_body()),
    ("POST", "/api/payments/confirm", confirm_body()),
    ("POST", "/api/payments/refunds", refund_body()),
    ("GET", "/api/payments/refunds", nothing),
    ("POST", "/api/payments/refunds/{charge_id}/claim", nothing),
    ("POST", "/api/payments/refunds/{charge_id}/result", body(outcome="retry")),
    (
        "POST",
        "/api/subscriptions/create",
        lambda w: {"json": {"telegram_id": w.telegram_id, "plan": "monthly"}},
    ),
    ("GET", "/api/subscriptions", lambda w: {"params": {"telegram_id": w.telegram_id}}),
    (
        "POST",
        "/api/subscriptions/{subscription_id}/cancel",
        lambda w: {"json": {"telegram_id": w.telegram_id, "cancelled": True}},
    ),
    ("PATCH", "/api/users/by-telegram-id/{telegram_id}", body(language_code="ru")),
    ("GET", "/api/stats", nothing),
    ("PUT", "/api/workers/{name}", worker_body()),
    ("GET", "/api/workers", nothing),
    ("GET", "/api/stats/run-times", nothing),
    ("GET", "/api/stats/queue", nothing),
    ("POST", "/api/promos", promo_body()),
    ("GET", "/api/promos", nothing),
    ("POST", "/api/promos/redeem", body(telegram_id=1001, code="NOPE")),
    ("POST", "/api/promos/{code}/disable", body(actor="ops")),
    ("POST", "/api/referrals/invite", body(telegram_id=1001)),
    ("GET", "/api/payments/{ref}/refund", nothing),
    ("POST", "/api/payments/{ref}/refund", body(reason="asked", actor="ops")),
    ("POST", "/api/payments/refunded", refund_body()),
    ("GET", "/api/payments/recent", lambda w: {"params": {"telegram_id": w.telegram_id}}),
    (
        "POST",
        "/api/payments/support",
        lambda w: {"json": {"telegram_id": w.telegram_id, "chat_id": 1, "text": "help"}},
    ),
]

BAD_AUTHORIZATION: list[str | None] = [
    None,  # no Authorization header at all
    "Bearer wrong-token",
    "Bearer ",
    "Basic " + base64.b64encode(f"ops:{API_TOKEN}".encode()).decode(),
    API_TOKEN,  # the right token without a scheme
]


def _fill(path: str, world: World) -> str:
    return path.format(
        telegram_id=world.telegram_id,
        slug="bw",
        job_id=world.job_id,
        name="gpu-1",
        charge_id="charge-B",
        ref="charge-B",
        index=0,
        subscription_id="00000000-0000-0000-0000-000000000000",
        code="NOPE",
    )


def test_auth_table_lists_every_api_route(app: FastAPI) -> None:
    """A new /api route must be added to API_ROUTES, so its token check is tested."""
    served = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/api")
        for method in operations
    }
    assert served == {(method, path) for method, path, _ in API_ROUTES}


@pytest.mark.parametrize(
    ("method", "path", "build"), API_ROUTES, ids=[f"{m} {p}" for m, p, _ in API_ROUTES]
)
async def test_api_routes_need_the_service_token(
    app: FastAPI, client: httpx.AsyncClient, world: World, method: str, path: str, build: Build
) -> None:
    """No header, a wrong token, an empty one, Basic or no scheme: 401 `unauthorized`."""
    before = await snapshot(app)
    async with backend_client(app, token=None, raise_app_exceptions=False) as anonymous:
        for authorization in BAD_AUTHORIZATION:
            kwargs = build(world)
            if authorization is not None:
                kwargs["headers"] = {**kwargs.get("headers", {}), "Authorization": authorization}
            response = await send(anonymous, method, _fill(path, world), kwargs)
            assert_error(response, 401, "unauthorized")
            assert response.headers.get("www-authenticate") == "Bearer"
    assert await snapshot(app) == before

    # The control: the same request with the token gets past the check.
    response = await send(client, method, _fill(path, world), build(world))
    assert response.status_code not in (401, 403, 500), response.text


# -- the error contract, route by route -----------------------------------------------------

# NUL characters (PostgreSQL cannot store them in text) are refused on both databases: the
# "-nul" rows. A 400 with code None is a body the framework cannot even parse.
CASES = [
    # ---- Telegram webhook: the secret header
    *route(
        "POST",
        "/webhook",
        ("webhook-no-secret", nothing, 401, "unauthorized"),
        ("webhook-wrong-secret", secret("wrong_secret"), 401, "unauthorized"),
        ("webhook-secret-plus-one", secret(WEBHOOK_SECRET + "x"), 401, "unauthorized"),
    ),
    # ---- users
    *route(
        "POST",
        "/api/users/register",
        ("register-missing-telegram-id", register_body(telegram_id=_DROP), 422, INVALID),
        ("register-telegram-id-0", register_body(telegram_id=0), 422, INVALID),
        ("register-telegram-id-negative", register_body(telegram_id=-5), 422, INVALID),
        ("register-telegram-id-2**63", register_body(telegram_id=2**63), 422, INVALID),
        ("register-telegram-id-string", register_body(telegram_id="123"), 422, INVALID),
        ("register-telegram-id-float", register_body(telegram_id=1.5), 422, INVALID),
        ("register-telegram-id-bool", register_body(telegram_id=True), 422, INVALID),
        ("register-telegram-id-null", register_body(telegram_id=None), 422, INVALID),
        ("register-username-65-chars", register_body(username="u" * 65), 422, INVALID),
        ("register-first-name-129-chars", register_body(first_name="f" * 129), 422, INVALID),
        ("register-username-number", register_body(username=12345), 422, INVALID),
        ("register-unknown-field", register_body(is_admin=True), 422, INVALID),
        ("register-not-json", raw(b"telegram_id=1002"), 422, INVALID),
        ("register-json-array", raw(b"[1002]"), 422, INVALID),
        ("register-form-encoded", raw(b"telegram_id=1002", FORM_ENCODED), 422, INVALID),
        (
            "register-lone-surrogate",
            raw(b'{"telegram_id":1002,"username":"\\ud800"}'),
            422,
            INVALID,
        ),
        ("register-empty-body", nothing, 422, INVALID),
        ("register-username-nul", register_body(username="a\x00b"), 422, INVALID),
        ("register-invalid-utf8", raw(b'{"telegram_id":1002,"username":"\xff"}'), 400, None),
        ("register-streamed-over-1-mib", streamed(1024 * 1024 + 1), 413, "file_too_large"),
    ),
    *route(
        "GET", "/api/users/by-telegram-id/999", ("user-unknown", nothing, 404, "user_not_found")
    ),
    *[
        pytest.param(
            "GET", f"/api/users/by-telegram-id/{bad}", nothing, 422, INVALID, id=f"user-id-{bad}"
        )
        for bad in ["abc", "-1", "0", "99999999999999999999999", "1.5"]
    ],
    *route(
        "POST",
        "/api/users/by-telegram-id/{telegram_id}/credits",
        ("credits-amount-0", credits_body(amount=0), 422, INVALID),
        ("credits-amount-string", credits_body(amount="5"), 422, INVALID),
        ("credits-amount-10**9", credits_body(amount=10**9), 422, INVALID),
        ("credits-amount-minus-10**9", credits_body(amount=-(10**9)), 422, INVALID),
        ("credits-amount-2**63", credits_body(amount=2**63), 422, INVALID),
        ("credits-amount-2**64", credits_body(amount=2**64), 422, INVALID),
        ("credits-amount-minus-2**63", credits_body(amount=-(2**63)), 422, INVALID),
        ("credits-amount-float", credits_body(amount=2.0), 422, INVALID),
        ("credits-missing-actor", credits_body(actor=_DROP), 422, INVALID),
        ("credits-empty-reason", credits_body(reason=""), 422, INVALID),
        ("credits-missing-idempotency-key", credits_body(idempotency_key=_DROP), 422, INVALID),
        ("credits-unknown-field", credits_body(balance=100), 422, INVALID),
        ("credits-idempotency-key-nul", credits_body(idempotency_key="adj-\x00"), 422, INVALID),
        ("credits-below-zero", credits_body(amount=-100), 402, "insufficient_credits"),
    ),
    *route(
        "POST",
        "/api/users/by-telegram-id/999/credits",
        ("credits-unknown-user", credits_body(), 404, "user_not_found"),
    ),
    *route(
        "POST",
        "/api/users/by-telegram-id/abc/credits",
        ("credits-user-id-abc", credits_body(), 422, INVALID),
    ),
    *route(
        "PATCH",
        "/api/users/by-telegram-id/{telegram_id}",
        ("patch-user-empty-body", body(), 422, INVALID),
        ("patch-user-language-null", body(language_code=None), 422, INVALID),
        ("patch-user-blocked-null", body(blocked_bot=None), 422, INVALID),
        ("patch-user-language-word", body(language_code="english"), 422, INVALID),
        ("patch-user-language-nul", body(language_code="r\x00u"), 422, INVALID),
        ("patch-user-language-17-chars", body(language_code="en-" + "x" * 14), 422, INVALID),
        ("patch-user-blocked-string", body(blocked_bot="yes"), 422, INVALID),
        ("patch-user-unknown-field", body(balance=100), 422, INVALID),
        ("patch-user-not-json", raw(b"blocked_bot=true", FORM_ENCODED), 422, INVALID),
    ),
    *route(
        "PATCH",
        "/api/users/by-telegram-id/999",
        ("patch-user-unknown", body(blocked_bot=True), 404, "user_not_found"),
    ),
    *route(
        "PATCH",
        "/api/users/by-telegram-id/0",
        ("patch-user-id-0", body(blocked_bot=True), 422, INVALID),
    ),
    # ---- worker heartbeats
    *route(
        "PUT",
        "/api/workers/gpu-1",
        ("worker-missing-url", worker_body(comfyui_url=_DROP), 422, INVALID),
        ("worker-healthy-string", worker_body(healthy="yes"), 422, INVALID),
        ("worker-ttl-0", worker_body(ttl_seconds=0), 422, INVALID),
        ("worker-ttl-a-day", worker_body(ttl_seconds=86400), 422, INVALID),
        ("worker-runnable-not-list", worker_body(runnable="bw"), 422, INVALID),
        ("worker-url-nul", worker_body(comfyui_url="http://gpu\x00"), 422, INVALID),
        ("worker-unknown-field", worker_body(vram=24), 422, INVALID),
        ("worker-not-json", raw(b"healthy=true", FORM_ENCODED), 422, INVALID),
    ),
    *route("PUT", "/api/workers/a%20b", ("worker-name-space", worker_body(), 422, INVALID)),
    *route(
        "PUT", "/api/workers/" + "w" * 101, ("worker-name-101-chars", worker_body(), 422, INVALID)
    ),
    # ---- presets
    *route("GET", "/api/presets/nope", ("preset-unknown", nothing, 404, "preset_not_found")),
    *route("GET", "/api/presets/%00", ("preset-nul", nothing, 404, "preset_not_found")),
    # ---- POST /api/jobs/create (multipart; user 1001 has 2 credits and 1 active job)
    *route(
        "POST",
        "/api/jobs/create",
        ("create-unknown-user", upload(telegram_id=999), 404, "user_not_found"),
        ("create-unknown-preset", upload(preset="nope"), 404, "preset_not_found"),
        ("create-preset-nul", upload(preset="b\x00w"), 404, "preset_not_found"),
        ("create-telegram-id-abc", upload(telegram_id="abc"), 422, INVALID),
        ("create-telegram-id-0", upload(telegram_id=0), 422, INVALID),
        ("create-telegram-id-2**63", upload(telegram_id=2**63), 422, INVALID),
        ("create-missing-telegram-id", upload(telegram_id=_DROP), 422, INVALID),
        ("create-missing-preset", upload(preset=_DROP), 422, INVALID),
        ("create-preset-33-chars", upload(preset="p" * 33), 422, INVALID),
        ("create-prompt-1001-chars", upload(preset="edit", prompt="p" * 1001), 422, INVALID),
        ("create-prompt-nul", upload(preset="edit", prompt="sky\x00"), 422, INVALID),
        ("create-idempotency-key-129-chars", upload(key="k" * 129), 422, INVALID),
        ("create-missing-image", upload(None), 422, "photo_missing"),
        ("create-image-as-text-field", upload(None, image="hello"), 422, INVALID),
        ("create-json-not-multipart", body(telegram_id=1001, preset="bw"), 422, INVALID),
        (
            "create-multipart-no-boundary",
            raw(b"telegram_id=1001", "multipart/form-data"),
            400,
            None,
        ),
        ("create-not-an-image", upload(NOT_AN_IMAGE), 415, "unsupported_image"),
        ("create-gif", upload(images.gif()), 415, "unsupported_image"),
        ("create-animated-gif", upload(images.animated("GIF")), 415, "unsupported_image"),
        ("create-multi-frame-tiff", upload(images.animated("TIFF")), 415, "unsupported_image"),
        *(
            (
                f"create-{kind}-first-{count}-bytes",
                upload(first_bytes(kind, count)),
                422,
                "bad_image",
            )
            for kind, count in DAMAGED_HEADERS
        ),
        ("create-damaged-png", upload(damaged_png), 422, "bad_image"),
        # The cheap refusals come before the photo is decoded.
        ("create-damaged-png-unknown-user", upload(damaged_png, telegram_id=999), 404, None),
        ("create-damaged-png-unknown-preset", upload(damaged_png, preset="nope"), 404, None),
        (
            "create-damaged-png-prompt-for-bw",
            upload(damaged_png, prompt="make it pop"),
            422,
            "prompt_not_accepted",
        ),
        (
            "create-damaged-png-edit-costs-10-has-2",
            upload(damaged_png, preset="edit", prompt="snow"),
            402,
            "insufficient_credits",
        ),
        ("create-empty-file", upload(b""), 422, "bad_image"),
        ("create-truncated-jpeg", upload(truncated_jpeg), 422, "bad_image"),
        ("create-20000x20000-png-bomb", upload(png_bomb), 422, "bad_image"),
        ("create-one-byte-over-limit", upload(over_limit(1)), 413, "file_too_large"),
        ("create-body-refused-unread", upload(over_limit(128 * 1024)), 413, "file_too_large"),
        (
            # The body limit is MAX_UPLOAD_BYTES (2 MB here) per photo of the preset that takes
            # the most (at most 4): a body over 8 MB is cut off as it arrives.
            "create-streamed-over-limit",
            streamed(
                8 * 1024 * 1024 + 256 * 1024,
                "multipart/form-data; boundary=x",
                b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n',
            ),
            413,
            "file_too_large",
        ),
        ("create-prompt-for-bw", upload(prompt="make it pop"), 422, "prompt_not_accepted"),
        ("create-edit-without-prompt", upload(preset="edit"), 422, "prompt_required"),
        ("create-edit-blank-prompt", upload(preset="edit", prompt="   "), 422, "prompt_required"),
        (
            "create-edit-costs-10-has-2",
            upload(preset="edit", prompt="snow"),
            402,
            "insufficient_credits",
        ),
        (
            "create-key-reused-other-preset",
            upload(preset="sharpen", key=WORLD_JOB_KEY),
            409,
            "idempotency_key_reused",
        ),
        (
            "create-key-reused-other-photo",
            upload(images.jpeg(), key=WORLD_JOB_KEY),
            409,
            "idempotency_key_reused",
        ),
        (
            "create-key-reused-with-options",
            upload(key=WORLD_JOB_KEY, options='{"count": "2"}'),
            422,
            "unknown_option",
        ),
        # ---- photo slots and options (the test preset `duo`: slots person and place, options
        # count 2|4 and frame none|gold, an optional prompt)
        ("create-duo-one-photo", photos(PNG), 422, "photo_missing"),
        ("create-duo-three-photos", photos(PNG, PNG, PNG), 422, "too_many_photos"),
        ("create-bw-two-photos", photos(PNG, PNG, preset="bw"), 422, "too_many_photos"),
        ("create-five-photos", photos(*[PNG] * 5), 422, "too_many_photos"),
        (
            "create-duo-unknown-option",
            photos(PNG, PNG, options='{"size": "xl"}'),
            422,
            "unknown_option",
        ),
        (
            "create-duo-unknown-choice",
            photos(PNG, PNG, options='{"count": "3"}'),
            422,
            "unknown_choice",
        ),
        ("create-bw-option", upload(options='{"count": "2"}'), 422, "unknown_option"),
        ("create-options-not-json", photos(PNG, PNG, options="{count"), 422, "bad_options"),
        ("create-options-a-list", photos(PNG, PNG, options='["4"]'), 422, "bad_options"),
        (
            "create-options-a-number",
            photos(PNG, PNG, options='{"count": 4}'),
            422,
            "bad_options",
        ),
        ("create-options-nul", photos(PNG, PNG, options='{"count": "\x00"}'), 422, INVALID),
        ("create-options-2001-chars", photos(PNG, PNG, options="x" * 2001), 422, INVALID),
        (
            "create-duo-second-photo-not-an-image",
            photos(PNG, NOT_AN_IMAGE),
            415,
            "unsupported_image",
        ),
        ("create-duo-second-photo-damaged", photos(PNG, damaged_png), 422, "bad_image"),
        (
            "create-duo-second-photo-over-limit",
            photos(PNG, over_limit(1)),
            413,
            "file_too_large",
        ),
        # Cheap first: a count or an option that does not fit is refused before any decode.
        ("create-duo-one-damaged-photo", photos(damaged_png), 422, "photo_missing"),
        (
            "create-duo-unknown-choice-damaged-photo",
            photos(PNG, damaged_png, options='{"count": "9"}'),
            422,
            "unknown_choice",
        ),
    ),
    # ---- reading jobs
    *route("GET", f"/api/jobs/{UNKNOWN_JOB}", ("job-unknown", nothing, 404, "job_not_found")),
    *route("GET", "/api/jobs/not-a-uuid", ("job-not-a-uuid", nothing, 404, "job_not_found")),
    *route("GET", "/api/jobs/%00", ("job-id-nul", nothing, 404, "job_not_found")),
    *route(
        "GET",
        "/api/jobs",
        ("list-telegram-id-abc", params(telegram_id="abc"), 422, INVALID),
        ("list-telegram-id-0", params(telegram_id=0), 422, INVALID),
        ("list-missing-telegram-id", nothing, 422, INVALID),
        ("list-limit-0", params(telegram_id=1001, limit=0), 422, INVALID),
        ("list-limit-1000", params(telegram_id=1001, limit=1000), 422, INVALID),
        ("list-limit-abc", params(telegram_id=1001, limit="abc"), 422, INVALID),
        ("list-unknown-user", params(telegram_id=999), 404, "user_not_found"),
    ),
    *route(
        "GET",
        f"/api/jobs/{UNKNOWN_JOB}/input",
        ("input-unknown-job", nothing, 404, "job_not_found"),
    ),
    *route(
        "GET", "/api/jobs/{job_id}/result", ("result-before-any", nothing, 404, "result_not_found")
    ),
    *route(
        "GET",
        "/api/jobs/{job_id}/outputs/0",
        ("output-before-any", nothing, 404, "output_not_found"),
    ),
    *route(
        "GET", "/api/jobs/{job_id}/inputs/1", ("input-index-1", nothing, 404, "input_not_found")
    ),
    *route("GET", "/api/jobs/{job_id}/inputs/-1", ("input-index--1", nothing, 422, INVALID)),
    *route("GET", "/api/jobs/{job_id}/inputs/x", ("input-index-x", nothing, 422, INVALID)),
    *route("GET", "/api/jobs/{job_id}/outputs/1001", ("output-index-1001", nothing, 422, INVALID)),
    *route(
        "GET",
        f"/api/jobs/{UNKNOWN_JOB}/outputs/0",
        ("output-unknown-job", nothing, 404, "job_not_found"),
    ),
    *route(
        "GET",
        f"/api/jobs/{UNKNOWN_JOB}/result",
        ("result-unknown-job", nothing, 404, "job_not_found"),
    ),
    # ---- changing jobs (the world's job is queued)
    *route(
        "POST",
        "/api/jobs/{job_id}/status",
        ("status-unknown-status-done", status_body(status="done"), 422, INVALID),
        ("status-missing-status", status_body(status=_DROP), 422, INVALID),
        (
            "status-error-4001-chars",
            status_body(status="cancelled", error="e" * 4001),
            422,
            INVALID,
        ),
        ("status-unknown-field", status_body(progress=50), 422, INVALID),
        ("status-error-nul", status_body(status="cancelled", error="oops\x00"), 422, INVALID),
        ("status-queued-to-succeeded", status_body(status="succeeded"), 409, "invalid_transition"),
        ("status-queued-to-failed", status_body(status="failed"), 409, "invalid_transition"),
    ),
    *route(
        "POST",
        f"/api/jobs/{UNKNOWN_JOB}/status",
        ("status-unknown-job", status_body(), 404, "job_not_found"),
    ),
    *route("POST", "/api/jobs/{job_id}/refund", ("refund-queued-job", nothing, 409, "job_active")),
    *route(
        "POST",
        f"/api/jobs/{UNKNOWN_JOB}/refund",
        ("refund-unknown-job", nothing, 404, "job_not_found"),
    ),
    *route(
        "PUT",
        "/api/jobs/{job_id}/result",
        ("result-upload-queued-job", upload(), 409, "job_not_processing"),
        ("result-upload-not-an-image", upload(NOT_AN_IMAGE), 415, "unsupported_image"),
        ("result-upload-missing-image", upload(None), 422, INVALID),
    ),
    *route(
        "PUT",
        f"/api/jobs/{UNKNOWN_JOB}/result",
        ("result-upload-unknown-job", upload(), 404, "job_not_found"),
    ),
    *route(
        "PUT",
        "/api/jobs/{job_id}/outputs",
        ("outputs-queued-job", outputs(PNG), 409, "job_not_processing"),
        ("outputs-none", upload(None), 422, INVALID),
        ("outputs-21-files", outputs(*[PNG] * 21), 422, "too_many_outputs"),
    ),
    *route(
        "PUT",
        f"/api/jobs/{UNKNOWN_JOB}/outputs",
        ("outputs-unknown-job", outputs(PNG), 404, "job_not_found"),
    ),
    *route(
        "POST",
        "/api/jobs/{job_id}/delivery",
        ("delivery-queued-job", body(status="delivered"), 409, "job_active"),
        ("delivery-claim-queued-job", body(status="sending"), 409, "job_active"),
        ("delivery-release-queued-job", body(status="pending"), 409, "not_releasable"),
        ("delivery-status-teleported", body(status="teleported"), 422, INVALID),
        ("delivery-missing-status", body(error="x"), 422, INVALID),
        ("delivery-unknown-field", body(status="delivered", chat_id=1), 422, INVALID),
        ("delivery-error-nul", body(status="failed", error="oops\x00"), 422, INVALID),
    ),
    *route(
        "POST",
        f"/api/jobs/{UNKNOWN_JOB}/delivery",
        ("delivery-unknown-job", body(status="delivered"), 404, "job_not_found"),
    ),
    *route(
        "POST",
        "/api/jobs/{job_id}/status-message",
        ("status-message-message-id-0", status_message_body(message_id=0), 422, INVALID),
        ("status-message-message-id-x", status_message_body(message_id="x"), 422, INVALID),
        ("status-message-message-id-str", status_message_body(message_id="42"), 422, INVALID),
        ("status-message-missing-chat-id", status_message_body(chat_id=_DROP), 422, INVALID),
        ("status-message-chat-id-2**63", status_message_body(chat_id=2**63), 422, INVALID),
    ),
    *route(
        "POST",
        f"/api/jobs/{UNKNOWN_JOB}/status-message",
        ("status-message-unknown-job", status_message_body(), 404, "job_not_found"),
    ),
    # ---- payments (the world's payment is pending: 10 credits for 50 XTR)
    *route(
        "POST",
        "/api/payments/create",
        ("payment-unknown-package", payment_body(package="huge"), 404, "package_not_found"),
        ("payment-unknown-user", payment_body(telegram_id=999), 404, "user_not_found"),
        ("payment-telegram-id-string", payment_body(telegram_id="1001"), 422, INVALID),
        ("payment-missing-package", payment_body(package=_DROP), 422, INVALID),
        ("payment-empty-package", payment_body(package=""), 422, INVALID),
        ("payment-unknown-field", payment_body(stars=1), 422, INVALID),
        ("payment-package-nul", payment_body(package="small\x00"), 422, INVALID),
    ),
    *route(
        "POST",
        "/api/payments/confirm",
        ("confirm-currency-usd", confirm_body(currency="USD"), 422, "currency_mismatch"),
        ("confirm-amount-49", confirm_body(total_amount=49), 422, "amount_mismatch"),
        ("confirm-unknown-payload", confirm_body(payload="cg-unknown"), 404, "payment_not_found"),
        ("confirm-amount-negative", confirm_body(total_amount=-1), 422, INVALID),
        ("confirm-amount-0", confirm_body(total_amount=0), 422, INVALID),
        ("confirm-amount-string", confirm_body(total_amount="50"), 422, INVALID),
        ("confirm-missing-charge-id", confirm_body(telegram_payment_charge_id=_DROP), 422, INVALID),
        ("confirm-empty-charge-id", confirm_body(telegram_payment_charge_id=""), 422, INVALID),
        ("confirm-missing-payload", confirm_body(payload=_DROP), 422, INVALID),
        ("confirm-charge-id-nul", confirm_body(telegram_payment_charge_id="c\x00"), 422, INVALID),
    ),
    *route(
        "POST",
        "/api/payments/precheck",
        ("precheck-amount-49", precheck_body(total_amount=49), 422, "amount_mismatch"),
        ("precheck-currency-usd", precheck_body(currency="USD"), 422, "currency_mismatch"),
        ("precheck-unknown-payload", precheck_body(payload="cg-unknown"), 404, "payment_not_found"),
        ("precheck-amount-string", precheck_body(total_amount="50"), 422, INVALID),
        ("precheck-payload-nul", precheck_body(payload="cg-\x00"), 422, INVALID),
        ("precheck-someone-else", precheck_body(telegram_id=2002), 403, "payment_not_yours"),
        ("precheck-telegram-id-0", precheck_body(telegram_id=0), 422, INVALID),
    ),
    *route(
        "POST",
        "/api/payments/refunds",
        ("refund-creditable-invoice", refund_body(), 409, "payment_creditable"),
        ("refund-telegram-id-0", refund_body(telegram_id=0), 422, INVALID),
        ("refund-missing-telegram-id", refund_body(telegram_id=_DROP), 422, INVALID),
        ("refund-missing-chat-id", refund_body(chat_id=_DROP), 422, INVALID),
        ("refund-language-17-chars", refund_body(language="x" * 17), 422, INVALID),
        ("refund-charge-id-nul", refund_body(telegram_payment_charge_id="c\x00"), 422, INVALID),
        ("refund-amount-0", refund_body(total_amount=0), 422, INVALID),
    ),
    *route(
        "GET",
        "/api/payments/refunds",
        ("refunds-limit-0", params(limit=0), 422, INVALID),
        ("refunds-limit-x", params(limit="x"), 422, INVALID),
    ),
    *route(
        "POST",
        "/api/payments/refunds/{charge_id}/claim",
        ("refund-claim-unknown-charge", nothing, 404, "refund_not_found"),
    ),
    *route(
        "POST",
        "/api/payments/refunds/{charge_id}/result",
        ("refund-result-unknown-charge", body(outcome="refunded"), 404, "refund_not_found"),
        ("refund-result-outcome-maybe", body(outcome="maybe"), 422, INVALID),
        ("refund-result-error-nul", body(outcome="failed", error="x\x00"), 422, INVALID),
        ("refund-result-error-301", body(outcome="failed", error="x" * 301), 422, INVALID),
    ),
    # ---- promo codes and referrals
    *route(
        "POST",
        "/api/promos",
        ("promo-code-2-chars", promo_body(code="AB"), 422, "bad_promo_code"),
        ("promo-code-space", promo_body(code="A B C"), 422, "bad_promo_code"),
        ("promo-code-nul", promo_body(code="AB\x00C"), 422, INVALID),
        ("promo-credits-0", promo_body(credits=0), 422, "bad_promo_credits"),
        ("promo-credits-string", promo_body(credits="5"), 422, INVALID),
        ("promo-uses-0", promo_body(max_uses=0), 422, "bad_promo_uses"),
        (
            "promo-expiry-past",
            promo_body(expires_at="2001-01-01T00:00:00Z"),
            422,
            "bad_promo_expiry",
        ),
        ("promo-missing-actor", promo_body(actor=_DROP), 422, INVALID),
    ),
    *route("GET", "/api/promos", ("promos-limit-0", params(limit=0), 422, INVALID)),
    *route(
        "POST",
        "/api/promos/redeem",
        ("redeem-unknown-code", body(telegram_id=1001, code="NOPE"), 404, "promo_not_found"),
        ("redeem-unknown-user", body(telegram_id=4242, code="NOPE"), 404, "user_not_found"),
        ("redeem-empty-code", body(telegram_id=1001, code=""), 422, INVALID),
        ("redeem-telegram-id-0", body(telegram_id=0, code="NOPE"), 422, INVALID),
    ),
    *route(
        "POST",
        "/api/promos/{code}/disable",
        ("disable-unknown-code", body(actor="ops"), 404, "promo_not_found"),
        ("disable-no-actor", body(), 422, INVALID),
    ),
    *route(
        "POST",
        "/api/referrals/invite",
        ("invite-unknown-user", body(telegram_id=4242), 404, "user_not_found"),
        ("invite-telegram-id-string", body(telegram_id="1001"), 422, INVALID),
    ),
    # ---- no such route or method
    *route("GET", "/api/nope", ("unknown-route", nothing, 404, "not_found")),
    *route("DELETE", "/api/jobs/{job_id}", ("delete-job", nothing, 405, "method_not_allowed")),
]


@pytest.mark.parametrize(("method", "path", "build", "status", "code"), CASES)
async def test_bad_request_is_refused_and_changes_nothing(
    app: FastAPI,
    client: httpx.AsyncClient,
    world: World,
    method: str,
    path: str,
    build: Build,
    status: int,
    code: str | None,
) -> None:
    """One row of the table: the expected 4xx and error code, and an unchanged world."""
    before = await snapshot(app)
    response = await send(client, method, _fill(path, world), build(world))
    assert_error(response, status, code)
    assert await snapshot(app) == before


# -- cases that need more than the world ------------------------------------------------------

Setup = Callable[[httpx.AsyncClient, World], Awaitable[World]]


async def spent_user(api: httpx.AsyncClient, world: World) -> World:
    """User 2002, whose signup bonus of 3 has been taken back: balance 0."""
    await register(api, 2002)
    assert (await grant(api, 2002, -3, "spend-bonus"))["balance"] == 0
    return replace(world, telegram_id=2002)


async def banned_user(api: httpx.AsyncClient, world: World) -> World:
    """User 1001, blocked by the operator (as the admin panel does)."""
    async with world.sessions() as session:
        user = await session.scalar(select(User).where(User.telegram_id == world.telegram_id))
        user.banned = True
        await session.commit()
    return world


async def three_active_jobs(api: httpx.AsyncClient, world: World) -> World:
    """User 1001 with credits to spare and max_active_jobs_per_user (3) jobs queued."""
    await grant(api, 1001, 10, "top-up")
    for n in (2, 3):
        response = await create_job(api, 1001, "bw", key=f"job-{n}")
        assert response.status_code == 201, response.text
    return world


async def paid(api: httpx.AsyncClient, world: World) -> World:
    """The world's payment confirmed with charge-A."""
    response = await api.post(
        "/api/payments/confirm",
        json={
            "payload": world.payload,
            "total_amount": 50,
            "currency": "XTR",
            "telegram_payment_charge_id": "charge-A",
        },
    )
    assert response.status_code == 200 and response.json()["credited"], response.text
    return world


async def paid_and_new_invoice(api: httpx.AsyncClient, world: World) -> World:
    """charge-A paid the world's payment; a second invoice is pending."""
    await paid(api, world)
    response = await api.post(
        "/api/payments/create", json={"telegram_id": 1001, "package": "small"}
    )
    assert response.status_code == 201, response.text
    invoice = response.json()
    return replace(world, payment_id=invoice["payment_id"], payload=invoice["payload"])


async def processing(api: httpx.AsyncClient, world: World) -> World:
    """The world's job taken by a worker."""
    response = await api.post(f"/api/jobs/{world.job_id}/status", json={"status": "processing"})
    assert response.status_code == 200, response.text
    return world


async def cancelled(api: httpx.AsyncClient, world: World) -> World:
    """The world's job cancelled (and refunded)."""
    response = await api.post(f"/api/jobs/{world.job_id}/status", json={"status": "cancelled"})
    assert response.status_code == 200, response.text
    return world


async def media_swept(api: httpx.AsyncClient, world: World) -> World:
    """The world's job cancelled 400 days ago, and the retention sweep has run."""
    await cancelled(api, world)
    async with world.sessions() as session:
        job = await session.get(Job, world.job_id)
        job.finished_at = datetime.now(UTC) - timedelta(days=400)
        await session.commit()
    assert await retention.sweep_once(world.sessions, MediaStore(world.media_dir), 30) == 1
    return world


def after(setup: Setup, method: str, path: str, *rows: Row) -> list[Any]:
    """Table rows of one route, each run once `setup` has set the scene."""
    return [
        pytest.param(setup, method, path, build, status, code, id=name)
        for name, build, status, code in rows
    ]


SETUP_CASES = [
    *after(
        spent_user,
        "POST",
        "/api/jobs/create",
        ("create-with-0-credits", upload(), 402, "insufficient_credits"),
        ("create-with-0-credits-damaged-png", upload(damaged_png), 402, "insufficient_credits"),
    ),
    *after(
        banned_user,
        "POST",
        "/api/jobs/create",
        ("create-banned-damaged-png", upload(damaged_png), 403, "user_banned"),
    ),
    *after(
        three_active_jobs,
        "POST",
        "/api/jobs/create",
        ("create-fourth-active-job", upload(), 409, "too_many_active_jobs"),
        (
            "create-fourth-active-job-damaged-png",
            upload(damaged_png),
            409,
            "too_many_active_jobs",
        ),
    ),
    *after(
        paid,
        "POST",
        "/api/payments/confirm",
        ("confirm-paid-with-other-charge", confirm_body(), 409, "payment_closed"),
    ),
    *after(
        paid,
        "POST",
        "/api/payments/precheck",
        ("precheck-paid-invoice", precheck_body(), 409, "payment_closed"),
    ),
    *after(
        paid_and_new_invoice,
        "POST",
        "/api/payments/confirm",
        (
            "confirm-new-invoice-used-charge",
            confirm_body(telegram_payment_charge_id="charge-A"),
            409,
            "charge_reused",
        ),
    ),
    *after(
        paid,
        "POST",
        "/api/payments/refunds",
        (
            "refund-credited-charge",
            refund_body(telegram_payment_charge_id="charge-A"),
            409,
            "charge_credited",
        ),
    ),
    *after(
        processing,
        "POST",
        "/api/jobs/{job_id}/status",
        ("status-succeeded-without-result", status_body(status="succeeded"), 409, "result_missing"),
        (
            "status-processing-to-cancelled",
            status_body(status="cancelled"),
            409,
            "invalid_transition",
        ),
    ),
    *after(
        processing,
        "PUT",
        "/api/jobs/{job_id}/result",
        ("result-upload-not-an-image-processing", upload(NOT_AN_IMAGE), 415, "unsupported_image"),
        ("result-upload-gif-processing", upload(images.gif()), 415, "unsupported_image"),
        ("result-upload-truncated-processing", upload(truncated_jpeg), 422, "bad_image"),
        ("result-upload-empty-processing", upload(b""), 422, "bad_image"),
        *(
            (
                f"result-upload-{kind}-first-{count}-bytes",
                upload(first_bytes(kind, count)),
                422,
                "bad_image",
            )
            for kind, count in DAMAGED_HEADERS
        ),
    ),
    *after(
        processing,
        "PUT",
        "/api/jobs/{job_id}/outputs",
        ("outputs-not-an-image-processing", outputs(NOT_AN_IMAGE), 422, "unsupported_output"),
        ("outputs-gif-processing", outputs(PNG, images.gif()), 422, "unsupported_output"),
        (
            "outputs-animation-for-image-processing",
            outputs(images.animated("WEBP")),
            422,
            "unsupported_output",
        ),
        ("outputs-second-truncated-processing", outputs(PNG, truncated_jpeg), 422, "bad_output"),
        ("outputs-empty-processing", outputs(b""), 422, "bad_output"),
        ("outputs-over-limit-processing", outputs(over_limit_result), 413, "file_too_large"),
        ("outputs-21-files-processing", outputs(*[PNG] * 21), 422, "too_many_outputs"),
    ),
    *after(
        cancelled,
        "PUT",
        "/api/jobs/{job_id}/outputs",
        ("outputs-cancelled-job", outputs(PNG), 409, "job_not_processing"),
    ),
    *after(
        media_swept,
        "GET",
        "/api/jobs/{job_id}/inputs/0",
        ("inputs-0-deleted-by-retention", nothing, 410, "media_deleted"),
    ),
    *after(
        processing,
        "POST",
        "/api/jobs/{job_id}/refund",
        ("refund-processing-job", nothing, 409, "job_active"),
    ),
    *after(
        processing,
        "POST",
        "/api/jobs/{job_id}/delivery",
        # Claimed while processing, yes (tests/test_worker_routes.py); an outcome unclaimed, no.
        ("delivery-processing-job", body(status="delivered"), 409, "job_active"),
        ("delivery-release-unclaimed-job", body(status="pending"), 409, "not_releasable"),
    ),
    *after(
        cancelled,
        "POST",
        "/api/jobs/{job_id}/status",
        ("status-cancelled-to-processing", status_body(), 409, "invalid_transition"),
    ),
    *after(
        cancelled,
        "PUT",
        "/api/jobs/{job_id}/result",
        ("result-upload-cancelled-job", upload(), 409, "job_not_processing"),
    ),
    *after(
        cancelled,
        "GET",
        "/api/jobs/{job_id}/result",
        ("result-of-cancelled-job", nothing, 404, "result_not_found"),
    ),
    *after(
        media_swept,
        "GET",
        "/api/jobs/{job_id}/input",
        ("input-deleted-by-retention", nothing, 410, "media_deleted"),
    ),
]


@pytest.mark.parametrize(("setup", "method", "path", "build", "status", "code"), SETUP_CASES)
async def test_bad_request_after_setup_changes_nothing(
    app: FastAPI,
    api: httpx.AsyncClient,
    client: httpx.AsyncClient,
    world: World,
    setup: Setup,
    method: str,
    path: str,
    build: Build,
    status: int,
    code: str | None,
) -> None:
    """Set the scene, then the same contract: snapshot, bad request, error, same snapshot."""
    world = await setup(api, world)
    before = await snapshot(app)
    response = await send(client, method, _fill(path, world), build(world))
    assert_error(response, status, code)
    assert await snapshot(app) == before
