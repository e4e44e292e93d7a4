"""Creating jobs and moving them through their states, with their charges and refunds."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace

from sqlalchemy import (
    ColumnElement,
    Row,
    ScalarSelect,
    bindparam,
    case,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import aliased

from comfygram.backend import accounts
from comfygram.backend.errors import ApiError, not_found
from comfygram.backend.models import FileRole, Job, JobFile, User, new_id, utcnow
from comfygram.backend.models import Preset as PresetRow
from comfygram.backend.presets import contract_of, get_preset
from comfygram.backend.storage import MediaStore
from comfygram.domain import ledger
from comfygram.domain.jobs import (
    ACTIVE,
    FINAL,
    REFUNDED_ON,
    DeliveryStatus,
    JobStatus,
    TransitionError,
    check_transition,
    counts_attempt,
    delivery_refusal,
)
from comfygram.domain.ledger import Reason
from comfygram.images import ImageInfo, ImageRejected, prepare_input
from comfygram.media import MediaInfo
from comfygram.presets import SLUG
from comfygram.presets.contract import Contract, MediaKind, RequestRefused


@dataclass(frozen=True)
class Photo:
    """One checked photo as it will be stored (images.prepare_input: one still frame), and
    the sha256 of the bytes the client sent (for the Idempotency-Key)."""

    data: bytes
    info: ImageInfo
    sent_digest: str


@dataclass(frozen=True)
class NewJob:
    telegram_id: int
    preset_slug: str
    prompt: str | None
    options: Mapping[str, str]
    photos: Sequence[Photo]  # in the preset's slot order
    idempotency_key: str | None


@dataclass(frozen=True)
class Request:
    """What a create request asks for, before any photo is decoded: enough for every
    refusal that is not about the photos' pixels."""

    telegram_id: int
    preset_slug: str
    prompt: str | None
    options: Mapping[str, str]
    photo_digests: Sequence[str]  # sha256 hex of each photo's bytes as sent, in slot order
    idempotency_key: str | None

    @classmethod
    def of(cls, new: NewJob) -> Request:
        return cls(
            new.telegram_id,
            new.preset_slug,
            new.prompt,
            new.options,
            [photo.sent_digest for photo in new.photos],
            new.idempotency_key,
        )


