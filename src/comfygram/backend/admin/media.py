"""A job's inputs and outputs in the admin panel: the media routes behind the admin session,
the gallery on the job's page and the short summary in the job list.

The files are served as the API serves them (``GET /api/jobs/{id}/inputs/{index}`` and
``…/outputs/{index}``), but to a logged-in operator instead of an API token: inline, with the
stored content type and ``nosniff`` (a browser shows the file, never guesses another type), and
with HTTP Range (Starlette's FileResponse), which browsers need to seek and play an MP4.

The job list shows a small thumbnail of each job's first output, made on request (a list of 50
jobs would otherwise load 50 full outputs, megabytes each, on every view: media is never
cached, see ``Cache-Control`` below).
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import av
from markupsafe import Markup
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

from comfygram.backend import jobs
from comfygram.backend.errors import ApiError
from comfygram.backend.models import FileRole, Job, JobFile
from comfygram.backend.storage import MediaStore
from comfygram.presets import Contract

if TYPE_CHECKING:
    from sqladmin import Admin

    from comfygram.backend.admin import Panel

log = logging.getLogger(__name__)

# The job list's thumbnails fit in this box (twice the 64 x 48 they are shown at, for HiDPI).
THUMBNAIL_BOX = (128, 96)
# Thumbnails are made in their own two threads per backend process (an executor, unlike a
# semaphore, belongs to no event loop), so a list page's burst of them cannot take every core
# from the API; the others wait their turn.
_THUMBNAILER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="admin-thumbnail")
# An index is a few digits; anything else (a sign, a letter, a huge number) is no file: 404.
_INDEX = re.compile(r"[0-9]{1,4}")


def text_of(texts: dict[str, str] | None, fallback: str = "") -> str:
    """A preset text in English (the panel's language), else any language it has."""
    if not texts:
        return fallback
    return texts.get("en") or next(iter(texts.values()), fallback)


def human_size(size: int | None) -> str:
    if size is None:
        return "—"
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def seconds(duration_ms: int | None) -> str:
    return "—" if duration_ms is None else f"{duration_ms / 1000:.1f} s"


def day(value: datetime) -> str:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).strftime("%Y-%m-%d")


def media_url(base_url: str, job_id: str, role: str, index: int) -> str:
    folder = "inputs" if role == FileRole.INPUT else "outputs"
    return f"{base_url}/media/jobs/{job_id}/{folder}/{index}"


@dataclass(frozen=True)
class MediaItem:
    """One input or output as the job's page shows it."""

    role: str
    index: int
    kind: str
    mime: str
    url: str
    # "input 0: first", "output 2": what the page and the element's alt text call it.
    label: str
    # The slot's question from the preset (inputs), or "".
    title: str
    facts: tuple[tuple[str, str], ...]
    # How to show it: "img" or "video"; or "deleted" / "missing" with `note` instead.
    element: str
    note: str = ""


@dataclass(frozen=True)
class ChosenOption:
    option_id: str
    choice_id: str
    option_title: str
    choice_title: str
    # Set when the preset no longer has this option or choice (edited since the job).
    note: str = ""


def _facts(file: JobFile) -> tuple[tuple[str, str], ...]:
    facts = [("kind", file.kind), ("type", file.mime), ("size", human_size(file.size))]
    if file.width and file.height:
        facts.append(("dimensions", f"{file.width}×{file.height}"))
    if file.kind != "image" or (file.frames or 1) > 1:
        facts.append(("frames", "—" if file.frames is None else str(file.frames)))
        facts.append(("duration", seconds(file.duration_ms)))
    return tuple(facts)


