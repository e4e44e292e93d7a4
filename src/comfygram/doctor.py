"""`comfygram doctor`: check the settings and every service the deployment depends on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from comfygram.settings import ConfigError, Settings, load_settings

OK, FAIL, WARN, SKIP = "OK", "FAIL", "WARN", "SKIP"
TIMEOUT = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str = ""


async def _guard(name: str, probe: Callable[[], Awaitable[list[Check]]]) -> list[Check]:
    """Run one probe with a timeout; any error becomes a FAIL line, never an exception."""
    try:
        return await asyncio.wait_for(probe(), TIMEOUT)
    except TimeoutError:
        return [Check(name, FAIL, f"no answer within {TIMEOUT:.0f} s")]
    except Exception as exc:
        return [Check(name, FAIL, f"{type(exc).__name__}: {str(exc)[:200]}")]


def check_settings() -> tuple[Settings | None, Check]:
    try:
        return load_settings(), Check("settings", OK, "valid")
    except ConfigError as exc:
        return None, Check("settings", FAIL, str(exc).splitlines()[0])


def _alembic_head() -> str | None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from comfygram.backend.db import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


def _missing_sqlite_file(settings: Settings) -> Path | None:
    """The SQLite file DATABASE_URL names, when it does not exist yet."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_dsn)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = Path(url.database)
    return None if path.exists() else path


async def check_database(settings: Settings) -> list[Check]:
    from comfygram.backend import db

    missing = _missing_sqlite_file(settings)
    if missing is not None:  # opening it would create it (and its folder): only look
        return [
            Check(
                "database",
                WARN if settings.auto_migrate else FAIL,
                f"no database yet at {missing}: "
                + (
                    "the backend creates and migrates it when it starts"
                    if settings.auto_migrate
                    else "run comfygram migrate"
                ),
            )
        ]

    async def probe() -> list[Check]:
        from comfygram.startup import explain_database_error

        engine = db.create_engine(settings.database_dsn)
        try:
            current = await db.current_revision(engine)
        except Exception as exc:  # the same sentence the commands print
            explained = explain_database_error(exc, settings)
            if explained is None:
                raise
            return [Check("database", FAIL, explained)]
        finally:
            await engine.dispose()
        head = _alembic_head()
        if current != head and settings.auto_migrate:
            return [
                Check(
                    "database",
                    WARN,
                    f"not migrated yet ({current} < {head}): the backend migrates it when it "
                    "starts (AUTO_MIGRATE=true)",
                )
            ]
        if current != head:
            return [
                Check("database", FAIL, f"not migrated: run comfygram migrate ({current} < {head})")
            ]
        return [Check("database", OK, f"migrated to {head}")]

    return await _guard("database", probe)


async def check_reconciliation(settings: Settings) -> list[Check]:
    """The last Star reconciliation pass and what is still unresolved (docs/payments.md)."""
    from comfygram.backend import db, stars

    async def probe() -> list[Check]:
        engine = db.create_engine(settings.database_dsn)
        try:
            async with db.create_sessionmaker(engine)() as session:
                last = await stars.last_pass(session)
                open_count = await stars.unresolved_count(session)
        finally:
            await engine.dispose()
        every = settings.stars_reconcile_interval_seconds
        when = f"every {every / 3600:g} h" if every else "off (STARS_RECONCILE_INTERVAL_SECONDS=0)"
        unresolved = (
            f"{open_count} unresolved discrepanc{'y' if open_count == 1 else 'ies'}: see the "
            "admin dashboard"
        )
        if last is None:
            detail = f"no pass yet ({when}; `comfygram payments reconcile` runs one now)"
            return [Check("reconciliation", WARN if open_count else OK, detail)]
        at = f"last pass #{last.id} at {last.started_at:%Y-%m-%d %H:%M} UTC"
        if last.error:
            return [Check("reconciliation", WARN, f"{at} stopped: {last.error}")]
        done = f"{at}: {last.transactions} transactions, {last.credited} credited late"
        if open_count:
            return [Check("reconciliation", WARN, f"{done}; {unresolved}")]
        return [Check("reconciliation", OK, f"{done}; nothing unresolved ({when})")]

    return await _guard("reconciliation", probe)


