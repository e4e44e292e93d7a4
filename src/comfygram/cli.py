"""The `comfygram` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from comfygram import __version__
from comfygram.health import alive_while
from comfygram.logs import redact, setup_logging
from comfygram.presets import PresetError
from comfygram.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import async_sessionmaker

T = TypeVar("T")

# Commands that keep running: they say at start where their settings came from.
LONG_RUNNING = ("run", "backend", "worker", "bot")


def _backend(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from comfygram import startup
    from comfygram.backend.app import create_app
    from comfygram.backend.limits import http_protocol

    app = create_app(settings)  # checks the settings it needs first
    settings.require_shared_redis("backend")
    host, port = args.host or settings.backend_host, args.port or settings.backend_port
    workers = args.workers or settings.backend_workers
    startup.check_port_free(host, port, "BACKEND_PORT (or --port)")
    asyncio.run(_backend_dependencies(settings))
    served = {"host": host, "port": port, "log_config": None, "proxy_headers": True}
    if workers == 1:
        startup.keep_startup_objects_out_of_gc()
        # slow headers get 408 (docs/security.md#uploads)
        uvicorn.run(app, http=http_protocol(), **served)
        return
    _serve_processes(settings, args, workers, served)


def _serve_processes(
    settings: Settings, args: argparse.Namespace, workers: int, served: dict[str, object]
) -> None:
    """uvicorn with ``workers`` processes on one socket, each its own app
    (backend.app.create_process_app). Done once here, before they start: the migrations and
    the presets' sync, and a fresh folder for their Prometheus values (docs/deploy.md)."""
    import tempfile

    import uvicorn

    from comfygram import metrics
    from comfygram.backend import db
    from comfygram.backend.app import ENV_FILE_VARIABLE, prepare_database
    from comfygram.presets import load_presets

    async def prepare() -> None:
        engine = db.create_engine(settings.database_dsn)
        try:
            await prepare_database(engine, settings, load_presets(settings.presets_dir))
        finally:
            await engine.dispose()

    asyncio.run(prepare())
    env_file, _ = _settings_source(args.env_file)
    with tempfile.TemporaryDirectory(prefix="comfygram-metrics-") as values:
        # The processes are spawned: they inherit the environment, not this process's objects.
        os.environ[metrics.MULTIPROCESS_DIR_VARIABLE] = values
        os.environ[ENV_FILE_VARIABLE] = str(env_file.resolve()) if env_file else ""
        uvicorn.run(
            "comfygram.backend.app:create_process_app",
            factory=True,
            workers=workers,
            http="comfygram.backend.app:HeaderDeadlineProtocol",
            **served,
        )


async def _backend_dependencies(settings: Settings) -> None:
    """The database must work; Redis must be set up right but may come later (jobs are put
    back on the queue when it does)."""
    from comfygram import startup

    startup.check_media_dir(settings)
    await startup.check_database(settings)
    warning = await startup.check_redis(settings)
    if warning:
        print(f"comfygram: warning: {warning}", file=sys.stderr)


def _migrate(settings: Settings, _args: argparse.Namespace) -> None:
    from comfygram import startup
    from comfygram.backend import db

    async def run() -> str | None:
        await startup.check_database(settings)
        engine = db.create_engine(settings.database_dsn)
        try:
            await db.migrate(engine)
            return await db.current_revision(engine)
        finally:
            await engine.dispose()

    print(f"database migrated to revision {asyncio.run(run())}")


def _worker(settings: Settings, _args: argparse.Namespace) -> None:
    from comfygram import startup
    from comfygram.worker.main import run_worker

    settings.require_shared_redis("worker")
    asyncio.run(_redis_set_up_right(settings))
    startup.keep_startup_objects_out_of_gc()
    asyncio.run(alive_while(run_worker(settings), settings, "worker"))


async def _redis_set_up_right(settings: Settings) -> None:
    """Stop on a Redis set up wrongly (password, database index); one that is down is a
    warning: the command waits for it."""
    from comfygram import startup

    warning = await startup.check_redis(settings)
    if warning:
        print(f"comfygram: warning: {warning}", file=sys.stderr)


