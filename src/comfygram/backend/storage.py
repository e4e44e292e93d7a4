"""Job images on disk under MEDIA_DIR: inputs/<job id>.<ext> and results/<job id>.<ext>."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


class MediaStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"{relative!r} is outside the media directory")
        return path

    async def write(self, kind: str, job_id: str, extension: str, data: bytes) -> str:
        """Store bytes atomically (temp file + rename); return the path relative to the root."""
        relative = f"{kind}/{job_id}.{extension}"
        await asyncio.to_thread(self._write, self.path(relative), data)
        return relative

    async def delete(self, relative: str) -> None:
        await asyncio.to_thread(self.path(relative).unlink, missing_ok=True)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)
