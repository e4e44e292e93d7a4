"""The backend's FastAPI application and what it does at start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.formparsers import MultiPartParser
from starlette.types import ASGIApp, Receive, Scope, Send

from comfygram import __version__
from comfygram.backend import audit, db, reconcile, retention, stars
from comfygram.backend.admin import mount_admin
from comfygram.backend.api_docs import mount_api_docs
from comfygram.backend.deps import has_api_token
from comfygram.backend.errors import error_response, install_error_handlers
from comfygram.backend.limits import BodyLimits, body_limit, http_protocol
from comfygram.backend.presets import sync_presets
from comfygram.backend.routes import (
    health,
    jobs,
    payments,
    presets,
    promos,
    stats,
    subscriptions,
    users,
    webhook,
    workers,
)
from comfygram.backend.storage import MediaStore
from comfygram.backend.workers import WorkerRegistry
from comfygram.logs import job_context
from comfygram.presets import Preset, load_presets
from comfygram.queue import JobQueue, connect_redis
from comfygram.settings import Settings

log = logging.getLogger(__name__)


class RequireApiToken:
    """The service token on /api/ and /metrics, checked before FastAPI reads the body, so a
    caller without it cannot make the backend parse an upload or learn anything from
    validation errors."""

    def __init__(self, app: ASGIApp, *, token: bytes) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            guarded = path.startswith("/api/") or path == "/metrics"
            if guarded and not has_api_token(Request(scope), self.token):
                response = error_response(
                    401,
                    "unauthorized",
                    "Send the service token as 'Authorization: Bearer <API_TOKEN>'.",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class TagLogsWithTheJob:
    """Every log line written for /api/jobs/{id}/... carries the job's id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = scope["path"].split("/") if scope["type"] == "http" else []
        if len(parts) > 3 and parts[1:3] == ["api", "jobs"] and parts[3] not in ("", "create"):
            with job_context(parts[3]):
                await self.app(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def prepare_database(
    engine: AsyncEngine, settings: Settings, presets_on_disk: list[Preset]
) -> None:
    """Migrate (when AUTO_MIGRATE) and sync the presets: what a backend does once at start."""
    if settings.auto_migrate:
        await db.migrate(engine)
    async with db.create_sessionmaker(engine)() as session:
        await sync_presets(session, presets_on_disk)
        await session.commit()


# Set by `comfygram backend --workers N` for its processes: the .env file it read ("": none).
ENV_FILE_VARIABLE = "COMFYGRAM_ENV_FILE"

# uvicorn's HTTP protocol for `comfygram backend`, by name (uvicorn's `http=` takes an import
# string): each process of --workers N builds its own, as a class made at run time cannot be
# sent to them.
HeaderDeadlineProtocol = http_protocol()


def create_process_app() -> FastAPI:
    """The app of one process of `comfygram backend --workers N` (uvicorn's app factory).

    Its settings are read as the parent read them (the same environment and .env file); the
    parent has already migrated the database and synced the presets, once, so N processes
    starting together neither migrate at once nor insert the same preset twice.
    """
    from comfygram.logs import setup_logging
    from comfygram.settings import load_settings
    from comfygram.startup import keep_startup_objects_out_of_gc

    env_file = os.environ.get(ENV_FILE_VARIABLE) or None
    settings = load_settings(_env_file=Path(env_file) if env_file else None)
    setup_logging(settings.log_level, settings.log_json, settings.secrets())
    app = create_app(settings, database_prepared=True)
    keep_startup_objects_out_of_gc()
    return app


def create_app(settings: Settings, *, database_prepared: bool = False) -> FastAPI:
    """The backend. ``database_prepared``: prepare_database ran already (the parent of
    several processes did it); otherwise the app does it as it starts."""
    settings.require("api_token")
    if settings.webhook_url and settings.bot_token:
        # Webhook mode: Telegram must prove each update with the secret.
        settings.require("webhook_secret")
    presets_on_disk = load_presets(settings.presets_dir)
    # Files up to MAX_UPLOAD_BYTES are parsed in memory: the routes read each one whole anyway,
    # and past Starlette's 1 MB default a file is spooled to disk (a temp-file write, a thread
    # hop per chunk, a read back: about 1.5 ms of CPU per MB). The class attribute is
    # Starlette's documented knob; it holds for the whole process.
    MultiPartParser.spool_max_size = settings.max_upload_bytes

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = db.create_engine(settings.database_dsn)
        if not database_prepared:
            await prepare_database(engine, settings, presets_on_disk)
        sessions = db.create_sessionmaker(engine)
        redis = connect_redis(settings)
        queue = JobQueue(redis, prefix=settings.redis_prefix)
        app.state.engine = engine
        app.state.sessions = sessions
        app.state.redis = redis
        app.state.queue = queue
        app.state.store = MediaStore(settings.media_dir)
        app.state.workers = WorkerRegistry(redis, settings.redis_prefix)
        turns = settings.creation_turns
        app.state.creation_turns = asyncio.Semaphore(turns) if turns else None
        stop_reconciling = asyncio.Event()
        reconciler = asyncio.create_task(
            reconcile.reconcile_forever(
                sessions,
                queue,
                settings.reconcile_interval_seconds,
                settings.stale_processing_seconds,
                stop_reconciling,
            ),
            name="queue-reconcile",
        )
        retention_sweeper = asyncio.create_task(
            retention.sweep_forever(
                sessions,
                app.state.store,
                settings.media_retention_days,
                retention.SWEEP_INTERVAL_SECONDS,
                stop_reconciling,
            ),
            name="media-retention",
        )
        # Money checks (docs/payments.md): Telegram's Star transactions against the payments
        # table (only with a bot token), and the ledger audit; each first runs one interval
        # after start, and 0 turns it off.
        money_tasks = []
        if settings.stars_reconcile_interval_seconds and settings.bot_token:
            money_tasks.append(
                asyncio.create_task(
                    stars.reconcile_forever(
                        sessions,
                        settings,
                        settings.stars_reconcile_interval_seconds,
                        stop_reconciling,
                        redis,
                    ),
                    name="stars-reconcile",
                )
            )
        if settings.audit_interval_seconds:
            money_tasks.append(
                asyncio.create_task(
                    audit.audit_forever(
                        sessions,
                        settings.audit_interval_seconds,
                        stop_reconciling,
                        redis,
                        settings.redis_prefix,
                    ),
                    name="ledger-audit",
                )
            )
        app.state.bot = None
        if settings.webhook_url and settings.bot_token:
            # Webhook mode: Telegram posts to /webhook here, and the bot's dispatcher runs here.
            from comfygram.bot import BotRuntime

            app.state.bot = BotRuntime(settings)
            await app.state.bot.start_webhook()
        log.info(
            "backend ready: %d presets, database %s", len(presets_on_disk), engine.dialect.name
        )
        try:
            yield
        finally:
            if app.state.bot is not None:
                await app.state.bot.close()
            stop_reconciling.set()
            try:
                await asyncio.wait_for(reconciler, 10)
            except TimeoutError:  # a round stuck on an unreachable Redis: cut it short
                with contextlib.suppress(asyncio.CancelledError):
                    await reconciler
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(retention_sweeper, 10)
            for task in money_tasks:  # a pass in progress (Telegram slow) is cut short
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(task, 10)
            await redis.aclose()
            await engine.dispose()

    app = FastAPI(
        title="comfygram backend",
        version=__version__,
        description="System of record for comfygram: users, credits, jobs, payments, presets.",
        lifespan=lifespan,
        # Our own /docs, /redoc and /openapi.json, from local files and only when asked for.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    if settings.api_docs:
        mount_api_docs(app)
    app.state.settings = settings
    install_error_handlers(app)

    # Innermost first: the token is checked inside the job's log context, both inside the
    # body limits. Plain ASGI middleware: Starlette's @app.middleware("http") runs every
    # request through a task and memory streams, which cost more than a status read itself.
    app.add_middleware(RequireApiToken, token=settings.api_token.get_secret_value().encode())
    app.add_middleware(TagLogsWithTheJob)
    for module in (
        users,
        presets,
        jobs,
        payments,
        subscriptions,
        promos,
        workers,
        stats,
        health,
        webhook,
    ):
        app.include_router(module.router)
    mount_admin(app, settings)  # /admin, when ADMIN_USERNAME and ADMIN_PASSWORD are set
    # Added last, so it is the outermost: every body is counted as it arrives, on every route
    # (the admin panel and /webhook included), before anything else reads it.
    app.add_middleware(
        BodyLimits,
        limit_for=functools.partial(
            body_limit,
            max_upload_bytes=settings.max_upload_bytes,
            # The create body follows the preset's declared inputs: room for every photo of
            # the preset that takes the most.
            max_photos=max((len(p.contract.photos) for p in presets_on_disk), default=1),
        ),
        body_timeout=settings.body_timeout_seconds,
    )
    return app