def _bot(settings: Settings, _args: argparse.Namespace) -> None:
    from comfygram import startup
    from comfygram.bot import BotRuntime

    if settings.webhook_url:
        raise ConfigError(
            "WEBHOOK_URL is set: the backend receives the updates (comfygram backend); "
            "unset it to run the bot with long polling"
        )
    settings.require_shared_redis("bot")
    asyncio.run(_redis_set_up_right(settings))

    async def poll() -> None:
        await BotRuntime(settings).run_polling()

    startup.keep_startup_objects_out_of_gc()
    asyncio.run(alive_while(poll(), settings, "bot"))


def _healthcheck(settings: Settings, args: argparse.Namespace) -> None:
    from comfygram import health

    healthy, line = health.check(settings, max_age=args.max_age)
    print(f"comfygram: {line}")
    raise SystemExit(0 if healthy else 1)


def _run(settings: Settings, _args: argparse.Namespace) -> None:
    from comfygram.run import main as run_everything

    run_everything(settings)


def _doctor(settings: Settings, _args: argparse.Namespace) -> None:
    from comfygram import doctor

    checks = asyncio.run(doctor.run_doctor(settings))
    print(doctor.render(checks))
    raise SystemExit(doctor.exit_code(checks))


def _presets(settings: Settings, args: argparse.Namespace) -> None:
    from comfygram import doctor
    from comfygram.presets import load_presets

    if args.presets_command in (None, "list"):
        header = ("preset", "title", "price", "on", "photos", "asks for text", "options")
        rows = [(*header, "gives", "model files")]
        for p in load_presets(settings.presets_dir):
            prompt = p.contract.prompt
            rows.append(
                (
                    p.slug,
                    p.title.get("en") or next(iter(p.title.values()), ""),
                    f"{p.price} credit{'' if p.price == 1 else 's'}",
                    "yes" if p.enabled else "no",
                    str(len(p.contract.photos)),
                    "no" if prompt is None else "yes" if prompt.required else "optional",
                    "; ".join(
                        f"{o.id}: {', '.join(c.id for c in o.choices)}" for o in p.contract.options
                    )
                    or "none",
                    p.contract.output.kind.value,
                    ", ".join(f"{m.folder}/{m.name}" for m in p.models) or "none",
                )
            )
        print(_table(rows))
        return
    # Previews are doctor's advice, not a reason to refuse a deploy.
    checks = asyncio.run(doctor.check_comfyui(settings, previews=False, only_enabled=True))
    print(doctor.render(checks))
    # Stricter than doctor: every enabled preset must run here (usable as a deploy gate).
    raise SystemExit(0 if all(c.status == doctor.OK for c in checks) else 1)


async def _with_sessions(
    settings: Settings, work: Callable[[async_sessionmaker], Awaitable[T]]
) -> T:
    """Run ``work(sessions)`` against the database the settings name, then dispose of it."""
    from comfygram import startup
    from comfygram.backend import db

    await startup.check_database(settings)
    engine = db.create_engine(settings.database_dsn)
    try:
        return await work(db.create_sessionmaker(engine))
    finally:
        await engine.dispose()


def _payments(settings: Settings, args: argparse.Namespace) -> None:
    from comfygram.backend import stars

    settings.require("bot_token")

    async def reconcile(sessions: async_sessionmaker) -> tuple[stars.PassResult, int]:
        result = await stars.reconcile_with_bot(sessions, settings)
        async with sessions() as session:
            open_count = await stars.unresolved_count(session)
        return result, open_count

    result, open_count = asyncio.run(_with_sessions(settings, reconcile))
    if result.error:
        print(f"reconciliation #{result.id} stopped, nothing changed: {result.error}")
        raise SystemExit(1)
    for line in result.found:
        print(line)
    print(
        f"reconciliation #{result.id}: {result.transactions} Star transactions, "
        f"{result.credited} credited late, {result.flagged} new discrepancies, "
        f"{open_count} unresolved"
    )
    raise SystemExit(1 if open_count else 0)