def request_digest(
    preset_slug: str, prompt: str | None, options: Mapping[str, str], photo_digests: Sequence[str]
) -> str:
    """sha256 hex of the whole request: a replayed Idempotency-Key must carry the same one."""
    canonical = json.dumps(
        {
            "preset": preset_slug,
            "prompt": prompt,
            "options": dict(sorted(options.items())),
            "photos": list(photo_digests),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def bytes_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Created:
    job: Job
    position: int
    replayed: bool
    owner: User  # held here, so the answer needs no query for it after the commit


def _is_job_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


async def get_job(session: AsyncSession, job_id: str, *, lock: bool = False) -> Job:
    """The job with its files; ``lock``: locked, and read afresh even when the session has
    read it before."""
    if not _is_job_id(job_id):
        raise not_found("job", job_id)
    query = select(Job).where(Job.id == job_id)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    job = await session.scalar(query)
    if job is None:
        raise not_found("job", job_id)
    return job


async def stored_file(
    session: AsyncSession, job_id: str, role: FileRole, index: int
) -> tuple[JobFile, datetime | None] | None:
    """The job's file of ``role`` at ``index`` (its position), and when the job's media was
    deleted, in one statement; None when there is no such file (or job)."""
    if not _is_job_id(job_id):
        return None
    found = await session.execute(
        select(JobFile, Job.media_deleted_at)
        .join(Job, Job.id == JobFile.job_id)
        .where(JobFile.job_id == job_id, JobFile.role == role, JobFile.position == index)
    )
    row = found.first()
    return None if row is None else (row[0], row[1])


# Jobs queued before the one read: its queue position.
_Ahead = aliased(Job)
_JOB_AND_OWNER = (
    select(
        *Job.__table__.c,
        User.telegram_id,
        User.language_code,
        case(
            (
                Job.status == JobStatus.QUEUED,
                select(func.count())
                .select_from(_Ahead)
                .where(_Ahead.status == JobStatus.QUEUED, _Ahead.created_at < Job.created_at)
                .scalar_subquery()
                + 1,
            ),
            else_=0,
        ).label("queue_position"),
    )
    .join(User, User.id == Job.user_id)
    .where(Job.id == bindparam("job_id"))
    # OFFSET keeps PostgreSQL and SQLite from merging this into the join below, which would
    # count the queue again for every file row.
    .offset(0)
    .subquery("job")
)
_FILES = JobFile.__table__
_FILE_COLUMNS = tuple(column.name for column in _FILES.c)
_VIEW = (
    select(_JOB_AND_OWNER, *(column.label(f"file_{column.name}") for column in _FILES.c))
    .outerjoin(_FILES, _FILES.c.job_id == _JOB_AND_OWNER.c.id)
    .order_by(_FILES.c.role, _FILES.c.position)
)


@dataclass(frozen=True)
class JobView:
    """A job as its status read shows it (schemas.JobOut): its columns, its owner's, its
    queue position and its files, read in one statement, so from one snapshot."""

    job: Row  # the jobs row's columns, by name
    telegram_id: int
    language: str | None
    position: int  # 1 for the next job to run; 0 once the job has left the queue
    inputs: list[SimpleNamespace]  # JobFile's columns, in slot order
    outputs: list[SimpleNamespace]


async def view(connection: AsyncConnection | AsyncSession, job_id: str) -> JobView:
    """The job for a status read, in one query instead of the job, its files, its user and
    its queue position one after another."""
    if not _is_job_id(job_id):
        raise not_found("job", job_id)
    rows = (await connection.execute(_VIEW, {"job_id": job_id})).all()
    if not rows:
        raise not_found("job", job_id)
    files: dict[str, list[SimpleNamespace]] = {FileRole.INPUT: [], FileRole.OUTPUT: []}
    for row in rows:
        if row.file_id is not None:
            fields = {name: row._mapping[f"file_{name}"] for name in _FILE_COLUMNS}
            files[row.file_role].append(SimpleNamespace(**fields))
    first = rows[0]
    return JobView(
        first,
        first.telegram_id,
        first.language_code,
        first.queue_position,
        files[FileRole.INPUT],
        files[FileRole.OUTPUT],
    )


async def queue_position(session: AsyncSession, job: Job) -> int:
    """1 for the next job to run; 0 once the job has left the queue."""
    if job.status != JobStatus.QUEUED:
        return 0
    ahead = await session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.status == JobStatus.QUEUED, Job.created_at < job.created_at)
    )
    return int(ahead or 0) + 1


@dataclass(frozen=True)
class Checked:
    preset: PresetRow
    contract: Contract
    chosen: dict[str, str]  # every option's choice, defaults filled in
    charge: int
    digest: str
    earlier: Job | None  # the job a replayed Idempotency-Key made


def _active_jobs(user_id: object) -> ScalarSelect:
    return (
        select(func.count())
        .select_from(Job)
        .where(Job.user_id == user_id, Job.status.in_(ACTIVE))
        .scalar_subquery()
    )


async def _user_and_preset(
    session: AsyncSession, request: Request, *, lock: bool
) -> tuple[User, PresetRow | None, int | None]:
    """The user (locked with `lock`), the preset asked for (None if there is none by that slug)
    and, without `lock`, the user's active jobs: one statement instead of three.

    Locked, the active jobs are counted after the lock is held (a count in the same statement
    could come from the snapshot taken before waiting for it, and let two requests through).
    """
    slug = request.preset_slug if SLUG.fullmatch(request.preset_slug) else None
    columns = (User, PresetRow) if lock else (User, PresetRow, _active_jobs(User.id))
    query = (
        select(*columns)
        .outerjoin(PresetRow, PresetRow.slug == slug)
        .where(User.telegram_id == request.telegram_id)
    )
    row = (await session.execute(query.with_for_update(of=User) if lock else query)).first()
    if row is None:
        raise not_found("user", request.telegram_id)
    return row[0], row[1], None if lock else row[2]


