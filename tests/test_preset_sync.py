"""The backend copies preset folders into the database at start."""

import shutil

from sqlalchemy import select

from comfygram.backend.app import create_app
from comfygram.backend.models import Preset as PresetRow
from comfygram.backend.presets import sync_presets
from comfygram.presets import BUILTIN_DIR, load_presets


async def test_presets_dir_adds_and_overrides_presets(settings, redis, tmp_path):
    extra = tmp_path / "presets"
    shutil.copytree(BUILTIN_DIR / "bw", extra / "bw")
    manifest = extra / "bw" / "preset.toml"
    manifest.write_text(manifest.read_text().replace("price = 1", "price = 4"))
    shutil.copytree(BUILTIN_DIR / "invert", extra / "negative")
    manifest = extra / "negative" / "preset.toml"
    manifest.write_text(manifest.read_text().replace('slug = "invert"', 'slug = "negative"'))
    settings.presets_dir = extra

    app = create_app(settings)
    async with app.router.lifespan_context(app), app.state.sessions() as session:
        rows = {row.slug: row for row in await session.scalars(select(PresetRow))}
    assert rows["bw"].price == 4
    assert rows["negative"].enabled and rows["invert"].enabled
    assert rows["negative"].workflow == rows["invert"].workflow


async def test_a_preset_gone_from_disk_is_disabled_not_deleted(app):
    presets = load_presets()
    async with app.state.sessions() as session:
        await sync_presets(session, [p for p in presets if p.slug != "sharpen"])
        await session.commit()
        sharpen = await session.get(PresetRow, "sharpen")
        assert sharpen is not None and sharpen.enabled is False
        await sync_presets(session, presets)
        await session.commit()
        await session.refresh(sharpen)
        assert sharpen.enabled is True