async def check_embedded_redis(settings: Settings) -> list[Check]:
    """No Redis configured: the one `comfygram run` embeds, running or to be started."""
    from comfygram.embedded_redis import EmbeddedRedisError, answers, find_server, socket_path

    socket = socket_path(settings.embedded_redis_dir)
    if (version := await answers(socket)) is not None:
        return [
            Check(
                "redis",
                OK,
                f"embedded: Redis {version} on {socket}, run by comfygram run "
                "(set REDIS_URL to use your own)",
            )
        ]
    try:
        binary = await asyncio.to_thread(find_server)
    except EmbeddedRedisError as exc:
        return [Check("redis", FAIL, str(exc))]
    return [
        Check(
            "redis",
            OK,
            f"embedded: comfygram run starts Redis {binary.version} ({binary.path}) with its "
            f"data in {settings.embedded_redis_dir} (set REDIS_URL to use your own)",
        )
    ]


async def check_redis(settings: Settings) -> list[Check]:
    import redis.asyncio as aioredis
    from redis.exceptions import AuthenticationError, ResponseError
    from redis.exceptions import ConnectionError as RedisConnectionError

    from comfygram.embedded_redis import MIN_VERSION

    if not settings.redis_configured:
        return await check_embedded_redis(settings)
    url = urlsplit(settings.redis_dsn)
    where = unquote(url.path) if url.scheme == "unix" else f"{url.hostname}:{url.port or 6379}"

    async def probe() -> list[Check]:
        client = aioredis.from_url(settings.redis_dsn, socket_connect_timeout=TIMEOUT)
        try:
            await client.ping()
            version = str((await client.info("server")).get("redis_version", "?"))
        except AuthenticationError:
            return [Check("redis", FAIL, "Redis password rejected (REDIS_PASSWORD)")]
        except ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                return [Check("redis", FAIL, "Redis password rejected (REDIS_PASSWORD)")]
            raise
        except RedisConnectionError:
            return [
                Check(
                    "redis",
                    FAIL,
                    f"cannot connect to {where}: start it (redis-server, or "
                    "docker compose up -d redis)",
                )
            ]
        finally:
            await client.aclose()
        numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
        if numbers < MIN_VERSION:
            return [
                Check(
                    "redis",
                    FAIL,
                    f"configured: Redis {version} at {where} is too old: the queue needs 6.2 "
                    "or later (XAUTOCLAIM)",
                )
            ]
        return [Check("redis", OK, f"configured: Redis {version} at {where}")]

    return await _guard("redis", probe)


def _preset_checks(presets: list[Any], object_info: dict, only_enabled: bool) -> list[Check]:
    from comfygram.presets import compatibility_problems

    results: list[tuple[str, list[str]]] = []
    for preset in presets:
        if only_enabled and not preset.enabled:
            continue
        results.append((preset.slug, compatibility_problems(preset, object_info)))
    any_runnable = any(not problems for _, problems in results)
    checks = []
    for slug, problems in results:
        if not problems:
            checks.append(Check(f"preset {slug}", OK, "runnable"))
        else:
            status = WARN if any_runnable else FAIL
            checks.append(Check(f"preset {slug}", status, "; ".join(problems)))
    if not results:
        checks.append(Check("presets", FAIL, "no presets"))
    return checks