async def _check_request(
    session: AsyncSession,
    user: User,
    preset: PresetRow | None,
    request: Request,
    max_active: int,
    price: int | None,
    active: int | None,
) -> Checked:
    """Every refusal that needs no decoded photo: ban, preset, the preset's contract (photo
    count, prompt, options), replay, active jobs (counted here when `active` is None),
    balance."""
    accounts.refuse_banned(user)
    if preset is None or not preset.enabled:
        raise not_found("preset", request.preset_slug)
    contract = contract_of(preset)
    try:
        chosen = contract.resolve(
            photos=len(request.photo_digests), prompt=request.prompt, options=request.options
        )
    except RequestRefused as exc:
        raise ApiError(422, exc.code, f"The {preset.slug} preset: {exc.message}") from None
    digest = request_digest(preset.slug, request.prompt, chosen, request.photo_digests)
    charge = contract.price(preset.price, chosen) if price is None else price

    key = request.idempotency_key
    if key:
        earlier = await session.scalar(
            select(Job).where(Job.user_id == user.id, Job.idempotency_key == key)
        )
        if earlier is not None:
            if earlier.request_digest is not None:
                same = earlier.request_digest == digest
            else:  # made before 0005: only its preset and prompt were recorded
                same = (earlier.preset_slug, earlier.prompt) == (preset.slug, request.prompt)
            if not same:
                raise ApiError(
                    409,
                    "idempotency_key_reused",
                    "This Idempotency-Key was already used for a different request.",
                )
            return Checked(preset, contract, chosen, charge, digest, earlier)

    if active is None:
        active = await session.scalar(select(_active_jobs(user.id)))
    if active >= max_active:
        raise ApiError(
            409,
            "too_many_active_jobs",
            f"You already have {active} photos in progress; wait for one to finish.",
        )
    if user.balance < charge:
        raise accounts.insufficient_credits(user.balance, charge)
    return Checked(preset, contract, chosen, charge, digest, None)


async def precheck(session: AsyncSession, request: Request, max_active: int) -> Created | None:
    """The cheap refusals of `create`, before the photos are decoded; the earlier job when the
    Idempotency-Key replays one. Advisory (nothing is locked): `create` checks again."""
    user, preset, active = await _user_and_preset(session, request, lock=False)
    checked = await _check_request(session, user, preset, request, max_active, None, active)
    if checked.earlier is None:
        return None
    earlier = checked.earlier
    return Created(earlier, await queue_position(session, earlier), replayed=True, owner=user)


async def create(
    session: AsyncSession,
    store: MediaStore,
    request: NewJob,
    max_active: int,
    *,
    price: int | None = None,
) -> Created:
    """Charge the price the preset's contract gives for the chosen options (or `price`: 0 for
    an operator's free retry) and write the job and its photos, in one transaction the caller
    commits. The photos are already checked (images.prepare_input)."""
    asked = Request.of(request)
    user, preset, _ = await _user_and_preset(session, asked, lock=True)
    checked = await _check_request(session, user, preset, asked, max_active, price, None)
    if checked.earlier is not None:
        earlier = checked.earlier
        return Created(earlier, await queue_position(session, earlier), replayed=True, owner=user)

    job_id = new_id()
    if checked.charge:
        await accounts.post(
            session,
            user,
            -checked.charge,
            Reason.JOB_CHARGE,
            ledger.charge_key(job_id),
            job_id=job_id,
            new_key=True,
        )
    written: list[str] = []
    try:
        files = []
        for index, (slot, photo) in enumerate(
            zip(checked.contract.photos, request.photos, strict=True)
        ):
            name = MediaStore.input_name(job_id, index, slot.name, photo.info.extension)
            written.append(await store.write(name, photo.data))
            files.append(
                JobFile(
                    role=FileRole.INPUT,
                    position=index,
                    slot=slot.name,
                    kind=MediaKind.IMAGE.value,
                    mime=photo.info.mime,
                    path=name,
                    size=len(photo.data),
                    width=photo.info.width,
                    height=photo.info.height,
                    frames=1,
                )
            )
        job = Job(
            id=job_id,
            user_id=user.id,
            preset_slug=checked.preset.slug,
            prompt=request.prompt,
            options=checked.chosen,
            price=checked.charge,
            status=JobStatus.QUEUED,
            idempotency_key=request.idempotency_key,
            request_digest=checked.digest,
            files=files,
        )
        session.add(job)
        await session.flush()
        position = await queue_position(session, job)
    except BaseException:
        await store.delete_all(written)
        raise
    return Created(job, position, replayed=False, owner=user)


async def _refund(session: AsyncSession, user: User, job: Job, actor: str | None = None) -> bool:
    if not job.price:
        return False  # a free job (an operator's retry) has nothing to give back
    entry = await accounts.post(
        session,
        user,
        job.price,
        Reason.JOB_REFUND,
        ledger.refund_key(job.id),
        job_id=job.id,
        actor=actor,
    )
    return entry is not None


