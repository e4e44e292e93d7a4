"""Presets in the database: copied from the preset folders at start, looked up by slug."""

from __future__ import annotations

import copy

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from comfygram.backend.errors import not_found
from comfygram.backend.models import Preset as PresetRow
from comfygram.presets import SLUG, Preset
from comfygram.presets.contract import Contract, MediaKind, OutputSpec, PhotoSlot, PromptSlot


async def sync_presets(session: AsyncSession, presets: list[Preset]) -> None:
    """Insert or update every preset; ones no longer on disk are disabled, never deleted,
    because old jobs still refer to them."""
    rows = {row.slug: row for row in await session.scalars(select(PresetRow))}
    for preset in presets:
        row = rows.pop(preset.slug, None) or PresetRow(slug=preset.slug)
        row.title_en = preset.title["en"]
        row.title_ru = preset.title["ru"]
        row.description_en = preset.description["en"]
        row.description_ru = preset.description["ru"]
        # An operator's choice in the admin panel outlives the file's.
        row.price = preset.price if row.operator_price is None else row.operator_price
        row.enabled = preset.enabled if row.operator_enabled is None else row.operator_enabled
        row.takes_prompt = preset.takes_prompt
        row.models = [{"folder": m.folder, "name": m.name} for m in preset.models]
        row.manifest = preset.to_manifest()
        row.workflow = preset.workflow
        session.add(row)
    for gone in rows.values():
        gone.enabled = False
    await session.flush()


async def set_operator_choice(
    session: AsyncSession, slug: str, *, price: int, enabled: bool
) -> PresetRow:
    """An operator's price and switch for a preset (admin panel): used at once, and kept by
    sync_presets over what the preset file says. The caller commits."""
    if isinstance(price, bool) or not isinstance(price, int) or price < 0:
        raise ValueError("The price must be a whole number of credits, 0 or more.")
    preset = await get_preset(session, slug)
    preset.operator_price = price
    preset.operator_enabled = enabled
    preset.price = price
    preset.enabled = enabled
    await session.flush()
    return preset


async def follow_file(session: AsyncSession, slug: str) -> PresetRow:
    """Drop the operator's price and switch: the preset file's (as last synced) rule again."""
    preset = await get_preset(session, slug)
    preset.operator_price = None
    preset.operator_enabled = None
    preset.price = int(preset.manifest.get("price", preset.price))
    preset.enabled = bool(preset.manifest.get("enabled", preset.enabled))
    await session.flush()
    return preset


async def get_preset(session: AsyncSession, slug: str) -> PresetRow:
    preset = await session.get(PresetRow, slug) if SLUG.fullmatch(slug) else None
    if preset is None:
        raise not_found("preset", slug)
    return preset


# slug -> (the stored contract JSON, the Contract parsed from it). Parsing is most of the Python
# work of a job creation's checks; a hit needs the row's JSON to equal the cached one, so a
# preset synced or edited in any process is parsed again on its next use.
_parsed: dict[str, tuple[dict, Contract]] = {}


def contract_of(preset: PresetRow) -> Contract:
    """The preset's contract as last synced from its file.

    A row whose file is gone may still hold a manifest from before contracts (one photo in,
    one still image out); it is read as that.
    """
    stored = preset.manifest.get("contract")
    if stored is not None:
        cached = _parsed.get(preset.slug)
        if cached is not None and cached[0] == stored:
            return cached[1]
        contract = Contract.model_validate(stored)
        # A deep copy is kept: the row's dict may be changed in place before it is saved.
        _parsed[preset.slug] = (copy.deepcopy(stored), contract)
        return contract
    image = preset.manifest.get("image_input") or {}
    prompt = preset.manifest.get("prompt_input")
    output = preset.manifest.get("output") or {}
    return Contract(
        photos=(PhotoSlot(name="photo", node=str(image.get("node", "1"))),),
        prompt=PromptSlot(node=prompt["node"], input=prompt["input"]) if prompt else None,
        output=OutputSpec(node=str(output.get("node", "9")), kind=MediaKind.IMAGE),
    )
