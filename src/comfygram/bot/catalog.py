"""The presets, as the backend lists them, cached for a few seconds.

A burst of photos (or an album) would otherwise ask the backend for the same list each time.
"""

from __future__ import annotations

import time

from comfygram.api import BackendClient, Preset
from comfygram.bot.keyboards import preset_title


class PresetCatalog:
    def __init__(self, backend: BackendClient, cache_seconds: float = 15.0) -> None:
        self.backend = backend
        self.cache_seconds = cache_seconds
        self._presets: list[Preset] = []
        self._fetched = -self.cache_seconds

    async def all(self) -> list[Preset]:
        """Every enabled preset, whether or not a worker can run it now."""
        if time.monotonic() - self._fetched >= self.cache_seconds:
            self._presets = await self.backend.presets()
            self._fetched = time.monotonic()
        return self._presets

    async def available(self) -> list[Preset]:
        """The presets some live worker can run: the only ones offered."""
        return [preset for preset in await self.all() if preset.available]

    async def find(self, slug: str) -> Preset | None:
        """An available preset by slug."""
        return next((p for p in await self.available() if p.slug == slug), None)

    async def titles(self, lang: str) -> dict[str, str]:
        return {preset.slug: preset_title(preset, lang) for preset in await self.all()}