async def _lock(session: AsyncSession, job_id: str) -> tuple[User, Job]:
    """The job and its owner, both locked and read fresh: the owner first, as create() locks,
    so two requests never deadlock."""
    if not _is_job_id(job_id):
        raise not_found("job", job_id)
    owner = select(Job.user_id).where(Job.id == job_id).scalar_subquery()
    user = await session.scalar(select(User).where(User.id == owner).with_for_update())
    if user is None:
        raise not_found("job", job_id)
    return user, await get_job(session, job_id, lock=True)


async def transition(
    session: AsyncSession,
    job_id: str,
    target: JobStatus,
    *,
    error: str | None = None,
    worker: str | None = None,
    deliver: bool = False,
) -> tuple[Job, JobStatus]:
    """Move a job to `target` if docs/architecture.md allows it; failing or cancelling refunds it.
    ``deliver`` also claims its final message. Returns the job and the status it had.

    Asking for the state the job is already in changes nothing, so a retried call is harmless.
    """
    user, job = await _lock(session, job_id)
    previous = JobStatus(job.status)
    await _move(session, user, job, target, error=error, worker=worker)
    if deliver:
        _record_delivery(user, job, DeliveryStatus.SENDING, None)
    await session.flush()
    return job, previous


async def start(session: AsyncSession, job_id: str, worker: str) -> bool:
    """A worker takes the job: a queued one moves to processing (True: fresh); any other is
    left as it is, for the worker to re-attach to or finish. One UPDATE: it locks the job's
    row alone and takes nothing else while it holds it, so it cannot deadlock with the
    owner-first locks of the other calls."""
    if not _is_job_id(job_id):
        raise not_found("job", job_id)
    moved = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.PROCESSING, **_started(worker))
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    return moved.first() is not None


def _started(worker: str | None) -> dict[str, object]:
    """What moving to processing sets besides the status."""
    return {"started_at": utcnow(), "worker": worker, "progress": 0}


async def _move(
    session: AsyncSession,
    user: User,
    job: Job,
    target: JobStatus,
    *,
    error: str | None = None,
    worker: str | None = None,
) -> None:
    """`transition` on a job and owner already locked."""
    current = JobStatus(job.status)
    if current is target:
        return
    try:
        check_transition(current, target)
    except TransitionError as exc:
        raise ApiError(409, "invalid_transition", f"Job {job.id}: {exc}.") from None
    if target is JobStatus.SUCCEEDED and not job.outputs:
        raise ApiError(
            409, "result_missing", "Upload the job's outputs before marking it succeeded."
        )

    now = utcnow()
    if counts_attempt(current, target):
        job.attempts += 1
    if target is JobStatus.PROCESSING:
        for name, value in _started(worker).items():
            setattr(job, name, value)
    if target is JobStatus.SUCCEEDED:
        job.progress = 100
    if error is not None:
        job.error = error[:4000]
    if target in FINAL:
        job.finished_at = now
    job.status = target
    if target in REFUNDED_ON:
        await _refund(session, user, job)


async def refund(
    session: AsyncSession, job_id: str, *, actor: str | None = None
) -> tuple[Job, bool]:
    """Give a finished job's price back once; True when this call did it."""
    user, job = await _lock(session, job_id)
    if job.status not in FINAL:
        raise ApiError(
            409, "job_active", f"Job {job.id} is still {job.status}; cancel it or let it finish."
        )
    return job, await _refund(session, user, job, actor)


def retry_key(job_id: str) -> str:
    return f"admin-retry:{job_id}"


async def retry_free(
    session: AsyncSession, store: MediaStore, job_id: str, max_active: int, max_pixels: int
) -> Created:
    """An operator's retry of a failed job: a new job for the same user, preset, photos,
    prompt and options, at no charge. Keyed on the failed job, so retrying it twice makes
    one job."""
    failed = await get_job(session, job_id)
    if failed.status != JobStatus.FAILED:
        raise ApiError(
            409,
            "job_not_failed",
            f"Job {failed.id} is {failed.status}; only failed jobs are retried.",
        )
    user = await session.get(User, failed.user_id)
    photos = []
    for stored in failed.inputs:
        try:
            data = await asyncio.to_thread(store.path(stored.path).read_bytes)
        except FileNotFoundError:
            raise ApiError(
                404, "input_not_found", f"Job {failed.id}'s photo is no longer stored."
            ) from None
        try:
            # Inputs stored before inputs were brought down to one frame may still be animated.
            prepared, image = await asyncio.to_thread(prepare_input, data, max_pixels)
        except ImageRejected as exc:
            raise ApiError(422, "bad_image", exc.message) from None
        photos.append(Photo(prepared, image, bytes_digest(data)))
    request = NewJob(
        telegram_id=user.telegram_id,
        preset_slug=failed.preset_slug,
        prompt=failed.prompt,
        options=dict(failed.options or {}),
        photos=photos,
        idempotency_key=retry_key(failed.id),
    )
    return await create(session, store, request, max_active, price=0)


