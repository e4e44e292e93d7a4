"""Database engine, sessions and migrations for PostgreSQL (asyncpg) and SQLite (aiosqlite)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works; it keeps two backends starting together from migrating at once.
_MIGRATION_LOCK_ID = 7_482_301


# A pooled PostgreSQL connection idle longer than this is pinged before it is used again.
PING_AFTER_IDLE_SECONDS = 1.0


def create_engine(dsn: str) -> AsyncEngine:
    url = make_url(dsn)
    if url.get_backend_name() != "sqlite":
        # 20 kept (a process under 20 concurrent requests does not open and close a
        # connection per request), at most 30 as before.
        engine = create_async_engine(url, pool_size=20, max_overflow=10)
        _ping_when_idle(engine)
        return engine

    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (see below) instead of the driver's deferred BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Take the write lock up front: a deferred transaction that reads a balance and then
        # writes it fails with "database is locked" under concurrency instead of waiting.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Check a pooled connection before use when it sat idle, so one the server dropped (a
    restart) is replaced instead of failing a request.

    SQLAlchemy's pool_pre_ping checks at every checkout, and asyncpg's ping is three round
    trips (BEGIN, a query, ROLLBACK): more than a status read's own query. A connection
    handed back less than a second ago has just worked.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:
            # The pool drops this connection and checks out another (a new one if need be).
            raise DisconnectionError() from exc


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema up to `revision`; safe to run from several processes at once."""

    def upgrade(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID}
            )
        command.upgrade(_alembic_config(connection), revision)

    async with engine.begin() as connection:
        await connection.run_sync(upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)