def _audit(settings: Settings, _args: argparse.Namespace) -> None:
    from comfygram.backend import audit

    async def run(sessions: async_sessionmaker) -> tuple[list[audit.Discrepancy], int]:
        async with sessions() as session:
            return await audit.run(session), await audit.user_count(session)

    found, users = asyncio.run(_with_sessions(settings, run))
    for item in found:
        print(item)
    print(audit.summary(found, users))
    raise SystemExit(1 if found else 0)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfygram",
        description="A paid AI photo-editing service on Telegram, rendered by ComfyUI.",
        epilog="Settings come from the environment and .env (see docs/settings.md). "
        "`comfygram COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"comfygram {__version__}")
    parser.add_argument(
        "--env-file",
        metavar="PATH",
        type=Path,
        help="read settings from this file instead of ./.env (the environment still wins)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback when a command stops on an error (so does LOG_LEVEL=DEBUG)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=summary, description=summary[0].upper() + summary[1:] + "."
        )

    command(
        "run", "one machine: the backend, a worker and the bot (polling) in one process"
    ).set_defaults(handler=_run)

    backend = command("backend", "serve the REST API, the Telegram webhook and the admin panel")
    backend.add_argument("--host", help="default: BACKEND_HOST or 127.0.0.1")
    backend.add_argument("--port", type=int, help="default: BACKEND_PORT or 8000")
    backend.add_argument(
        "--workers",
        type=int,
        choices=range(1, 65),
        metavar="N",
        help="processes serving the API, about one per core (default: BACKEND_WORKERS or 1)",
    )
    backend.set_defaults(handler=_backend)

    command("worker", "run jobs on one ComfyUI (COMFYUI_URL) and deliver the results").set_defaults(
        handler=_worker
    )
    command("bot", "run the Telegram bot with long polling").set_defaults(handler=_bot)
    command("migrate", "apply the database migrations and exit").set_defaults(handler=_migrate)
    command(
        "doctor", "check the settings, database, Redis, ComfyUI, workers and bot token"
    ).set_defaults(handler=_doctor)

    healthcheck = command(
        "healthcheck", "exit 0 if this machine's comfygram process is alive (for Docker)"
    )
    healthcheck.add_argument(
        "--max-age",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a worker's or bot's heartbeat file older than this is unhealthy (default 30)",
    )
    healthcheck.set_defaults(handler=_healthcheck)

    presets = command("presets", "list the presets, or check them against this ComfyUI")
    presets.add_argument(
        "presets_command",
        nargs="?",
        choices=["list", "check"],
        help="list (the default): title, price, on/off, model files; check: which enabled "
        "presets this ComfyUI can run (exit 1 if one cannot)",
    )
    presets.set_defaults(handler=_presets)

    payments = command("payments", "Telegram Stars payments: reconcile with Telegram")
    payments.add_argument(
        "payments_command",
        choices=["reconcile"],
        help="reconcile: compare Telegram's Star transactions with the payments table, credit "
        "a charge whose update was lost, flag the rest (exit 1 if anything is unresolved)",
    )
    payments.set_defaults(handler=_payments)
    command(
        "audit",
        "check the books: balances, payments, refunds, jobs, promo codes",
    ).set_defaults(handler=_audit)
    return parser


def _settings_source(env_file: Path | None) -> tuple[Path | None, str]:
    """The .env file to read (None: none) and one line saying so."""
    if env_file is not None:
        if not env_file.is_file():
            raise ConfigError(f"--env-file {env_file}: no such file")
        return env_file, f"settings: {env_file.resolve()} and the environment (which wins)"
    default = Path(".env")
    if default.is_file():
        return default, f"settings: {default.resolve()} and the environment (which wins)"
    return None, f"settings: the environment only (no .env in {Path.cwd()})"


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `comfygram` alone: the help, which is what was asked for
        parser.print_help()
        raise SystemExit(0)
    debug = args.debug or os.environ.get("LOG_LEVEL", "").upper() == "DEBUG"
    secrets: list[str] = []
    try:
        env_file, source = _settings_source(args.env_file)
        settings = load_settings(_env_file=env_file)
        debug = debug or settings.log_level.upper() == "DEBUG"
        secrets = settings.secrets()
        if args.command in LONG_RUNNING:
            print(f"comfygram: {source}", flush=True)
        setup_logging(settings.log_level, settings.log_json, settings.secrets())
        args.handler(settings, args)
    except (ConfigError, PresetError) as exc:
        if debug:
            traceback.print_exc()
        print(f"comfygram: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as exc:  # a bug or an outage nobody foresaw: still one line
        if debug:
            traceback.print_exc()
        first = redact((str(exc).strip().splitlines() or [""])[0][:300], secrets)
        hint = "" if debug else " (run with --debug for the traceback)"
        print(f"comfygram {args.command}: {type(exc).__name__}: {first}{hint}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