def _require_processing(job: Job, rule: str) -> None:
    """409 job_not_processing (saying ``rule``) unless the job is processing."""
    if job.status != JobStatus.PROCESSING:
        raise ApiError(409, "job_not_processing", f"Job {job.id} is {job.status}; {rule}.")


async def output_kind(session: AsyncSession, job_id: str) -> MediaKind:
    """The kind of output the job's preset makes (its contract's save node), in one statement;
    404 for an unknown job or a preset that is gone."""
    if not _is_job_id(job_id):
        raise not_found("job", job_id)
    preset = await session.scalar(
        select(PresetRow).join(Job, Job.preset_slug == PresetRow.slug).where(Job.id == job_id)
    )
    if preset is None:
        job = await get_job(session, job_id)  # which of the two is missing
        preset = await get_preset(session, job.preset_slug)
    return contract_of(preset).output.kind


@dataclass(frozen=True)
class Replaced:
    """Outputs attached in the session: ``written`` must go if the commit fails, ``removed``
    (the earlier attempt's files) once it succeeds."""

    job: Job
    owner: User
    written: list[str]
    removed: list[str]


async def attach_outputs(
    session: AsyncSession,
    store: MediaStore,
    job_id: str,
    outputs: Sequence[tuple[bytes, MediaInfo]],
    *,
    succeed: bool = False,
    claim: bool = True,
) -> Replaced:
    """All of an attempt's outputs at once: files written under fresh names, then the job's
    output rows replaced in the caller's transaction (an earlier attempt's rows go); with
    ``succeed`` the job is then marked succeeded and (unless not ``claim``) its final message
    claimed, in the same transaction. On any failure here the new files are deleted; see
    Replaced for what the caller does next."""
    user, job = await _lock(session, job_id)
    _require_processing(job, "outputs are taken while processing")
    names = MediaStore.output_names(job.id, [info.extension for _, info in outputs])
    written: list[str] = []
    try:
        for name, (data, _info) in zip(names, outputs, strict=True):
            written.append(await store.write(name, data))
        earlier = job.outputs
        for old in earlier:
            job.files.remove(old)  # delete-orphan: the row goes at the next flush
        # Deletes first, so the new rows never meet the old ones' (job, role, position).
        await session.flush()
        for index, (name, (data, info)) in enumerate(zip(names, outputs, strict=True)):
            job.files.append(
                JobFile(
                    role=FileRole.OUTPUT,
                    position=index,
                    slot=None,
                    kind=info.kind.value,
                    mime=info.mime,
                    path=name,
                    size=len(data),
                    width=info.width,
                    height=info.height,
                    frames=info.frames,
                    duration_ms=info.duration_ms,
                )
            )
        await session.flush()
        if succeed:
            await _move(session, user, job, JobStatus.SUCCEEDED)
            if claim:
                _record_delivery(user, job, DeliveryStatus.SENDING, None)
            await session.flush()
    except BaseException:
        await store.delete_all(written)
        raise
    return Replaced(job, user, written, [old.path for old in earlier])


