from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile
from fastapi.responses import FileResponse
from pydantic import AfterValidator
from redis.exceptions import RedisError

from comfygram import metrics
from comfygram.backend import accounts, jobs
from comfygram.backend.deps import QueueDep, SessionDep, SettingsDep, StoreDep
from comfygram.backend.errors import ApiError
from comfygram.backend.limits import RESULT_SIZE_FACTOR
from comfygram.backend.models import Job, User
from comfygram.backend.schemas import (
    ComfyUICrash,
    DeliveryReport,
    JobOut,
    RefundOut,
    ResultLimits,
    StatusChange,
    StatusMessage,
    no_nul,
)
from comfygram.domain.jobs import FINAL, REFUNDED_ON, JobStatus
from comfygram.images import ImageInfo, ImageRejected, inspect_image, prepare_input, read_header

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/jobs", tags=["jobs"])


Checked = TypeVar("Checked")


async def _read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(
            413,
            "file_too_large",
            f"The file is over {max_bytes // (1024 * 1024)} MB; send a smaller one.",
        )
    return data


async def _check_image(
    check: Callable[[bytes, int], Checked], data: bytes, max_pixels: int
) -> Checked:
    """Run one of the images checks in a thread; its refusal as the API's 415 or 422."""
    try:
        return await asyncio.to_thread(check, data, max_pixels)
    except ImageRejected as exc:
        status, code = (
            (415, "unsupported_image") if exc.kind == "unsupported" else (422, "bad_image")
        )
        raise ApiError(status, code, exc.message) from None


async def _read_image(
    upload: UploadFile, max_bytes: int, max_pixels: int
) -> tuple[bytes, ImageInfo]:
    data = await _read_upload(upload, max_bytes)
    return data, await _check_image(inspect_image, data, max_pixels)


async def _job_out(session: SessionDep, job_id: str) -> JobOut:
    job = await jobs.get_job(session, job_id)
    user = await session.get(User, job.user_id)
    return JobOut.of(job, user, await jobs.queue_position(session, job))


