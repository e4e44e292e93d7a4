"""Job creation's cost: its SQL statements, and the cached preset contract following changes."""

import asyncio

from sqlalchemy import event

from comfygram.backend.models import Preset as PresetRow
from comfygram.backend.presets import set_operator_choice
from tests import images
from tests.helpers import balance, create_job, grant, register


async def test_a_creation_is_eight_statements(app, api):
    """Precheck (user, preset, active jobs: 1), locked user and preset (1), active jobs under
    the lock (1), ledger entry, balance, job, its photo (4), queue position (1)."""
    await register(api, 1001)
    statements: list[str] = []
    # The request runs in this task (httpx's ASGI transport); the app's background loops
    # (reconciler, media cleanup) run in theirs and are not counted.
    this_task = asyncio.current_task()

    def record(conn, cursor, statement, *args) -> None:
        # SQLite's explicit BEGIN IMMEDIATE (db.py) is not counted: PostgreSQL has none.
        if asyncio.current_task() is this_task and not statement.startswith("BEGIN"):
            statements.append(statement)

    event.listen(app.state.engine.sync_engine, "before_cursor_execute", record)
    try:
        response = await create_job(api)
    finally:
        event.remove(app.state.engine.sync_engine, "before_cursor_execute", record)
    assert response.status_code == 201, response.text
    assert len(statements) == 8, "\n".join(s[:120] for s in statements)
    assert await balance(api) == 2  # the signup bonus of 3, less bw's price of 1, once


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
