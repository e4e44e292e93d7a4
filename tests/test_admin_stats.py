"""The dashboard's numbers (backend/stats.py) on seeded data, and the migrations against the
models. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select

from comfygram.backend import db, stats
from comfygram.backend.models import Base, User
from comfygram.backend.models import Preset as PresetRow
from comfygram.backend.presets import set_operator_choice, sync_presets
from comfygram.presets import load_presets
from tests.admin_helpers import seeded_job, seeded_payment

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
async def sessions(empty_database):
    engine = db.create_engine(empty_database)
    await db.migrate(engine)
    async with db.create_sessionmaker(engine)() as session:
        await sync_presets(session, load_presets())
        await session.commit()
    yield db.create_sessionmaker(engine)
    await engine.dispose()


async def test_jobs_presets_and_revenue_in_a_window(sessions):
    since = NOW - timedelta(hours=24)
    async with sessions() as session:
        user = User(telegram_id=1, balance=0)
        session.add(user)
        await session.flush()
        session.add_all(
            [
                seeded_job(user, "bw", "succeeded", created=NOW - timedelta(hours=1), run=4),
                seeded_job(user, "bw", "succeeded", created=NOW - timedelta(hours=2), run=8),
                seeded_job(user, "bw", "failed", created=NOW - timedelta(hours=3), run=1),
                seeded_job(user, "bw", "failed", created=NOW - timedelta(hours=4), run=1),
                seeded_job(user, "bw", "queued", created=NOW - timedelta(hours=0.5)),
                seeded_job(user, "oil", "succeeded", created=NOW - timedelta(hours=5), run=30),
                seeded_job(user, "oil", "succeeded", created=NOW - timedelta(hours=25), run=300),
                seeded_job(user, "sharpen", "failed", created=NOW - timedelta(hours=30), run=1),
                seeded_payment(user, "a", 50, 10, NOW - timedelta(hours=1)),
                seeded_payment(user, "b", 200, 50, NOW - timedelta(hours=13)),  # yesterday, in 24 h
                seeded_payment(user, "c", 500, 150, NOW - timedelta(days=2)),
                seeded_payment(user, "d", 999, 999, None),  # never paid
            ]
        )
        await session.commit()

        by_status = await stats.jobs_by_status_since(session, since)
        assert by_status == {
            "queued": 1,
            "processing": 0,
            "succeeded": 3,
            "failed": 2,
            "cancelled": 0,
        }
        presets = {p.slug: p for p in await stats.presets_since(session, since)}
        assert set(presets) == {"bw", "oil"}
        bw = presets["bw"]
        assert (bw.jobs, bw.succeeded, bw.failed) == (5, 2, 2)
        assert bw.failure_rate == 0.5 and bw.median_run_seconds == 6.0
        assert presets["oil"].failure_rate == 0.0 and presets["oil"].median_run_seconds == 30.0

        revenue = await stats.revenue(session, since, NOW)
        assert (revenue.stars_today, revenue.stars_window, revenue.stars_total) == (50, 250, 750)
        assert (revenue.credits_sold_window, revenue.credits_sold_total) == (60, 210)
        assert revenue.payments_window == 2


async def test_empty_database_gives_zeros(sessions):
    async with sessions() as session:
        since = NOW - timedelta(hours=24)
        assert set((await stats.jobs_by_status_since(session, since)).values()) == {0}
        assert await stats.presets_since(session, since) == []
        revenue = await stats.revenue(session, since, NOW)
        assert revenue.stars_total == revenue.credits_sold_total == 0


async def test_operator_choices_survive_sync_and_files_rule_the_rest(sessions):
    presets = load_presets()
    async with sessions() as session:
        await set_operator_choice(session, "bw", price=0, enabled=False)
        await set_operator_choice(session, "kontext", price=9, enabled=True)
        await session.commit()
        await sync_presets(session, presets)
        await session.commit()
        rows = {row.slug: row for row in await session.scalars(select(PresetRow))}
        assert (rows["bw"].price, rows["bw"].enabled) == (0, False)
        assert (rows["kontext"].price, rows["kontext"].enabled) == (9, True)
        assert (rows["invert"].price, rows["invert"].enabled) == (1, True)
        # A preset gone from disk is disabled whatever the operator chose.
        await sync_presets(session, [p for p in presets if p.slug != "kontext"])
        await session.commit()
        assert (await session.get(PresetRow, "kontext")).enabled is False
        with pytest.raises(ValueError, match="0 or more"):
            await set_operator_choice(session, "bw", price=-1, enabled=True)


async def test_migrations_match_the_models(empty_database):
    engine = db.create_engine(empty_database)
    try:
        await db.migrate(engine)
        assert await db.current_revision(engine) == "0006"

        def differences(connection):
            return compare_metadata(MigrationContext.configure(connection), Base.metadata)

        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
        # Down to 0001 and up again: the new columns come and go cleanly.
        async with engine.begin() as connection:
            await connection.run_sync(
                lambda sync: command.downgrade(db._alembic_config(sync), "0001")
            )
        assert await db.current_revision(engine) == "0001"
        await db.migrate(engine)
        assert await db.current_revision(engine) == "0006"
    finally:
        await engine.dispose()