def gallery(
    job: Job, role: str, contract: Contract | None, store: MediaStore, base_url: str
) -> list[MediaItem]:
    """The job's inputs or outputs, in order, each with what the page shows for it."""
    files = job.inputs if role == FileRole.INPUT else job.outputs
    slots = {slot.name: slot for slot in contract.photos} if contract is not None else {}
    items = []
    for index, file in enumerate(files):
        title = ""
        label = f"{role} {index}"
        if role == FileRole.INPUT:
            label = f"{label}: {file.slot or 'photo'}"
            slot = slots.get(file.slot or "")
            title = text_of(slot.title) if slot is not None else ""
        element, note = ("video" if file.kind == "video" else "img"), ""
        if job.media_deleted_at is not None:
            element, note = "deleted", f"deleted on {day(job.media_deleted_at)}"
        elif not _stored(store, file):
            element, note = "missing", "the file is no longer stored"
        items.append(
            MediaItem(
                role=role,
                index=index,
                kind=file.kind,
                mime=file.mime,
                url=media_url(base_url, job.id, role, index),
                label=label,
                title=title,
                facts=_facts(file),
                element=element,
                note=note,
            )
        )
    return items


def _stored(store: MediaStore, file: JobFile) -> bool:
    try:
        return store.path(file.path).is_file()
    except ValueError:  # a path outside the media directory: never served
        return False


def chosen_options(job: Job, contract: Contract | None) -> list[ChosenOption]:
    """The job's options with their titles from the preset's contract; the contract's order
    first, then any the preset no longer declares."""
    chosen = dict(job.options or {})
    rows = []
    for option in contract.options if contract is not None else ():
        if option.id not in chosen:
            continue
        choice_id = chosen.pop(option.id)
        choice = option.choice(choice_id)
        rows.append(
            ChosenOption(
                option_id=option.id,
                choice_id=choice_id,
                option_title=text_of(option.title, option.id),
                choice_title=text_of(choice.title, choice_id) if choice else choice_id,
                note="" if choice else "no longer a choice of this preset",
            )
        )
    for option_id, choice_id in chosen.items():
        rows.append(
            ChosenOption(
                option_id, choice_id, option_id, str(choice_id), "no longer in this preset"
            )
        )
    return rows


def output_summary(job: Job, base_url: str) -> Markup:
    """The job list's cell: a small thumbnail of the first output with the kind and count
    ("album of 4", "video 2.0 s"); "deleted" after retention, "—" before any output."""
    outputs = job.outputs
    if not outputs:
        return Markup('<span class="text-muted">—</span>')
    first = outputs[0]
    if len(outputs) > 1:
        text = f"album of {len(outputs)}" if first.kind == "image" else f"{len(outputs)} files"
    elif first.kind == "video":
        text = f"video {seconds(first.duration_ms)}"
    else:
        text = first.kind
    if job.media_deleted_at is not None:
        return Markup('<span class="text-muted" data-output="{0}">{0}, deleted</span>').format(text)
    url = f"{base_url}/media/jobs/{job.id}/thumbnail"
    return Markup(
        '<span data-output="{0}"><img src="{1}" alt="{0}" loading="lazy" '
        'style="max-width: 64px; max-height: 48px;" class="me-1" '
        "onerror=\"this.style.display='none'\">{0}</span>"
    ).format(text, url)


def thumbnail(path: Path, kind: str) -> bytes:
    """A WebP of the file's first frame (an image's only one) within THUMBNAIL_BOX."""
    if kind == "video":
        with av.open(str(path)) as container:
            picture = next(container.decode(video=0)).to_image()
    else:
        with Image.open(path) as source:
            source.draft("RGB", THUMBNAIL_BOX)  # a JPEG is decoded at a fraction of its size
            picture = source.convert("RGBA" if "A" in source.getbands() else "RGB")
    picture.thumbnail(THUMBNAIL_BOX)
    buffer = io.BytesIO()
    picture.save(buffer, "WEBP", quality=80)
    return buffer.getvalue()