def _previews_check(name: str, method: str, presets: list[Any]) -> Check:
    """Whether ComfyUI sends preview frames, and whether a preset it can run wants them."""
    wanting = [p.slug for p in presets if p.enabled and p.contract.previews]
    if method != "none":
        return Check(f"{name} previews", OK, f"sent (--preview-method {method})")
    if not wanting:
        return Check(f"{name} previews", OK, "not sent (no preset it can run asks for them)")
    return Check(
        f"{name} previews",
        WARN,
        f"not sent, but {', '.join(wanting)} ask for them: start ComfyUI with "
        "--preview-method auto (or latent2rgb)",
    )


def _gc_check(name: str, state: dict[str, Any] | None) -> Check:
    """Whether comfygram's ComfyUI extension keeps ComfyUI's start-up objects out of its GC."""
    if state is None:
        return Check(
            f"{name} GC",
            WARN,
            "comfygram's extension is not loaded: ComfyUI stops about 300 ms for a full garbage "
            "collection every 10 s of work; load comfyui/custom_nodes/comfygram_gc_freeze "
            "(docs/deploy.md)",
        )
    if not state.get("frozen"):
        return Check(f"{name} GC", OK, "start-up objects frozen at the first prompt")
    since = state.get("full_collections_ms") or []
    after = f"full collections since: at most {max(since):.1f} ms" if since else "none since"
    return Check(f"{name} GC", OK, f"start-up objects frozen ({state['frozen']:,}); {after}")


async def check_comfyui(
    settings: Settings,
    *,
    presets: bool = True,
    previews: bool = True,
    only_enabled: bool = False,
    comfyui_url: str | None = None,
) -> list[Check]:
    from comfygram.comfyui import ComfyUIClient
    from comfygram.presets import load_presets

    url = comfyui_url or settings.comfyui_url
    name = f"comfyui {url}" if comfyui_url else "comfyui"

    async def probe() -> list[Check]:
        async with ComfyUIClient(url, "doctor", timeout=TIMEOUT) as client:
            stats = await client.system_stats()
            checks = []
            if stats.devices:
                device = stats.devices[0]
                free = device.vram_free / 1024**3
                detail = f"{stats.version}, {device.name}, {free:.1f} GB VRAM free"
            else:
                detail = f"{stats.version}, no device reported"
            checks.append(Check(name, OK, detail))
            checks.append(_gc_check(name, await client.gc_state()))
            if presets:
                from comfygram.presets import compatibility_problems

                available = load_presets(settings.presets_dir)
                object_info = await client.object_info()
                runnable = [p for p in available if not compatibility_problems(p, object_info)]
                if previews:
                    checks.append(_previews_check(name, stats.preview_method, runnable))
                checks += _preset_checks(available, object_info, only_enabled)
            return checks

    return await _guard(name, probe)


async def check_workers(settings: Settings) -> tuple[list[Check], list[str]]:
    """One line per live worker (from their heartbeats in Redis), and the ComfyUI URLs they
    drive besides COMFYUI_URL."""
    import redis.asyncio as aioredis

    from comfygram.backend.workers import WorkerRegistry, redact_url
    from comfygram.embedded_redis import answers, socket_path, url_for

    if not settings.redis_configured:
        socket = socket_path(settings.embedded_redis_dir)
        if await answers(socket) is None:
            return [Check("workers", SKIP, "none: comfygram run is not running")], []
        settings = settings.model_copy(update={"redis_url": url_for(socket)})
    client = aioredis.from_url(settings.redis_dsn, socket_connect_timeout=TIMEOUT)
    try:
        workers = await asyncio.wait_for(
            WorkerRegistry(client, settings.redis_prefix).live(), TIMEOUT
        )
    except Exception:
        return [Check("workers", SKIP, "Redis not reachable")], []
    finally:
        await client.aclose()
    if not workers:
        return [
            Check("workers", WARN, "none reporting: start `comfygram worker` or `comfygram run`")
        ], []
    checks = []
    for worker in workers:
        if not worker.healthy:
            checks.append(
                Check(f"worker {worker.name}", FAIL, f"its ComfyUI {worker.comfyui_url} is down")
            )
            continue
        detail = f"ComfyUI {worker.comfyui_url}; runs {', '.join(worker.runnable) or 'no preset'}"
        if worker.problems:
            detail += f"; cannot run {', '.join(sorted(worker.problems))}"
        checks.append(Check(f"worker {worker.name}", OK if worker.runnable else FAIL, detail))
    own = redact_url(settings.comfyui_url).rstrip("/")  # as the heartbeats keep it
    others = sorted({w.comfyui_url.rstrip("/") for w in workers} - {own})
    return checks, others


