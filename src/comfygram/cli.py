"""The `comfygram` command."""

from __future__ import annotations

import argparse
import asyncio
import sys

from comfygram.logs import setup_logging
from comfygram.presets import PresetError
from comfygram.settings import ConfigError, Settings, load_settings


def _backend(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from comfygram.backend.app import create_app

    app = create_app(settings)
    settings.require_shared_redis("backend")
    uvicorn.run(
        app,
        host=args.host or settings.backend_host,
        port=args.port or settings.backend_port,
        log_config=None,
        proxy_headers=True,
    )


def _migrate(settings: Settings, _args: argparse.Namespace) -> None:
    from comfygram.backend import db

    async def run() -> str | None:
        engine = db.create_engine(settings.database_dsn)
        try:
            await db.migrate(engine)
            return await db.current_revision(engine)
        finally:
            await engine.dispose()

    print(f"database migrated to revision {asyncio.run(run())}")


def _worker(settings: Settings, _args: argparse.Namespace) -> None:
    from comfygram.worker.main import run_worker

    settings.require_shared_redis("worker")
    asyncio.run(run_worker(settings))


def _bot(settings: Settings, _args: argparse.Namespace) -> None:
    from comfygram.bot import BotRuntime

    if settings.webhook_url:
        raise ConfigError(
            "WEBHOOK_URL is set: the backend receives the updates (comfygram backend); "
            "unset it to run the bot with long polling"
        )
    settings.require_shared_redis("bot")

    async def poll() -> None:
        await BotRuntime(settings).run_polling()

    asyncio.run(poll())


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

    if args.presets_command == "list":
        print("slug | price | enabled | takes_prompt | models")
        for p in load_presets(settings.presets_dir):
            models = ", ".join(f"{m.folder}/{m.name}" for m in p.models) or "-"
            print(f"{p.slug} | {p.price} | {p.enabled} | {p.takes_prompt} | {models}")
        return
    checks = asyncio.run(doctor.check_comfyui(settings, only_enabled=True))
    print(doctor.render(checks))
    # Stricter than doctor: every enabled preset must run here (usable as a deploy gate).
    raise SystemExit(0 if all(c.status == doctor.OK for c in checks) else 1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfygram", description="A paid AI photo-editing service on Telegram."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="one machine: the backend, a worker and the bot (polling) together"
    )
    run.set_defaults(handler=_run)

    backend = commands.add_parser("backend", help="run the REST API (and Telegram webhook)")
    backend.add_argument("--host", help="default: BACKEND_HOST or 127.0.0.1")
    backend.add_argument("--port", type=int, help="default: BACKEND_PORT or 8000")
    backend.set_defaults(handler=_backend)

    worker = commands.add_parser("worker", help="run jobs on one ComfyUI (COMFYUI_URL)")
    worker.set_defaults(handler=_worker)

    bot = commands.add_parser("bot", help="run the Telegram bot with long polling")
    bot.set_defaults(handler=_bot)

    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    migrate.set_defaults(handler=_migrate)

    doctor = commands.add_parser("doctor", help="check settings, database, Redis, ComfyUI, bot")
    doctor.set_defaults(handler=_doctor)

    presets = commands.add_parser("presets", help="list presets or check them against ComfyUI")
    presets.add_argument("presets_command", choices=["list", "check"])
    presets.set_defaults(handler=_presets)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        setup_logging(settings.log_level, settings.log_json, settings.secrets())
        args.handler(settings, args)
    except (ConfigError, PresetError) as exc:
        print(f"comfygram: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
