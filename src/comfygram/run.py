"""`comfygram run`: the backend, one worker and the bot (polling) in one process.

For a one-machine install. Before starting anything it checks what the three need and says
exactly what to do about whatever is missing; Ctrl-C (or SIGTERM) stops all three cleanly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import sys

import httpx
import uvicorn
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from comfygram import startup
from comfygram.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from comfygram.settings import ConfigError, Settings

log = logging.getLogger(__name__)

_CHECK_TIMEOUT = 3.0


async def preflight(settings: Settings) -> tuple[list[str], list[str]]:
    """(problems that stop the start, warnings), each one line saying what to do."""
    problems: list[str] = []
    warnings: list[str] = []
    if settings.api_token is None:
        problems.append(
            "API_TOKEN is not set: add API_TOKEN=<random text> to .env "
            "(make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if settings.bot_token is None:
        problems.append(
            "BOT_TOKEN is not set: get one from @BotFather in Telegram (/newbot) "
            "and add BOT_TOKEN=... to .env"
        )
    if settings.webhook_url:
        problems.append(
            "WEBHOOK_URL is set, but comfygram run receives updates by polling: unset it, "
            "or run comfygram backend/worker separately for webhook mode"
        )
    if settings.redis_configured:  # else run_all starts an embedded one
        problems += await _configured_redis_problems(settings)
    problems += await _database_and_port_problems(settings)
    try:
        async with httpx.AsyncClient(timeout=_CHECK_TIMEOUT) as http:
            (await http.get(f"{settings.comfyui_url.rstrip('/')}/system_stats")).raise_for_status()
    except httpx.HTTPError:
        warnings.append(
            f"ComfyUI not reachable at {settings.comfyui_url}: jobs wait in the queue until it "
            "answers (set COMFYUI_URL to where it runs)"
        )
    return problems, warnings


async def _database_and_port_problems(settings: Settings) -> list[str]:
    """The database must answer and the backend's port be free, before anything starts."""
    problems = []
    try:
        startup.check_port_free(settings.backend_host, settings.backend_port)
    except ConfigError as exc:
        problems.append(str(exc))
    try:
        startup.check_media_dir(settings)
    except ConfigError as exc:
        problems.append(str(exc))
    try:
        await startup.check_database(settings)
    except ConfigError as exc:
        problems.append(str(exc))
    return problems


async def _configured_redis_problems(settings: Settings) -> list[str]:
    """The configured Redis must answer: never a silent fall back to an embedded one."""
    where = f"{settings.redis_host}:{settings.redis_port}"
    if settings.redis_url:
        where = settings.redis_url.rsplit("@", 1)[-1].removeprefix("redis://")
    redis = Redis.from_url(
        settings.redis_dsn, socket_connect_timeout=_CHECK_TIMEOUT, socket_timeout=_CHECK_TIMEOUT
    )
    try:
        await redis.ping()
    except AuthenticationError:
        return [f"Redis at {where} refused the password: check REDIS_PASSWORD"]
    except ResponseError as exc:  # e.g. no such database: reachable, set up wrongly
        try:
            await startup.check_redis(settings)
        except ConfigError as explained:
            return [str(explained)]
        return [f"Redis at {where} refused us: {exc}"]
    except (RedisError, OSError):
        return [
            f"Redis not reachable at {where}: start it or correct REDIS_URL "
            "(with no REDIS_URL nor REDIS_HOST/PORT/DB/PASSWORD, comfygram run starts its own)"
        ]
    finally:
        await redis.aclose()
    return []


async def _serve(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as exit:  # uvicorn's way to report a failed start or a busy port
        raise RuntimeError(f"the backend exited with code {exit.code}") from None


async def run_all(settings: Settings) -> int:
    """Start the three parts; returns the exit code."""
    problems, warnings = await preflight(settings)
    for warning in warnings:
        print(f"comfygram: warning: {warning}", file=sys.stderr)
    if problems:
        for problem in problems:
            print(f"comfygram: {problem}", file=sys.stderr)
        return 2
    if settings.redis_configured:
        return await _run_parts(settings)
    embedded = EmbeddedRedis(settings.embedded_redis_dir)
    try:
        await embedded.start()
    except EmbeddedRedisError as exc:
        print(f"comfygram: {exc}", file=sys.stderr)
        return 2
    print(
        f"comfygram: Redis: embedded, Redis {embedded.version} with its data in "
        f"{settings.embedded_redis_dir} (socket {embedded.socket}); to use your own instead, "
        "set REDIS_URL in .env",
        flush=True,
    )
    try:
        return await _run_parts(settings.model_copy(update={"redis_url": embedded.url}))
    finally:
        await embedded.stop()  # after everything that uses it


def single_machine_settings(settings: Settings) -> Settings:
    """The settings `comfygram run` gives its parts: the bot and the worker talk to its own
    backend, and the API docs are on while that backend listens on loopback only (unless
    API_DOCS says otherwise)."""
    host, port = settings.backend_host, settings.backend_port
    own = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    api_docs = settings.api_docs
    if api_docs is None:
        api_docs = host == "localhost" or _is_loopback(host)
    return settings.model_copy(
        update={"backend_url": own, "backend_api_url": own, "api_docs": api_docs}
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _run_parts(settings: Settings) -> int:
    """The backend, the worker and the bot, until a signal or one of them fails."""
    from comfygram.backend.app import create_app
    from comfygram.backend.limits import http_protocol
    from comfygram.bot import BotRuntime
    from comfygram.worker.main import run_worker

    host, port = settings.backend_host, settings.backend_port
    settings = single_machine_settings(settings)
    own = settings.backend_url
    # Before the backend starts: a malformed BOT_TOKEN is then one line, not a torn-down server.
    bot = BotRuntime(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host=host, port=port, log_config=None, http=http_protocol()
        )
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    backend = asyncio.create_task(_serve(server), name="backend")
    while not server.started:
        if backend.done():
            backend.exception()  # retrieved: its traceback is not worth printing
            print(
                f"comfygram: the backend could not start on {host}:{port} (the reason is above)",
                file=sys.stderr,
            )
            return 1
        await asyncio.sleep(0.05)

    startup.keep_startup_objects_out_of_gc()
    parts = {
        backend,
        asyncio.create_task(run_worker(settings, stop), name="worker"),
        asyncio.create_task(bot.run_polling(handle_signals=False), name="bot"),
    }
    print(
        f"comfygram is running: backend {own}"
        + (f" (API docs {own}/docs)" if settings.api_docs else "")
        + ", worker on "
        f"{settings.comfyui_url}, bot polling Telegram. Ctrl-C stops everything.",
        flush=True,
    )
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({stopper, *parts}, return_when=asyncio.FIRST_COMPLETED)
    failed = [task for task in done if task is not stopper and task.exception() is not None]
    for task in failed:
        log.error("%s stopped: %r", task.get_name(), task.exception())
    stop.set()
    await bot.stop()
    server.should_exit = True
    # The worker may take its grace period to finish a job; a part slower than that is stuck,
    # and the log says which one.
    within = settings.worker_grace_seconds + 30
    _, stuck = await asyncio.wait(parts, timeout=within)
    for task in stuck:
        log.error("%s did not stop within %.0f s; cut short", task.get_name(), within)
        task.cancel()
    if stuck:
        await asyncio.wait(stuck, timeout=5)
    for task in parts - stuck - set(failed):
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed while stopping: %r", task.get_name(), task.exception())
    stopper.cancel()
    print("comfygram stopped.", flush=True)
    return 1 if failed or stuck else 0


def main(settings: Settings) -> None:
    raise SystemExit(asyncio.run(run_all(settings)))
