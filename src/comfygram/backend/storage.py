"""Job media on disk under MEDIA_DIR, written by this class only.

Layout: ``inputs/<job id>/<slot index>-<slot>.<ext>`` for the photos a job was given and
``outputs/<job id>/<upload>-<index>.<ext>`` for what it made, where ``<upload>`` is new for
every upload, so a second attempt's files never overwrite the first's before the database
has switched to them. Jobs from before migration 0005 keep ``inputs/<job id>.<ext>`` and
``results/<job id>.<ext>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from pathlib import Path


class MediaStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"{relative!r} is outside the media directory")
        return path

    @staticmethod
    def input_name(job_id: str, index: int, slot: str, extension: str) -> str:
        return f"inputs/{job_id}/{index}-{slot}.{extension}"

    @staticmethod
    def output_names(job_id: str, extensions: list[str]) -> list[str]:
        """Fresh names for one upload of outputs (never those of an earlier upload)."""
        upload = uuid.uuid4().hex[:12]
        return [f"outputs/{job_id}/{upload}-{i}.{ext}" for i, ext in enumerate(extensions)]

    async def write(self, relative: str, data: bytes) -> str:
        """Store bytes atomically (temp file + rename) at ``relative``; return it."""
        await asyncio.to_thread(self._write, self.path(relative), data)
        return relative

    async def delete(self, relative: str) -> None:
        await asyncio.to_thread(self.path(relative).unlink, missing_ok=True)

    async def delete_all(self, relatives: list[str]) -> None:
        for relative in relatives:
            await self.delete(relative)

    async def remove_job_folders(self, job_id: str) -> None:
        """Remove a finished job's (empty) folders; called once its files are deleted, when
        nothing writes for the job any more."""
        for folder in ("inputs", "outputs"):
            path = self.path(f"{folder}/{job_id}")
            # Not there (an old job), or not empty: either way nothing to do.
            with contextlib.suppress(OSError):
                await asyncio.to_thread(path.rmdir)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)
