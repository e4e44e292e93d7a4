from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, File, Form, Header, Path, Query, Response, UploadFile
from fastapi.responses import FileResponse
from pydantic import AfterValidator, BaseModel
from redis.exceptions import RedisError
from sqlalchemy import Row

from comfygram import metrics
from comfygram.backend import accounts, jobs
from comfygram.backend.deps import (
    QueueDep,
    ReaderDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    creation_turn,
)
from comfygram.backend.errors import ApiError
from comfygram.backend.limits import RESULT_SIZE_FACTOR
from comfygram.backend.models import FileRole, Job, JobFile, User, as_utc
from comfygram.backend.schemas import (
    ComfyUICrash,
    DeliveryReport,
    JobOut,
    RefundOut,
    StartOut,
    StartRequest,
    StatusChange,
    StatusMessage,
    no_nul,
)
from comfygram.domain.jobs import FINAL, REFUNDED_ON, JobStatus
from comfygram.images import ImageRejected, prepare_input, read_header
from comfygram.media import MediaInfo, MediaRejected, inspect_output
from comfygram.presets.contract import MAX_PHOTOS
from comfygram.wire import MAX_OUTPUTS, ResultLimits

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/jobs", tags=["jobs"])


Checked = TypeVar("Checked")


async def _read_upload(upload: UploadFile, max_bytes: int, label: str = "") -> bytes:
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(
            413,
            "file_too_large",
            f"{label}The file is over {max_bytes // (1024 * 1024)} MB; send a smaller one.",
        )
    return data


async def _check_image(
    check: Callable[[bytes, int], Checked], data: bytes, max_pixels: int, label: str = ""
) -> Checked:
    """Run one of the images checks in a thread; its refusal as the API's 415 or 422."""
    try:
        return await asyncio.to_thread(check, data, max_pixels)
    except ImageRejected as exc:
        status, code = (
            (415, "unsupported_image") if exc.kind == "unsupported" else (422, "bad_image")
        )
        raise ApiError(status, code, label + exc.message) from None


def _photo_label(index: int, count: int) -> str:
    """How an error names the photo it is about, when there are several."""
    return f"Photo {index + 1}: " if count > 1 else ""


def _parse_options(raw: str | None) -> dict[str, str]:
    """The options form field: a JSON object {option id: choice id}, or nothing."""
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ApiError(
            422,
            "bad_options",
            'options must be a JSON object of option id to choice id, like {"count": "4"}.',
        )
    return value


async def _job_out(session: SessionDep, job_id: str) -> JobOut:
    return JobOut.of_view(await jobs.view(session, job_id))