async def _thumbnail_response(job: Job, store: MediaStore) -> Response:
    if not job.outputs:
        raise HTTPException(404, f"Job {job.id} has no output yet.")
    if job.media_deleted_at is not None:
        when = day(job.media_deleted_at)
        raise HTTPException(410, f"Job {job.id}'s outputs were deleted on {when}.")
    first = job.outputs[0]
    if not _stored(store, first):
        raise HTTPException(404, f"Job {job.id}'s output 0 is no longer stored.")
    loop = asyncio.get_running_loop()
    try:
        data = await loop.run_in_executor(
            _THUMBNAILER, thumbnail, store.path(first.path), first.kind
        )
    except Exception as exc:  # a file that no longer decodes: the list shows the text alone
        log.warning("no thumbnail of job %s: %s", job.id, type(exc).__name__)
        raise HTTPException(404, "No thumbnail of this output.") from None
    return Response(
        data,
        media_type="image/webp",
        headers={
            "Content-Disposition": f'inline; filename="{job.id}-thumbnail.webp"',
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def _authenticated(admin: Admin, request: Request) -> Response | None:
    """None for a logged-in operator, else the answer (the login page, or a 503)."""
    auth = admin.authentication_backend
    allowed = await auth.authenticate(request) if auth is not None else False
    if isinstance(allowed, Response):
        return allowed
    if not allowed:
        return RedirectResponse(request.url_for("admin:login"), status_code=302)
    return None


def _file_response(job: Job, role: str, index: int, store: MediaStore) -> FileResponse:
    files = job.inputs if role == FileRole.INPUT else job.outputs
    if not 0 <= index < len(files):
        raise HTTPException(404, f"Job {job.id} has no {role} {index} ({len(files)}).")
    if job.media_deleted_at is not None:
        raise HTTPException(
            410, f"Job {job.id}'s {role} {index} was deleted on {day(job.media_deleted_at)}."
        )
    stored = files[index]
    if not _stored(store, stored):
        raise HTTPException(404, f"Job {job.id}'s {role} {index} is no longer stored.")
    path = store.path(stored.path)
    return FileResponse(
        path,
        media_type=stored.mime,
        filename=f"{job.id}-{role}-{index}{PurePosixPath(stored.path).suffix}",
        content_disposition_type="inline",
        headers={
            "Cache-Control": "private, no-store",
            # The stored type was checked when the file came in; never let a browser guess.
            "X-Content-Type-Options": "nosniff",
        },
    )


def media_routes(panel: Panel, admin: Admin) -> list[Route]:
    """``/media/jobs/{job id}/inputs/{index}`` and ``…/outputs/{index}``, the older ``…/input``
    and ``…/result`` (the first of each), and ``…/thumbnail`` (of the first output), for a
    logged-in operator only."""

    async def load(request: Request) -> Job:
        async with panel.sessions() as session:
            try:
                return await jobs.get_job(session, request.path_params["job_id"])
            except ApiError:
                raise HTTPException(404, "No such job.") from None

    async def serve(request: Request, role: str, raw_index: str) -> Response:
        refused = await _authenticated(admin, request)
        if refused is not None:
            return refused
        if not _INDEX.fullmatch(raw_index):
            raise HTTPException(404, f"No such {role}.")
        return _file_response(await load(request), role, int(raw_index), panel.store)

    async def first_thumbnail(request: Request) -> Response:
        refused = await _authenticated(admin, request)
        if refused is not None:
            return refused
        return await _thumbnail_response(await load(request), panel.store)

    def indexed(role: str) -> Any:
        async def endpoint(request: Request) -> Response:
            return await serve(request, role, request.path_params["index"])

        return endpoint

    async def first_input(request: Request) -> Response:
        return await serve(request, FileRole.INPUT, "0")

    async def first_output(request: Request) -> Response:
        return await serve(request, FileRole.OUTPUT, "0")

    base = "/media/jobs/{job_id}"
    return [
        Route(f"{base}/inputs/{{index}}", indexed(FileRole.INPUT), name="media-inputs"),
        Route(f"{base}/outputs/{{index}}", indexed(FileRole.OUTPUT), name="media-outputs"),
        Route(f"{base}/input", first_input, name="media-input"),
        Route(f"{base}/result", first_output, name="media-result"),
        Route(f"{base}/thumbnail", first_thumbnail, name="media-thumbnail"),
    ]