async def record_delivery(
    session: AsyncSession, job_id: str, status: DeliveryStatus, error: str | None
) -> None:
    """A report on the job's final message (domain.jobs.delivery_refusal says which are
    taken). The worker's claim and its outcome, on every job's path, are one UPDATE; a refusal,
    a report after delivered and ``blocked`` (which marks the owner) lock owner and job."""
    if status is not DeliveryStatus.BLOCKED and _is_job_id(job_id):
        taken = await session.execute(
            update(Job)
            .where(Job.id == job_id, _takes(status))
            .values(_delivery_values(status, error))
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        if taken.first() is not None:
            return
    user, job = await _lock(session, job_id)
    _record_delivery(user, job, status, error)
    await session.flush()


def _takes(report: DeliveryStatus) -> ColumnElement[bool]:
    """delivery_refusal(...) is None, and not delivered yet, as SQL on the job's row: the
    (status, delivery status) pairs the rule takes, listed from the rule itself."""
    return tuple_(Job.status, Job.delivery_status).in_(_taken_pairs(report))


@functools.cache
def _taken_pairs(report: DeliveryStatus) -> list[tuple[str, str]]:
    return [
        (status.value, delivery.value)
        for status in JobStatus
        for delivery in DeliveryStatus
        if delivery is not DeliveryStatus.DELIVERED
        and delivery_refusal(status, delivery, report) is None
    ]


def _delivery_values(status: DeliveryStatus, error: str | None) -> dict[str, object]:
    values: dict[str, object] = {
        "delivery_status": status,
        "delivery_error": error[:4000] if error else None,
    }
    if status is DeliveryStatus.DELIVERED:
        values["delivered_at"] = utcnow()
    return values


def _record_delivery(user: User, job: Job, status: DeliveryStatus, error: str | None) -> None:
    """`record_delivery` on a job and owner already locked."""
    refusal = delivery_refusal(JobStatus(job.status), DeliveryStatus(job.delivery_status), status)
    if refusal == "job_active":
        raise ApiError(
            409, "job_active", f"Job {job.id} is still {job.status}; nothing to deliver yet."
        )
    if refusal == "delivery_claimed":
        raise ApiError(
            409,
            "delivery_claimed",
            f"Job {job.id}: delivery already {job.delivery_status}; it is not sent twice.",
        )
    if refusal == "not_releasable":
        raise ApiError(
            409,
            "not_releasable",
            f"Job {job.id} is {job.status} with delivery {job.delivery_status}; only a "
            "processing job's claimed message is given back.",
        )
    if job.delivery_status == DeliveryStatus.DELIVERED:
        return
    for name, value in _delivery_values(status, error).items():
        setattr(job, name, value)
    if status is DeliveryStatus.BLOCKED:
        user.blocked_bot = True


async def record_comfyui_crash(session: AsyncSession, job_id: str, seen: int) -> Job:
    """Count a ComfyUI death while the job ran, once per ``seen`` (the count the worker knew)."""
    job = await get_job(session, job_id, lock=True)
    _require_processing(job, "ComfyUI deaths are counted while it runs")
    if (job.comfyui_crashes or 0) == seen:
        job.comfyui_crashes = seen + 1
        await session.flush()
    return job


async def record_status_message(
    session: AsyncSession, job_id: str, chat_id: int, message_id: int
) -> bool:
    """Record the chat and message showing the job's progress; False when the job has already
    ended for the user (its final message claimed, or cancelled), so nothing would ever update
    or remove that message.

    Serialized with the delivery claim on the job's row: either the message is recorded first
    and the claimant removes it, or the claim came first and the caller removes it. One
    UPDATE, as `start`: the bot records its message just as a worker takes the job, and the
    worker's start would wait for a locking read's hold on the row until its commit.
    """
    if not _is_job_id(job_id):
        raise not_found("job", job_id)
    recorded = await session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status != JobStatus.CANCELLED,
            Job.delivery_status == DeliveryStatus.PENDING,
        )
        .values(status_chat_id=chat_id, status_message_id=message_id)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    return recorded.first() is not None


async def list_for_user(session: AsyncSession, user: User, limit: int) -> list[Job]:
    rows = await session.scalars(
        select(Job).where(Job.user_id == user.id).order_by(Job.created_at.desc()).limit(limit)
    )
    return list(rows)


async def queued(session: AsyncSession) -> list[Job]:
    """Every queued job, oldest first: what Redis must hold."""
    rows = await session.scalars(
        select(Job).where(Job.status == JobStatus.QUEUED).order_by(Job.created_at)
    )
    return list(rows)


async def processing_since(session: AsyncSession, before: datetime) -> list[Job]:
    """Jobs processing with no update since ``before``: candidates for a lost worker."""
    rows = await session.scalars(
        select(Job)
        .where(Job.status == JobStatus.PROCESSING, Job.updated_at < before)
        .order_by(Job.created_at)
    )
    return list(rows)


def queue_payload(job: Job) -> dict[str, object]:
    """The job as JSON on the Redis queue; the backend stays the authority on everything else."""
    return {"preset": job.preset_slug, "attempts": job.attempts}