def _answer(
    body: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """The body as JSON, serialized once: a returned model would be validated again against
    the route's response_model (which still documents the answer)."""
    return Response(body.model_dump_json(), status_code, headers, media_type="application/json")


@router.post(
    "/create", status_code=201, response_model=JobOut, dependencies=[Depends(creation_turn)]
)
async def create_job(
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    store: StoreDep,
    telegram_id: Annotated[int, Form(gt=0, le=2**63 - 1)],
    preset: Annotated[str, Form(min_length=1, max_length=32)],
    image: Annotated[
        list[UploadFile] | None,
        File(description="JPEG, PNG or WebP; one field per photo slot, in the preset's order"),
    ] = None,
    prompt: Annotated[str | None, Form(max_length=1000), AfterValidator(no_nul)] = None,
    options: Annotated[
        str | None,
        Form(max_length=2000, description="JSON object {option id: choice id}"),
        AfterValidator(no_nul),
    ] = None,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> Response:
    """Validate and store the photos, charge the price of the preset and chosen options,
    queue the job.

    Cheapest refusals first: every file's size, then every header (format, pixels), then the
    options' shape, the account, the preset and its contract (photo count, prompt, options),
    and only then the photos are decoded (an animation brought down to its first frame), so
    a refused request never costs a decode.
    """
    uploads = image or []
    if len(uploads) > MAX_PHOTOS:
        raise ApiError(
            422, "too_many_photos", f"A job takes at most {MAX_PHOTOS} photos; {len(uploads)} sent."
        )
    sent: list[bytes] = []
    for index, upload in enumerate(uploads):
        label = _photo_label(index, len(uploads))
        sent.append(await _read_upload(upload, settings.max_upload_bytes, label))
    for index, data in enumerate(sent):
        label = _photo_label(index, len(sent))
        await _check_image(read_header, data, settings.max_image_pixels, label)
    chosen = _parse_options(options)
    prompt = prompt.strip() if prompt and prompt.strip() else None
    key = idempotency_key or None
    max_active = settings.max_active_jobs_per_user
    digests = [jobs.bytes_digest(data) for data in sent]
    request = jobs.Request(telegram_id, preset, prompt, chosen, digests, key)
    replay = await jobs.precheck(session, request, max_active)
    photos: list[jobs.Photo] = []
    if replay is None:
        # Nothing is held while the photos are decoded: no row lock, no pooled connection.
        await session.rollback()
        for index, (data, digest) in enumerate(zip(sent, digests, strict=True)):
            label = _photo_label(index, len(sent))
            stored, info = await _check_image(prepare_input, data, settings.max_image_pixels, label)
            photos.append(jobs.Photo(stored, info, digest))
        new = jobs.NewJob(telegram_id, preset, prompt, chosen, photos, key)
        created = await jobs.create(session, store, new, max_active)
    else:
        created = replay
    await session.commit()
    job = created.job
    if not created.replayed:
        metrics.JOBS_CREATED.labels(job.preset_slug).inc()
        for option, choice in (job.options or {}).items():
            metrics.OPTIONS_CHOSEN.labels(job.preset_slug, option, choice).inc()
        try:
            await queue.enqueue(
                job.id,
                jobs.queue_payload(job),
                [(photo.data, photo.info.mime) for photo in photos],
                ride_max_jobs=settings.photo_ride_max_jobs,
            )
        except (RedisError, OSError) as exc:
            # The job is safe in the database; the reconciler queues it when Redis is back.
            log.warning("job %s not queued yet, Redis unreachable: %s", job.id, type(exc).__name__)
    headers = {"Idempotent-Replayed": "true"} if created.replayed else None
    return _answer(JobOut.of(job, created.owner, created.position), 201, headers)


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
    """What ``PUT /api/jobs/{id}/outputs`` takes (per file, and how many files), so a worker
    can tell an output that will be refused before it sends it (a body over the limit is cut
    off, not always answered)."""
    return ResultLimits(
        result_max_bytes=settings.max_upload_bytes * RESULT_SIZE_FACTOR,
        result_max_pixels=settings.max_image_pixels * RESULT_SIZE_FACTOR,
        max_outputs=MAX_OUTPUTS,
    )


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: str, reader: ReaderDep) -> Response:
    return _answer(JobOut.of_view(await jobs.view(reader, job_id)))


@router.post("/{job_id}/start", response_model=StartOut)
async def start_job(job_id: str, body: StartRequest, session: SessionDep) -> Response:
    """A worker takes the job: a queued job moves to processing (``fresh``); any other comes
    back as it is, for the worker to re-attach to or finish what is left."""
    fresh = await jobs.start(session, job_id, body.worker)
    if fresh:
        await session.commit()
    view = await jobs.view(session, job_id)
    if fresh:
        _count_transition(view.job, JobStatus.QUEUED)
    return _answer(StartOut(job=JobOut.of_view(view), fresh=fresh))


@router.post("/{job_id}/status", response_model=JobOut)
async def change_status(
    job_id: str, body: StatusChange, session: SessionDep, queue: QueueDep
) -> Response:
    """Move the job along queued -> processing -> succeeded | queued (retry) | failed,
    or queued -> cancelled. Failing and cancelling refund the charge. ``deliver`` claims the
    final message in the same step (409 delivery_claimed, and nothing changed, when it was
    claimed already)."""
    if body.deliver and body.status not in FINAL:
        raise ApiError(
            422, "invalid_request", "deliver goes only with succeeded, failed or cancelled."
        )
    job, previous = await jobs.transition(
        session, job_id, body.status, error=body.error, worker=body.worker, deliver=body.deliver
    )
    await session.commit()
    if previous is not body.status:
        _count_transition(job, previous)
    return _answer(await _job_out(session, job_id))


def _count_transition(job: Job | Row, previous: JobStatus) -> None:
    """The job's metrics for a move from ``previous`` (``job``: the ORM row or a view's)."""
    preset, status = job.preset_slug, JobStatus(job.status)
    if status is JobStatus.PROCESSING and job.started_at:
        wait = (as_utc(job.started_at) - as_utc(job.created_at)).total_seconds()
        metrics.QUEUE_WAIT.labels(preset).observe(max(0.0, wait))
    elif status is JobStatus.QUEUED and previous is JobStatus.PROCESSING:
        metrics.JOB_RETRIES.labels(preset).inc()
    if status in FINAL:
        metrics.JOBS_FINISHED.labels(preset, status.value).inc()
    if status is JobStatus.SUCCEEDED and job.started_at and job.finished_at:
        run = (as_utc(job.finished_at) - as_utc(job.started_at)).total_seconds()
        metrics.RUN_TIME.labels(preset).observe(max(0.0, run))
    if status in REFUNDED_ON:
        metrics.JOBS_REFUNDED.labels(preset).inc()


@router.post("/{job_id}/refund", response_model=RefundOut)
async def refund_job(job_id: str, session: SessionDep) -> RefundOut:
    """Give a finished job's price back; a second call changes nothing. The entry's actor is
    "api": a refund someone asked for, which the audit tells apart from the automatic refund
    of a failed or cancelled job (a succeeded job is refunded only on request)."""
    job, refunded = await jobs.refund(session, job_id, actor="api")
    await session.commit()
    user = await session.get(User, job.user_id)
    return RefundOut(job=JobOut.of(job, user), refunded=refunded, balance=user.balance)


Index = Annotated[int, Path(ge=0, le=1000)]


@router.get("/{job_id}/inputs/{index}", response_class=FileResponse)
async def download_input_at(
    job_id: str, index: Index, session: SessionDep, store: StoreDep
) -> Response:
    """The photo of slot ``index`` (0 = the first slot)."""
    found = await jobs.stored_file(session, job_id, FileRole.INPUT, index)
    if found is None:
        job = await jobs.get_job(session, job_id)  # 404 for an unknown job
        raise ApiError(
            404, "input_not_found", f"Job {job.id} has no photo {index} ({len(job.inputs)})."
        )
    return await _stored_file(job_id, *found, store, "photo")


@router.get("/{job_id}/input", response_class=FileResponse)
async def download_input(job_id: str, session: SessionDep, store: StoreDep) -> Response:
    """The first photo: ``inputs/0``."""
    return await download_input_at(job_id, 0, session, store)


@router.get("/{job_id}/outputs/{index}", response_class=FileResponse)
async def download_output(
    job_id: str, index: Index, session: SessionDep, store: StoreDep
) -> Response:
    """Output ``index`` of the last successful attempt."""
    found = await jobs.stored_file(session, job_id, FileRole.OUTPUT, index)
    if found is None:
        job = await jobs.get_job(session, job_id)  # 404 for an unknown job
        raise ApiError(
            404,
            "output_not_found",
            f"Job {job.id} has no output {index} ({len(job.outputs)} stored, {job.status}).",
        )
    return await _stored_file(job_id, *found, store, "output")


@router.get("/{job_id}/result", response_class=FileResponse)
async def download_result(job_id: str, session: SessionDep, store: StoreDep) -> Response:
    """The first output: ``outputs/0``."""
    job = await jobs.get_job(session, job_id)
    if not job.outputs:
        raise ApiError(404, "result_not_found", f"Job {job.id} has no result yet ({job.status}).")
    return await _stored_file(job.id, job.outputs[0], job.media_deleted_at, store, "result")


# A stored file up to this size is read in one go and sent in one piece: FileResponse reads and
# sends 64 KB at a time, a thread hop each, which cost a worker fetching a photo a few ms.
_READ_WHOLE_BYTES = 16 * 1024 * 1024


async def _stored_file(
    job_id: str, stored: JobFile, deleted_at: datetime | None, store: StoreDep, what: str
) -> Response:
    """The file, or 410 Gone once the retention sweep (or anything else) has deleted it."""
    if deleted_at is not None:
        when = as_utc(deleted_at).strftime("%Y-%m-%d")
        raise ApiError(
            410,
            "media_deleted",
            f"Job {job_id}'s {what} was deleted on {when}: media is kept for "
            "MEDIA_RETENTION_DAYS days after a job ends.",
        )
    path = store.path(stored.path)
    gone = ApiError(410, "media_deleted", f"Job {job_id}'s {what} is no longer stored.")
    if stored.size is not None and stored.size <= _READ_WHOLE_BYTES:
        try:
            return Response(await asyncio.to_thread(path.read_bytes), media_type=stored.mime)
        except FileNotFoundError:
            raise gone from None
    if not path.is_file():
        raise gone
    return FileResponse(path, media_type=stored.mime)


async def _inspect_outputs(
    session: SessionDep, settings: SettingsDep, job_id: str, files: list[UploadFile], *, one: bool
) -> list[tuple[bytes, MediaInfo]]:
    """Every file read (within the per-file limit) and inspected as the kind the job's preset
    makes; the first that does not fit is refused, naming its index. ``one``: the PUT /result
    shorthand, which answers as it always has (415 unsupported_image, 422 bad_image)."""
    kind = await jobs.output_kind(session, job_id)
    # The refusals below need no lock: nothing is held while the files are read and decoded.
    await session.rollback()
    max_bytes = settings.max_upload_bytes * RESULT_SIZE_FACTOR
    max_pixels = settings.max_image_pixels * RESULT_SIZE_FACTOR
    checked = []
    for index, upload in enumerate(files):
        label = "" if one else f"Output {index}: "
        data = await _read_upload(upload, max_bytes, label)
        try:
            info = await asyncio.to_thread(inspect_output, data, kind, max_pixels)
        except MediaRejected as exc:
            unsupported = exc.kind == "unsupported"
            if one:
                status, code = (415, "unsupported_image") if unsupported else (422, "bad_image")
                raise ApiError(status, code, exc.message) from None
            code = "unsupported_output" if unsupported else "bad_output"
            message = f"{label}{exc.message} (this preset makes: {kind})"
            raise ApiError(422, code, message) from None
        checked.append((data, info))
    return checked


async def _attach(
    session: SessionDep,
    store: StoreDep,
    job_id: str,
    outputs: list[tuple[bytes, MediaInfo]],
    *,
    succeed: bool = False,
    claim: bool = True,
) -> Response:
    replaced = await jobs.attach_outputs(
        session, store, job_id, outputs, succeed=succeed, claim=claim
    )
    try:
        await session.commit()
    except BaseException:
        await store.delete_all(replaced.written)
        raise
    # Only now is the earlier attempt's media unreferenced.
    await store.delete_all(replaced.removed)
    for data, info in outputs:
        metrics.OUTPUTS_STORED.labels(info.kind.value).inc()
        metrics.OUTPUT_BYTES.labels(info.kind.value).inc(len(data))
    if succeed:
        _count_transition(replaced.job, JobStatus.PROCESSING)
    return _answer(JobOut.of(replaced.job, replaced.owner))


@router.put("/{job_id}/outputs", response_model=JobOut)
async def upload_outputs(
    job_id: str,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    file: Annotated[
        list[UploadFile],
        File(description="Every output of this attempt, in order (1 to 20 files)"),
    ],
    succeed: Annotated[
        bool,
        Query(
            description="Also mark the job succeeded and claim its final message for sending "
            "(as POST status with succeeded and deliver), in the same transaction"
        ),
    ] = False,
    claim: Annotated[
        bool,
        Query(
            description="With succeed: false leaves the final message as it is (claimed "
            "while the job was processing, with POST delivery sending)"
        ),
    ] = True,
) -> Response:
    """All of an attempt's outputs in one request: all are stored, replacing an earlier
    attempt's, or none is. Each is checked as the preset's output kind (image, animation,
    video). The job must be processing."""
    if len(file) > MAX_OUTPUTS:
        raise ApiError(
            422, "too_many_outputs", f"At most {MAX_OUTPUTS} outputs per job; {len(file)} sent."
        )
    outputs = await _inspect_outputs(session, settings, job_id, file, one=False)
    return await _attach(session, store, job_id, outputs, succeed=succeed, claim=claim)


@router.put("/{job_id}/result", response_model=JobOut)
async def upload_result(
    job_id: str,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    image: Annotated[UploadFile, File(description="The rendered image")],
) -> Response:
    """One output: the shorthand of ``PUT outputs`` with a single file."""
    outputs = await _inspect_outputs(session, settings, job_id, [image], one=True)
    return await _attach(session, store, job_id, outputs)


@router.post("/{job_id}/delivery", response_model=JobOut)
async def record_delivery(job_id: str, body: DeliveryReport, session: SessionDep) -> Response:
    """What happened when the result (or apology) was sent to the user. ``sending`` claims
    the final message (409 delivery_claimed when it is claimed already); a processing job's
    may be claimed too, for the result to leave while the backend stores it."""
    await jobs.record_delivery(session, job_id, body.status, body.error)
    await session.commit()
    return _answer(await _job_out(session, job_id))


@router.post("/{job_id}/status-message", response_model=JobOut)
async def record_status_message(job_id: str, body: StatusMessage, session: SessionDep) -> Response:
    """The chat and message the bot shows the job's progress in.

    A job that has already ended for the user (its result or apology claimed, or cancelled)
    records nothing: the answer's ``status_message_id`` is then not the one sent, and the bot
    deletes that message, which nothing would ever update.
    """
    await jobs.record_status_message(session, job_id, body.chat_id, body.message_id)
    await session.commit()
    return _answer(await _job_out(session, job_id))


@router.post("/{job_id}/comfyui-crash", response_model=JobOut)
async def record_comfyui_crash(job_id: str, body: ComfyUICrash, session: SessionDep) -> Response:
    """ComfyUI died while running the job (the worker fails it after the second death)."""
    await jobs.record_comfyui_crash(session, job_id, body.seen)
    await session.commit()
    return _answer(await _job_out(session, job_id))