async def check_telegram(settings: Settings) -> list[Check]:
    if settings.bot_token is None:
        return [Check("telegram", FAIL, "BOT_TOKEN not set: get one from @BotFather")]
    from aiogram.exceptions import TelegramUnauthorizedError

    from comfygram.telegram import create_bot

    async def probe() -> list[Check]:
        bot = create_bot(settings)
        try:
            try:
                me = await bot.get_me()
            except TelegramUnauthorizedError:
                return [Check("telegram", FAIL, "BOT_TOKEN rejected by Telegram")]
            checks = [Check("telegram", OK, f"@{me.username}")]
            info = await bot.get_webhook_info()
            extra = f"pending {info.pending_update_count}"
            if info.last_error_message:
                extra += f", last error: {info.last_error_message}"
            if settings.webhook_url:
                if info.url != settings.webhook_url:
                    checks.append(
                        Check(
                            "webhook",
                            FAIL,
                            f"set to {info.url or 'nothing'}, "
                            f"expected {settings.webhook_url}; {extra}",
                        )
                    )
                else:
                    checks.append(Check("webhook", OK, f"{info.url}; {extra}"))
            elif info.url:
                checks.append(
                    Check("webhook", WARN, f"polling mode but a webhook is set ({info.url})")
                )
            else:
                checks.append(Check("webhook", OK, f"none (polling); {extra}"))
            return checks
        finally:
            await bot.session.close()

    return await _guard("telegram", probe)


def check_admin(settings: Settings) -> list[Check]:
    try:
        settings.check_admin_password()
    except ConfigError as exc:
        return [Check("admin panel", FAIL, str(exc))]
    if settings.admin_enabled:
        return [Check("admin panel", OK, f"on at /admin for {settings.admin_username}")]
    if settings.admin_username or settings.admin_password:
        return [Check("admin panel", WARN, "off: set both ADMIN_USERNAME and ADMIN_PASSWORD")]
    return [Check("admin panel", SKIP, "off (set ADMIN_USERNAME and ADMIN_PASSWORD to turn it on)")]


async def run_doctor(settings: Settings | None = None) -> list[Check]:
    if settings is None:
        settings, first = check_settings()
    else:
        first = Check("settings", OK, "valid")
    if settings is None:
        return [first] + [
            Check(name, SKIP, "settings invalid")
            for name in ("admin panel", "database", "redis", "comfyui", "workers", "telegram")
        ]
    if settings.api_token is None:
        first = Check(
            "settings",
            FAIL,
            "API_TOKEN is not set: the backend, the bot and the workers need it (make one with "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))')",
        )
    # One after another: each timeout then measures only its own service.
    checks = [first, *check_admin(settings)]
    database = await check_database(settings)
    checks += database
    if all(c.status == OK for c in database):
        checks += await check_reconciliation(settings)
    for check in (check_redis, check_comfyui):
        checks += await check(settings)
    workers, other_comfyuis = await check_workers(settings)
    for url in other_comfyuis:
        checks += await check_comfyui(settings, presets=False, comfyui_url=url)
    return checks + workers + await check_telegram(settings)


def render(checks: list[Check]) -> str:
    rows = [("check", "status", "detail")] + [(c.name, c.status, c.detail) for c in checks]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}} | {b:<{w1}} | {c}".rstrip() for a, b, c in rows)


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0
