"""New jobs take turns in each backend process (CREATION_TURNS), on SQLite and PostgreSQL: a
flood of creations is worked on a few at a time once their uploads are in, every other call
passes meanwhile, and a client that sends its upload slowly holds no turn.

Where a creation is held, the photo's decode (``prepare_input``, a pure function the route runs
in a thread) is wrapped to count how many are in it and to wait for the test's word."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from redis.asyncio import Redis

from comfygram import images as images_module
from comfygram.backend.app import create_app
from comfygram.backend.routes import jobs as job_routes
from comfygram.settings import Settings
from tests import images
from tests.helpers import backend_client, create_job, register

USERS = [7001, 7002, 7003, 7004]


class HeldDecodes:
    """``prepare_input`` that counts its callers and keeps them until ``release``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inside = 0
        self.most = 0
        self._lock = threading.Lock()
        self._go = threading.Event()
        real: Callable = images_module.prepare_input

        def held(data: bytes, max_pixels: int) -> object:
            with self._lock:
                self.inside += 1
                self.most = max(self.most, self.inside)
            try:
                self._go.wait(10)
                return real(data, max_pixels)
            finally:
                with self._lock:
                    self.inside -= 1

        monkeypatch.setattr(job_routes, "prepare_input", held)

    def release(self) -> None:
        self._go.set()

    async def until_inside(self, count: int) -> None:
        for _ in range(1000):
            if self.inside >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{self.inside} creations reached the decode, not {count}")


@contextlib.asynccontextmanager
async def backend(settings: Settings, turns: int) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"creation_turns": turns}))
    async with app.router.lifespan_context(app), backend_client(app) as api:
        for user in USERS:
            await register(api, user)
        yield api


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldDecodes]:
    decodes = HeldDecodes(monkeypatch)
    yield decodes
    decodes.release()  # a failed test leaves no thread of the shared pool waiting


async def test_a_flood_of_new_jobs_is_worked_on_a_few_at_a_time(
    settings: Settings, redis: Redis, seeded_database: None, held: HeldDecodes
):
    async with backend(settings, turns=2) as api:
        flood = asyncio.gather(*(create_job(api, user) for user in USERS))
        await held.until_inside(2)
        await asyncio.sleep(0.2)  # every upload is in by now: the others wait for a turn
        assert held.inside == 2
        read = await api.get("/api/jobs", params={"telegram_id": USERS[0]})
        assert read.status_code == 200  # other calls pass meanwhile
        held.release()
        answers = await flood
    assert [a.status_code for a in answers] == [201] * len(USERS), [a.text for a in answers]
    assert held.most == 2


async def test_with_no_turns_every_new_job_is_worked_on_at_once(
    settings: Settings, redis: Redis, seeded_database: None, held: HeldDecodes
):
    async with backend(settings, turns=0) as api:
        flood = asyncio.gather(*(create_job(api, user) for user in USERS))
        await held.until_inside(len(USERS))
        held.release()
        answers = await flood
    assert [a.status_code for a in answers] == [201] * len(USERS)


async def test_a_client_that_sends_its_photo_slowly_holds_no_turn(
    settings: Settings, redis: Redis, seeded_database: None
):
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=telegram_id\r\n\r\n{USERS[0]}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=preset\r\n\r\nbw\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=image; filename=a.png\r\n"
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    photo = images.png()
    sending, quick_done = asyncio.Event(), asyncio.Event()

    async def slowly() -> AsyncIterator[bytes]:
        yield head + photo[:100]
        sending.set()
        await asyncio.wait_for(quick_done.wait(), 15)  # the rest only once the other is in
        yield photo[100:] + f"\r\n--{boundary}--\r\n".encode()

    async with backend(settings, turns=1) as api:
        slow = asyncio.create_task(
            api.post(
                "/api/jobs/create",
                content=slowly(),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
        )
        await asyncio.wait_for(sending.wait(), 5)
        # Were the only turn taken before the body is in, this would wait for ever.
        quick = await asyncio.wait_for(create_job(api, USERS[1]), 10)
        assert quick.status_code == 201, quick.text
        assert not slow.done()
        quick_done.set()
        assert (await slow).status_code == 201
