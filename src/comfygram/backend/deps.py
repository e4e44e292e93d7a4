"""FastAPI dependencies: the service token check and the shared objects on app.state."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from comfygram.backend import db
from comfygram.backend.storage import MediaStore
from comfygram.backend.workers import WorkerRegistry
from comfygram.queue import JobQueue
from comfygram.settings import Settings


def has_api_token(request: Request, expected: bytes) -> bool:
    """Whether the request carries `Authorization: Bearer <API_TOKEN>` (constant-time check)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


async def creation_turn(request: Request) -> AsyncIterator[None]:
    """Hold one of the process's turns for a job creation (CREATION_TURNS). FastAPI reads the
    request's body before it solves a dependency, so a client that sends slowly holds none."""
    turns: asyncio.Semaphore | None = request.app.state.creation_turns
    if turns is None:
        yield
        return
    async with turns:
        yield


async def _reader(request: Request) -> AsyncIterator[AsyncConnection]:
    """A connection for a read of one statement. On PostgreSQL it runs in autocommit (the
    statement is its own snapshot), which spares the BEGIN and ROLLBACK round trips around it;
    SQLite's connections keep their transactions (see db.create_engine)."""
    engine = request.app.state.engine
    async with engine.connect() as connection:
        if db.is_postgres(engine):
            await connection.execution_options(isolation_level="AUTOCOMMIT")
        yield connection


# The getters below are coroutines on purpose: FastAPI runs a plain function dependency in its
# thread pool, a hop per request that, with the event loop busy, waits for the GIL.
async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _queue(request: Request) -> JobQueue:
    return request.app.state.queue


async def _store(request: Request) -> MediaStore:
    return request.app.state.store


async def _workers(request: Request) -> WorkerRegistry:
    return request.app.state.workers


SessionDep = Annotated[AsyncSession, Depends(_session)]
ReaderDep = Annotated[AsyncConnection, Depends(_reader)]
SettingsDep = Annotated[Settings, Depends(_settings)]
QueueDep = Annotated[JobQueue, Depends(_queue)]
StoreDep = Annotated[MediaStore, Depends(_store)]
WorkersDep = Annotated[WorkerRegistry, Depends(_workers)]
