"""The backend's cost per job: the SQL statements of creating, taking and finishing one, and
the cached preset contract following changes."""

import asyncio
import contextlib
import tempfile
from collections.abc import Iterator

from fastapi import FastAPI
from sqlalchemy import event

from comfygram.backend.models import Preset as PresetRow
from comfygram.backend.presets import set_operator_choice
from tests import images
from tests.helpers import balance, create_job, grant, register


@contextlib.contextmanager
def statements_of_this_task(app: FastAPI) -> Iterator[list[str]]:
    """The SQL statements the requests made from this task send (httpx's ASGI transport runs
    them in it); the app's background loops (reconciler, media cleanup) run in theirs."""
    statements: list[str] = []
    this_task = asyncio.current_task()

    def record(conn, cursor, statement, *args) -> None:
        # SQLite's explicit BEGIN IMMEDIATE (db.py) is not counted: PostgreSQL has none.
        if asyncio.current_task() is this_task and not statement.startswith("BEGIN"):
            statements.append(statement)

    event.listen(app.state.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(app.state.engine.sync_engine, "before_cursor_execute", record)


def _listed(statements: list[str]) -> str:
    return "\n".join(s[:120] for s in statements)


async def test_a_creation_is_eight_statements(app, api):
    """Precheck (user, preset, active jobs: 1), locked user and preset (1), active jobs under
    the lock (1), ledger entry, balance, job, its photo (4), queue position (1)."""
    await register(api, 1001)
    with statements_of_this_task(app) as statements:
        response = await create_job(api)
    assert response.status_code == 201, response.text
    assert len(statements) == 8, _listed(statements)
    assert await balance(api) == 2  # the signup bonus of 3, less bw's price of 1, once


async def test_taking_claiming_and_finishing_a_job_are_two_two_and_six_statements(app, api):
    """Taking a job: the update (1) and the answer's read (1), as claiming its message is.
    Storing its output as it succeeds: its preset (1) before the file is checked, then owner
    and job locked (2) with its files (1), the output row (1) and the update (1); the answer
    comes from the rows locked. Before one UPDATE for the worker's moves, taking a job was 4
    and a report on its message 5; before one lock per request, 9 and 19 for storing."""
    await register(api, 1001)
    job_id = (await create_job(api)).json()["id"]
    with statements_of_this_task(app) as taking:
        started = await api.post(f"/api/jobs/{job_id}/start", json={"worker": "w1"})
    assert started.status_code == 200, started.text
    assert (started.json()["fresh"], started.json()["job"]["status"]) == (True, "processing")
    assert len(taking) == 2, _listed(taking)
    with statements_of_this_task(app) as claiming:
        claimed = await api.post(f"/api/jobs/{job_id}/delivery", json={"status": "sending"})
    assert claimed.json()["delivery_status"] == "sending", claimed.text
    assert len(claiming) == 2, _listed(claiming)
    await api.post(f"/api/jobs/{job_id}/delivery", json={"status": "delivered"})

    files = [("file", ("out.png", images.png(), "image/png"))]
    with statements_of_this_task(app) as finishing:
        stored = await api.put(
            f"/api/jobs/{job_id}/outputs", params={"succeed": "true", "claim": "false"}, files=files
        )
    assert stored.status_code == 200, stored.text
    job = stored.json()
    assert (job["status"], job["delivery_status"], len(job["outputs"])) == (
        "succeeded",
        "delivered",
        1,
    )
    assert len(finishing) == 6, _listed(finishing)


async def test_a_contract_changed_in_the_database_is_followed_at_once(app, api):
    """The parsed contract is cached per process; a row changed by another process (its
    preset sync at start) must not be answered from the cache."""
    await register(api, 1001)
    assert (await create_job(api)).status_code == 201  # the cache now holds bw's contract
    async with app.state.sessions() as session:
        bw = await session.get(PresetRow, "bw")
        contract = dict(bw.manifest["contract"])
        second = {**contract["photos"][0], "name": "second"}
        contract["photos"] = [*contract["photos"], second]
        bw.manifest = {**bw.manifest, "contract": contract}
        await session.commit()

    refused = await create_job(api)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "photo_missing"
    assert "2 photos" in refused.json()["error"]["message"]
    two = await create_job(api, images=[images.png(), images.png()])
    assert two.status_code == 201, two.text
    assert [photo["slot"] for photo in two.json()["inputs"]] == ["photo", "second"]


async def test_an_operators_price_and_switch_apply_to_the_next_creation(app, api):
    await register(api, 1001)
    await grant(api, 1001, 10, "grant-1")
    async with app.state.sessions() as session:
        await set_operator_choice(session, "bw", price=5, enabled=True)
        await session.commit()
    assert (await create_job(api)).status_code == 201
    assert await balance(api) == 13 - 5
    async with app.state.sessions() as session:
        await set_operator_choice(session, "bw", price=5, enabled=False)
        await session.commit()
    refused = await create_job(api)
    assert refused.status_code == 404, refused.text
    assert await balance(api) == 8


async def test_photos_and_outputs_over_a_megabyte_are_parsed_without_a_temp_file(
    app, api, settings, monkeypatch
):
    """Past Starlette's 1 MB default an uploaded file is spooled to disk (and written in a
    thread a chunk at a time); up to MAX_UPLOAD_BYTES it stays in memory, as the route reads
    it whole anyway."""
    spooled: list[int] = []
    rollover = tempfile.SpooledTemporaryFile.rollover
    monkeypatch.setattr(
        tempfile.SpooledTemporaryFile,
        "rollover",
        lambda file: spooled.append(file.tell()) or rollover(file),
    )
    photo = images.noise_png(700, 700)
    assert 1024 * 1024 < len(photo) <= settings.max_upload_bytes
    await register(api, 1001)
    created = await create_job(api, image=photo)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    await api.post(f"/api/jobs/{job_id}/start", json={"worker": "w1"})
    files = [("file", ("out.png", photo, "image/png"))]
    stored = await api.put(f"/api/jobs/{job_id}/outputs", files=files)
    assert stored.status_code == 200, stored.text
    assert stored.json()["outputs"][0]["size"] == len(photo)
    assert spooled == []
