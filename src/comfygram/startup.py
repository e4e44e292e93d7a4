"""What a command checks before it starts, and one line for each mistake in the environment.

A command that cannot work (the database refuses us, Redis has no such database, the port is
taken) stops before it starts anything, with one line naming the setting and what to check,
instead of the traceback of whichever library hit the problem first.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

from comfygram.settings import ConfigError, Settings

CHECK_TIMEOUT = 5.0


def keep_startup_objects_out_of_gc() -> None:
    """Leave what starting made (modules, classes, schemas, routes: 150,000 to 220,000 objects
    that live as long as the process) out of every later garbage collection. A full collection
    walked them all with the event loop stopped: 149 ms in the worker, 76 ms in the backend.
    Garbage is collected first, so none of it is kept for good."""
    gc.collect()
    gc.freeze()


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and contexts, and what exception groups hold."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        todo += list(getattr(current, "exceptions", ()))
        orig = getattr(current, "orig", None)  # SQLAlchemy's wrapper of the driver's error
        if isinstance(orig, BaseException):
            todo.append(orig)


def database_where(settings: Settings) -> str:
    """host:port of a PostgreSQL DATABASE_URL, or the SQLite file (never the password)."""
    url = urlsplit(settings.database_url)
    if url.scheme.startswith("sqlite"):
        return url.path.removeprefix("/") or ":memory:"
    return f"{url.hostname or 'localhost'}:{url.port or 5432}"


def explain_database_error(exc: BaseException, settings: Settings) -> str | None:
    """One line for a database connection failure we can explain, else None."""
    import asyncpg

    where = database_where(settings)
    url = urlsplit(settings.database_url)
    for error in _chain(exc):
        if isinstance(error, asyncpg.InvalidPasswordError):
            return (
                f"DATABASE_URL: PostgreSQL at {where} rejected the password for user "
                f'"{url.username}": check the password in DATABASE_URL'
            )
        if isinstance(error, asyncpg.InvalidAuthorizationSpecificationError):
            return (
                f"DATABASE_URL: PostgreSQL at {where} refused the login ({error}): check the "
                "user name in DATABASE_URL, and pg_hba.conf on the server"
            )
        if isinstance(error, asyncpg.InvalidCatalogNameError):
            name = url.path.strip("/")
            return (
                f'DATABASE_URL: database "{name}" does not exist on {where}: create it '
                f"(createdb -h {url.hostname} -U {url.username or 'postgres'} {name}) or fix "
                "the name in DATABASE_URL"
            )
        if isinstance(error, asyncpg.PostgresError):
            return f"DATABASE_URL: PostgreSQL at {where} refused us: {error}"
        if isinstance(error, socket.gaierror):
            return f"DATABASE_URL: unknown host {url.hostname}: check the host name in DATABASE_URL"
        if isinstance(error, ConnectionRefusedError):
            return (
                f"DATABASE_URL: nothing answers at {where}: check the host and port in "
                "DATABASE_URL, and that PostgreSQL is running there"
            )
        if isinstance(error, TimeoutError):
            return (
                f"DATABASE_URL: no answer from {where} within {CHECK_TIMEOUT:.0f} s: check the "
                "host and port, and any firewall on the way"
            )
        if isinstance(error, PermissionError) or "unable to open database file" in str(error):
            return (
                f"DATABASE_URL: cannot open the SQLite file {where}: check that its folder "
                "exists or can be created, and is writable"
            )
        if isinstance(error, OSError):
            return f"DATABASE_URL: cannot reach {where}: {error.strerror or error}"
    return None


async def check_database(settings: Settings) -> None:
    """Connect once; raise ConfigError with one line when the database cannot be used."""
    from sqlalchemy import text

    from comfygram.backend import db

    try:
        engine = db.create_engine(settings.database_dsn)  # SQLite: creates its folder
    except OSError as exc:
        raise ConfigError(
            f"DATABASE_URL: cannot create the folder of the SQLite file {database_where(settings)} "
            f"({exc.strerror}): check the path, and that it is writable"
        ) from exc
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            with _quiet("alembic"):  # its "Context impl" lines say nothing here
                current = await db.current_revision(engine)
    except Exception as exc:
        explained = explain_database_error(exc, settings)
        if explained is None:
            raise
        raise ConfigError(explained) from exc
    finally:
        await engine.dispose()
    if current is not None and current not in _known_revisions():
        raise ConfigError(
            f"DATABASE_URL: the database at {database_where(settings)} is at schema revision "
            f"{current}, which this comfygram does not know (a newer version migrated it?): "
            "run the version that did, or point DATABASE_URL at another database"
        )


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _known_revisions() -> set[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from comfygram.backend.db import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}


def check_media_dir(settings: Settings) -> None:
    """MEDIA_DIR must be a folder the backend can write (created when missing)."""
    folder = settings.media_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".comfygram-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"MEDIA_DIR: cannot write to {folder} ({exc.strerror}): choose a folder this user "
            "can create and write"
        ) from None


def redis_setting(settings: Settings) -> str:
    """The name of the setting that says which Redis to use."""
    return "REDIS_URL" if settings.redis_url else "REDIS_DB"


async def check_redis(settings: Settings) -> str | None:
    """Raise ConfigError for a Redis that is there but set up wrongly (password, database
    index); return a warning when it does not answer (the caller decides whether to wait)."""
    from redis.asyncio import Redis
    from redis.exceptions import AuthenticationError, RedisError, ResponseError

    url = urlsplit(settings.redis_dsn)
    where = url.path if url.scheme == "unix" else f"{url.hostname}:{url.port or 6379}"
    client = Redis.from_url(
        settings.redis_dsn, socket_connect_timeout=CHECK_TIMEOUT, socket_timeout=CHECK_TIMEOUT
    )
    try:
        await client.ping()
    except AuthenticationError:
        raise ConfigError(
            f"Redis at {where} refused the password: check REDIS_PASSWORD (or the one in REDIS_URL)"
        ) from None
    except ResponseError as exc:
        if "DB index is out of range" in str(exc):
            database = client.connection_pool.connection_kwargs.get("db", "?")
            raise ConfigError(
                f"{redis_setting(settings)}: database {database} is out of range on the Redis "
                f"at {where} (it has 16, 0-15, unless its `databases` setting says more)"
            ) from None
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise ConfigError(
                f"Redis at {where} wants a password: set REDIS_PASSWORD (or put it in REDIS_URL)"
            ) from None
        raise
    except (RedisError, OSError):
        return f"Redis not reachable at {where} (REDIS_URL): check that it runs there"
    finally:
        await client.aclose()
    return None


def check_port_free(host: str, port: int, setting: str = "BACKEND_PORT") -> None:
    """Raise ConfigError when host:port cannot be listened on (taken, or not ours)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"{host}:{port} is already in use: stop what listens there or choose "
                    f"another {setting}"
                ) from None
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror}): check BACKEND_HOST and {setting}"
            ) from None