@router.post("/create", status_code=201, response_model=JobOut)
async def create_job(
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    store: StoreDep,
    response: Response,
    telegram_id: Annotated[int, Form(gt=0, le=2**63 - 1)],
    preset: Annotated[str, Form(min_length=1, max_length=32)],
    image: Annotated[UploadFile, File(description="JPEG, PNG or WebP")],
    prompt: Annotated[str | None, Form(max_length=1000), AfterValidator(no_nul)] = None,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> JobOut:
    """Validate and store the photo, charge the preset's price, queue the job.

    Cheapest refusals first: the file's size, then its header (format, pixels), then the
    account and the preset, and only then the photo is decoded (and an animation brought down
    to its first frame), so a refused request never costs a decode.
    """
    data = await _read_upload(image, settings.max_upload_bytes)
    await _check_image(read_header, data, settings.max_image_pixels)
    prompt = prompt.strip() if prompt and prompt.strip() else None
    key = idempotency_key or None
    max_active = settings.max_active_jobs_per_user
    replay = await jobs.precheck(session, telegram_id, preset, prompt, key, max_active)
    if replay is None:
        # Nothing is held while the photo is decoded: no row lock, no pooled connection.
        await session.rollback()
        stored, info = await _check_image(prepare_input, data, settings.max_image_pixels)
        request = jobs.NewJob(
            telegram_id=telegram_id,
            preset_slug=preset,
            prompt=prompt,
            image=stored,
            image_info=info,
            idempotency_key=key,
        )
        created = await jobs.create(session, store, request, max_active)
    else:
        created = replay
    await session.commit()
    job = created.job
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        metrics.JOBS_CREATED.labels(job.preset_slug).inc()
        try:
            await queue.enqueue(job.id, jobs.queue_payload(job))
        except (RedisError, OSError) as exc:
            # The job is safe in the database; the reconciler queues it when Redis is back.
            log.warning("job %s not queued yet, Redis unreachable: %s", job.id, type(exc).__name__)
    return JobOut.of(job, await session.get(User, job.user_id), created.position)


@router.get("", response_model=list[JobOut])
async def list_jobs(
    session: SessionDep,
    telegram_id: Annotated[int, Query(gt=0, le=2**63 - 1)],
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> list[JobOut]:
    """A user's latest jobs, newest first."""
    user = await accounts.get_user(session, telegram_id)
    rows = await jobs.list_for_user(session, user, limit)
    return [JobOut.of(job, user, await jobs.queue_position(session, job)) for job in rows]


@router.get("/limits", response_model=ResultLimits)
async def result_limits(settings: SettingsDep) -> ResultLimits:
    """What ``PUT /api/jobs/{id}/result`` takes, so a worker can tell a result that will be
    refused before it sends it (a body over the limit is cut off, not always answered)."""
    return ResultLimits(
        result_max_bytes=settings.max_upload_bytes * RESULT_SIZE_FACTOR,
        result_max_pixels=settings.max_image_pixels * RESULT_SIZE_FACTOR,
    )


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: str, session: SessionDep) -> JobOut:
    return await _job_out(session, job_id)


@router.post("/{job_id}/status", response_model=JobOut)
async def change_status(
    job_id: str, body: StatusChange, session: SessionDep, queue: QueueDep
) -> JobOut:
    """Move the job along queued -> processing -> succeeded | queued (retry) | failed,
    or queued -> cancelled. Failing and cancelling refund the charge."""
    previous = JobStatus((await jobs.get_job(session, job_id)).status)
    job = await jobs.transition(session, job_id, body.status, error=body.error, worker=body.worker)
    await session.commit()
    if previous is not body.status:
        _count_transition(job, previous)
    return await _job_out(session, job_id)


def _count_transition(job: Job, previous: JobStatus) -> None:
    preset, status = job.preset_slug, JobStatus(job.status)
    if status is JobStatus.PROCESSING and job.started_at:
        wait = (_aware(job.started_at) - _aware(job.created_at)).total_seconds()
        metrics.QUEUE_WAIT.labels(preset).observe(max(0.0, wait))
    elif status is JobStatus.QUEUED and previous is JobStatus.PROCESSING:
        metrics.JOB_RETRIES.labels(preset).inc()
    if status in FINAL:
        metrics.JOBS_FINISHED.labels(preset, status.value).inc()
    if status is JobStatus.SUCCEEDED and job.started_at and job.finished_at:
        run = (_aware(job.finished_at) - _aware(job.started_at)).total_seconds()
        metrics.RUN_TIME.labels(preset).observe(max(0.0, run))
    if status in REFUNDED_ON:
        metrics.JOBS_REFUNDED.labels(preset).inc()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@router.post("/{job_id}/refund", response_model=RefundOut)
async def refund_job(job_id: str, session: SessionDep) -> RefundOut:
    """Give a finished job's price back; a second call changes nothing."""
    job, refunded = await jobs.refund(session, job_id)
    await session.commit()
    user = await session.get(User, job.user_id)
    return RefundOut(job=JobOut.of(job, user), refunded=refunded, balance=user.balance)


@router.get("/{job_id}/input", response_class=FileResponse)
async def download_input(job_id: str, session: SessionDep, store: StoreDep) -> FileResponse:
    job = await jobs.get_job(session, job_id)
    return _stored_file(job, store, job.input_path, job.input_mime, "photo")


def _stored_file(
    job: Job, store: StoreDep, relative: str, mime: str | None, what: str
) -> FileResponse:
    """The file, or 410 Gone once the retention sweep (or anything else) has deleted it."""
    path = store.path(relative)
    if job.media_deleted_at is not None:
        when = _aware(job.media_deleted_at).strftime("%Y-%m-%d")
        raise ApiError(
            410,
            "media_deleted",
            f"Job {job.id}'s {what} was deleted on {when}: media is kept for "
            "MEDIA_RETENTION_DAYS days after a job ends.",
        )
    if not path.is_file():
        raise ApiError(410, "media_deleted", f"Job {job.id}'s {what} is no longer stored.")
    return FileResponse(path, media_type=mime)


@router.put("/{job_id}/result", response_model=JobOut)
async def upload_result(
    job_id: str,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    image: Annotated[UploadFile, File(description="The rendered image")],
) -> JobOut:
    data, info = await _read_image(
        image,
        settings.max_upload_bytes * RESULT_SIZE_FACTOR,
        settings.max_image_pixels * RESULT_SIZE_FACTOR,
    )
    await jobs.attach_result(session, store, job_id, data, info)
    await session.commit()
    return await _job_out(session, job_id)


@router.get("/{job_id}/result", response_class=FileResponse)
async def download_result(job_id: str, session: SessionDep, store: StoreDep) -> FileResponse:
    job = await jobs.get_job(session, job_id)
    if job.result_path is None:
        raise ApiError(404, "result_not_found", f"Job {job.id} has no result yet ({job.status}).")
    return _stored_file(job, store, job.result_path, job.result_mime, "result")


@router.post("/{job_id}/delivery", response_model=JobOut)
async def record_delivery(job_id: str, body: DeliveryReport, session: SessionDep) -> JobOut:
    """What happened when the result (or apology) was sent to the user."""
    await jobs.record_delivery(session, job_id, body.status, body.error)
    await session.commit()
    return await _job_out(session, job_id)


@router.post("/{job_id}/status-message", response_model=JobOut)
async def record_status_message(job_id: str, body: StatusMessage, session: SessionDep) -> JobOut:
    """The chat and message the bot shows the job's progress in.

    A job that has already ended for the user (its result or apology claimed, or cancelled)
    records nothing: the answer's ``status_message_id`` is then not the one sent, and the bot
    deletes that message, which nothing would ever update.
    """
    await jobs.record_status_message(session, job_id, body.chat_id, body.message_id)
    await session.commit()
    return await _job_out(session, job_id)


@router.post("/{job_id}/comfyui-crash", response_model=JobOut)
async def record_comfyui_crash(job_id: str, body: ComfyUICrash, session: SessionDep) -> JobOut:
    """ComfyUI died while running the job (the worker fails it after the second death)."""
    await jobs.record_comfyui_crash(session, job_id, body.seen)
    await session.commit()
    return await _job_out(session, job_id)
