"""Shared fixtures: real PostgreSQL, SQLite and Redis; the backend app in-process."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import make_url

from comfygram.backend.app import create_app
from comfygram.settings import Settings
from tests.helpers import API_TOKEN, backend_client, seed_sqlite

WEBHOOK_SECRET = "test_webhook_secret_77"
# The pytest-xdist worker this process is ("gw0", "gw1", ...), "" when pytest runs alone.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")


def _postgres_url() -> str:
    """One database per pytest process (named after it), so neither two runs on one machine nor
    two xdist workers of one run ever meet; a TEST_POSTGRES_URL gets the worker's name added."""
    configured = os.environ.get("TEST_POSTGRES_URL")
    if not configured:
        return f"postgresql+asyncpg://postgres@127.0.0.1:5432/comfygram_test_{os.getpid()}"
    if not XDIST_WORKER:
        return configured
    url = make_url(configured)
    return url.set(database=f"{url.database}_{XDIST_WORKER}").render_as_string(hide_password=False)


POSTGRES_URL = _postgres_url()
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
DATABASES = ["sqlite", "postgres"]


# The real-ComfyUI tier (docs/testing.md): its tests share ComfyUI's one models/ folder, where
# placeholder files come and go, and a session-scoped server, so they all run on one worker.
REAL_COMFYUI_TESTS = "tests/test_real_comfyui"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "money: moves credits or Stars; `comfygram audit` runs on the test's database after it "
        "and any discrepancy fails the test (docs/testing.md)",
    )


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unused when pytest runs alone
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``-n N`` (as scripts/test runs): each test is sent to the next free worker, except the
    real-ComfyUI tier, which is one unit of work, sent first, on one worker.

    xdist's own ``--dist loadgroup`` would do this with a marker, but it renames test ids in a
    way pytest 9 ignores; this scheduler goes by the file name instead.
    """
    if config.getoption("dist") != "load":  # another --dist asked for explicitly
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        # Units are sent largest first, so the tier starts at once beside the single tests.
        def _split_scope(self, nodeid: str) -> str:
            return "real_comfyui" if nodeid.startswith(REAL_COMFYUI_TESTS) else nodeid

    return Scheduling(config, log)


async def _postgres_admin(statement: str) -> None:
    parsed = make_url(POSTGRES_URL)
    admin = await asyncpg.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username, database="postgres"
    )
    try:
        await admin.execute(statement.format(name=parsed.database))
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    await _postgres_admin('DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await _postgres_admin('CREATE DATABASE "{name}"')
    yield POSTGRES_URL
    await _postgres_admin('DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _empty_postgres(url: str) -> None:
    """Delete every row (the schema stays) and restart the id sequences: what TRUNCATE ...
    RESTART IDENTITY does, in about 1 ms instead of 100 ms or more (TRUNCATE gives each table
    new files, on every one of the ~540 PostgreSQL tests)."""
    parsed = make_url(url)
    conn = await asyncpg.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username, database=parsed.database
    )
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'"
        )
        sequences = await conn.fetch(
            "SELECT sequencename, start_value FROM pg_sequences WHERE schemaname = 'public'"
        )
        async with conn.transaction():
            # Every table is emptied, so the foreign keys need no checking on the way.
            await conn.execute("SET LOCAL session_replication_role = replica")
            for table in tables:
                await conn.execute(f'DELETE FROM "{table["tablename"]}"')
            for sequence in sequences:
                await conn.execute(
                    "SELECT setval($1::regclass, $2, false)",
                    f'"{sequence["sequencename"]}"',
                    sequence["start_value"],
                )
    finally:
        await conn.close()


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """Each test runs once on SQLite (a new file) and once on PostgreSQL (emptied first)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/comfygram.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def empty_database(database_url: str) -> str:
    if database_url.startswith("postgresql"):
        await _empty_postgres(database_url)
    return database_url


@pytest.fixture
def redis_prefix() -> str:
    return f"cgtest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(empty_database: str, tmp_path, redis_prefix: str) -> Settings:
    return Settings(
        _env_file=None,
        api_token=API_TOKEN,
        webhook_secret=WEBHOOK_SECRET,
        database_url=empty_database,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        media_dir=tmp_path / "media",
        signup_bonus=3,
        reconcile_interval_seconds=0.2,
        max_upload_bytes=2 * 1024 * 1024,
        max_image_pixels=20_000_000,
    )


@pytest.fixture
async def redis(redis_prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    # SCAN walks the whole database (other tests' keys too): 1000 a step, not Redis's 10, so
    # a teardown is a few round trips rather than one per ten keys.
    keys = [key async for key in client.scan_iter(f"{redis_prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def seeded_database(settings: Settings) -> None:
    """A new SQLite file starts as a copy of one migrated once per test process (seed_sqlite);
    PostgreSQL is kept at head."""
    await seed_sqlite(settings.database_url)


@pytest.fixture
async def app(settings: Settings, redis: Redis, seeded_database: None) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the backend, carrying the service token."""
    async with backend_client(app) as client:
        yield client


async def audit_database(database_url: str) -> list[str] | None:
    """The ledger audit over a test's database, one line per discrepancy; None when there is
    nothing to audit (the test never made the database, or never migrated it)."""
    from sqlalchemy.exc import DBAPIError

    from comfygram.backend import audit, db

    if database_url.startswith("sqlite"):
        path = make_url(database_url).database
        if not path or not await asyncio.to_thread(os.path.exists, path):
            return None
    engine = db.create_engine(database_url)
    try:
        async with db.create_sessionmaker(engine)() as session:
            return [str(d) for d in await audit.run(session)]
    except DBAPIError as exc:
        if "no such table" in str(exc) or "does not exist" in str(exc):
            return None
        raise
    finally:
        await engine.dispose()


@pytest.fixture(autouse=True)
async def money_audit(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """After a test marked ``money`` that used a database, `comfygram audit`'s checks run on
    that database; a discrepancy fails the test (an error at teardown, naming each one)."""
    yield
    if request.node.get_closest_marker("money") is None:
        return
    # Every fixture of the test is in funcargs (this one, autouse, is set up first and torn
    # down last, after the app and its engine).
    settings = (request.node.funcargs or {}).get("settings")
    if not isinstance(settings, Settings):
        return
    database_url = settings.database_url
    found = await audit_database(database_url)
    if found:
        pytest.fail("the ledger audit found after this money test:\n" + "\n".join(found))
