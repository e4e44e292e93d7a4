"""The worker: takes jobs from the queue and runs them on one ComfyUI, one at a time.

The flow of one job (docs/architecture.md, docs/worker.md): take it from the stream, mark it
``processing`` through the backend, upload its photos (one per slot), submit the preset's
workflow with the job's options under a prompt id derived from the job and attempt, wait for it,
download every file the attempt saved, render them for Telegram, store them all through the
backend in one request that marks it ``succeeded`` (a still's photos are sent meanwhile: their
message is claimed first), send them to the user, and only then acknowledge it on the stream.
A worker killed anywhere leaves the job pending on the stream; after its lease another worker
(or this one, restarted) takes it and picks up where the record says it stopped, re-attaching to
the prompt in ComfyUI when it is still there.

To keep the GPU busy, the next job is prepared and submitted while the current one runs, so
ComfyUI starts it the moment the current one ends; storing and delivering results run in the
background, off the GPU's critical path.

Every job ends (docs/worker.md, "Failures"): a job's lease is renewed only while a step of this
worker is working on it (preparing, waiting on ComfyUI, storing or delivering). A step that
ends without acknowledging or handing the job back, whatever the reason, stops the renewal,
so the lease lapses and the job is taken up again from what the backend records. A refusal
of the backend (a 4xx) is never retried: the job fails with its refund and one apology.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import mimetypes
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from PIL import Image
from redis.exceptions import RedisError

from comfygram import metrics
from comfygram.api import BackendClient, BackendError, BackendUnavailable, Job, ResultLimits
from comfygram.comfyui import (
    ComfyUIClient,
    ComfyUIError,
    ComfyUIUnavailable,
    PromptRejected,
    PromptTimeout,
    PromptVanished,
)
from comfygram.livestatus import LiveStatus
from comfygram.logs import job_context
from comfygram.presets import Preset, compatibility_problems
from comfygram.presets.contract import MediaKind
from comfygram.queue import Delivery, JobQueue
from comfygram.tasks import cancelled
from comfygram.worker import encode, workflow
from comfygram.worker.delivery import Form, OutputFile
from comfygram.worker.failures import (
    MAX_COMFYUI_CRASHES,
    Action,
    FailureKind,
    StaleOutput,
    classify,
    decide,
    describe,
    error_kind,
)
from comfygram.worker.gpu_lock import GpuLock
from comfygram.worker.messages import LivePreview, LiveProgress, UserMessages
from comfygram.worker.render import Rendered

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    comfyui_url: str
    lease_seconds: float = 30.0
    grace_seconds: float = 30.0
    max_attempts: int = 3
    backoff_seconds: float = 5.0
    result_cache_seconds: int = 3600
    # How long to wait between checks while ComfyUI is down or the GPU lock is taken.
    idle_poll_seconds: float = 1.0
    # Quiet WebSocket time after which the client asks /history and /queue.
    quiet_poll_seconds: float = 2.0
    # Prompts kept waiting in ComfyUI's queue behind the running one (0: one job at a time).
    queue_depth: int = 2


@dataclass
class Run:
    """A job this worker holds: prepared (submitted to ComfyUI) or being finished."""

    delivery: Delivery
    job: Job
    preset: Preset
    prompt_id: str
    attempt: int
    started: float = field(default_factory=time.monotonic)
    # ComfyUI has started executing this run's prompt (its death now counts against the job).
    executing: bool = False
    # Times the prompt was lost from ComfyUI's queue before it ran and submitted again.
    resubmits: int = 0


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        backend: BackendClient,
        comfy: ComfyUIClient,
        queue: JobQueue,
        live: LiveStatus,
        lock: GpuLock,
        messages: UserMessages,
    ) -> None:
        self.config = config
        self.backend = backend
        self.comfy = comfy
        self.queue = queue
        self.live = live
        self.lock = lock
        self.messages = messages
        self.healthy = asyncio.Event()
        self.runnable: list[str] = []
        self.problems: dict[str, str] = {}
        self._held: dict[str, Delivery] = {}  # message id -> job we must renew the lease of
        self._background: set[asyncio.Task[None]] = set()
        # message id -> background finishers alive for it (one may start another: a refused
        # result becomes an apology); the lease goes only when the last of them ends.
        self._finishing: Counter[str] = Counter()
        self._presets: dict[str, tuple[float, Preset]] = {}
        self._limits: tuple[float, ResultLimits] | None = None
        self._stopping = asyncio.Event()
        self._backend_down = Outage("backend", "check BACKEND_API_URL and that the backend runs")
        self._redis_down = Outage("Redis", "check REDIS_URL and that Redis runs")
        self._comfyui_down = Outage(
            f"ComfyUI at {_without_credentials(config.comfyui_url)}",
            "check COMFYUI_URL and that ComfyUI runs",
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then hand back what is unfinished and release the GPU."""
        keepers = [
            asyncio.create_task(self._keep_leases(), name="worker-leases"),
            asyncio.create_task(self._watch_comfyui(), name="worker-health"),
        ]
        work = asyncio.create_task(self._work(), name="worker-loop")
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                work.result()  # a crash of the loop is a crash of the worker
            self._stopping.set()
            log.info("worker %s stopping: finishing the current job", self.config.name)
            try:
                await asyncio.wait_for(asyncio.shield(work), self.config.grace_seconds)
            except TimeoutError:
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
            if self._background:
                await asyncio.wait(self._background, timeout=self.config.grace_seconds)
            await self._hand_back_all()
        finally:
            for task in [stopper, *keepers]:
                with contextlib.suppress(Exception):
                    await cancelled(task)
            with contextlib.suppress(RedisError, OSError):
                await self.lock.release()

    async def _hand_back_all(self) -> None:
        """Jobs still held go back to the queue now, for the next worker to re-attach to."""
        for delivery in list(self._held.values()):
            with contextlib.suppress(RedisError, OSError):
                await self.queue.defer(delivery, delivery.payload, 0)
                log.info("job %s handed back to the queue", delivery.job_id)
            self._held.pop(delivery.message_id, None)

    # -- the loop -------------------------------------------------------------------------

    async def _work(self) -> None:
        """A feeder keeps ComfyUI's queue topped up; the runs are waited for in the order they
        were submitted, which is the order ComfyUI runs them in."""
        await self._queue_ready()
        submitted: asyncio.Queue[Run | None] = asyncio.Queue()
        # One slot per prompt in ComfyUI: the running one and queue_depth waiting behind it.
        room = asyncio.Semaphore(self.config.queue_depth + 1)
        feeder = asyncio.create_task(self._feed(submitted, room), name="worker-feeder")
        try:
            while (run := await submitted.get()) is not None:
                try:
                    await self._execute(run)
                finally:
                    room.release()
            feeder.result()  # a crash of the feeder is a crash of the worker
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder

    async def _feed(self, submitted: asyncio.Queue[Run | None], room: asyncio.Semaphore) -> None:
        """Take jobs and submit them, one after another (in the queue's order), while there is
        room in ComfyUI's queue; on stop, take nothing new (what is submitted is still waited
        for)."""
        try:
            while not self._stopping.is_set():
                await room.acquire()
                await self._ready()
                run = None if self._stopping.is_set() else await self._next()
                if run is None:
                    room.release()
                else:
                    submitted.put_nowait(run)
        finally:
            submitted.put_nowait(None)

    async def _queue_ready(self) -> None:
        """Wait for Redis to answer (its consumer group is made on the way)."""
        while not self._stopping.is_set():
            try:
                await self.queue.ensure_group()
            except (RedisError, OSError) as exc:
                self._redis_down.failed(exc)
                await self._pause(self._redis_down.delay())
                continue
            self._redis_down.passed()
            return

    async def _ready(self) -> None:
        """Wait until ComfyUI answers and the GPU lock is ours (or we are stopping)."""
        while not self._stopping.is_set():
            if self.healthy.is_set():
                try:
                    if await self.lock.acquire():
                        self._redis_down.passed()
                        return
                except (RedisError, OSError) as exc:
                    self._redis_down.failed(exc)
                    await self._pause(self._redis_down.delay())
                    continue
            await self._pause(self.config.idle_poll_seconds)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _next(self) -> Run | None:
        """Take one job (a stale one first) and get it running in ComfyUI."""
        consumer = self.config.name
        try:
            stale = await self.queue.claim_stale(consumer, int(self.config.lease_seconds * 1000))
            for extra in stale[1:]:  # one at a time; the others go back to the line
                await self.queue.defer(extra, extra.payload, 0)
            delivery = stale[0] if stale else await self.queue.take(consumer, block_ms=1000)
        except (RedisError, OSError) as exc:
            self._redis_down.failed(exc)
            await self._pause(self._redis_down.delay())
            return None
        self._redis_down.passed()
        if delivery is None:
            return None
        self._held[delivery.message_id] = delivery
        try:
            with job_context(delivery.job_id):
                run = await self._prepare(delivery)
        except BackendUnavailable as exc:
            # Not the job's fault: it waits in the queue, no attempt used.
            self._backend_down.failed(exc)
            await self._hand_back(delivery, delay=self._backend_down.delay())
            return None
        except Exception:
            log.exception(
                "job %s: could not be prepared; it goes back to the queue", delivery.job_id
            )
            await self._hand_back(delivery, delay=self.config.idle_poll_seconds)
            return None
        self._backend_down.passed()
        return run

    async def _prepare(self, delivery: Delivery) -> Run | None:
        """Bring the job to a submitted prompt, or settle it when it needs no run.

        The photos go to ComfyUI while the backend records the start (they are only files
        until a prompt names them): a fresh job then needs nothing but the submit."""
        uploads = self._upload_ahead(delivery)
        try:
            job, fresh = await self.backend.start(delivery.job_id, self.config.name)
        except BaseException as exc:
            await _cancel(uploads)
            if isinstance(exc, BackendError) and exc.status == 404:
                log.warning("job %s is unknown to the backend; dropped", delivery.job_id)
                await self._ack(delivery)
                return None
            raise
        if job.status != "processing":
            await _cancel(uploads)
            if job.status in ("succeeded", "failed"):
                # A worker died between the record and the user's message: finish that part.
                self._spawn(delivery, self._finish_settled(delivery, job))
            else:
                await self._ack(delivery)  # cancelled
            return None
        try:
            preset = await self._preset(job.preset)
        except BackendUnavailable:
            await _cancel(uploads)
            raise
        except Exception as exc:
            # The preset is gone (a 404: failed at once) or cannot be read (a failed run): the
            # job is processing now, so whatever happens is bounded by its attempts.
            await _cancel(uploads)
            await self._settle_failure(delivery, job, None, exc)
            return None
        attempt = job.attempts
        run = Run(delivery, job, preset, workflow.prompt_id_for(job.id, attempt), attempt)
        slots = len(preset.contract.photos)
        if uploads is not None and (uploads.attempt, uploads.slots) != (attempt, slots):
            await _cancel(uploads)  # for another attempt, or the preset changed: again below
            uploads = None
        with contextlib.suppress(RedisError, OSError):
            await self.live.set(job.id, "processing", worker=self.config.name)
        try:
            # A fresh job cannot have a prompt in ComfyUI yet; a re-taken one may.
            if fresh or not await self._in_comfyui(run.prompt_id):
                await self._submit(run, uploads)
            else:
                await _cancel(uploads)
        except BaseException as exc:
            await _cancel(uploads)
            if isinstance(exc, BackendUnavailable) or not isinstance(exc, Exception):
                raise
            await self._settle_run(run, exc)
            return None
        return run

    def _upload_ahead(self, delivery: Delivery) -> Uploads | None:
        """Start uploading the job's photos for the attempt its queue entry names (None: the
        entry does not say, or the preset is not known yet)."""
        slug, attempt = delivery.payload.get("preset"), delivery.payload.get("attempts")
        cached = self._presets.get(slug) if isinstance(slug, str) else None
        if cached is None or not isinstance(attempt, int):
            return None
        preset = cached[1]
        task = asyncio.create_task(self._upload_photos(delivery.job_id, attempt, preset))
        # Its failure is read where the photos are used; unused, it must not be reported.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        return Uploads(attempt, len(preset.contract.photos), task)

    async def _upload_photos(self, job_id: str, attempt: int, preset: Preset) -> list[str]:
        """Every photo slot's file, fetched (from the queue when it rode along with the job,
        else from the backend) and put into ComfyUI together; index n is the job's input n,
        in the contract's order."""

        async def one(index: int) -> str:
            photo = None
            with contextlib.suppress(RedisError, OSError):
                photo = await self.queue.photo(job_id, index)
            try:
                data, content_type = photo or await self.backend.job_input(job_id, index)
            except BackendError as exc:
                raise _InputMissing(f"photo {index + 1} could not be read: {exc.message}") from exc
            extension = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ".png"
            name = workflow.input_name(job_id, attempt, index, extension)
            return await self.comfy.upload_image(data, name, overwrite=True)

        slots = range(len(preset.contract.photos))
        return list(await asyncio.gather(*(one(index) for index in slots)))

    async def _in_comfyui(self, prompt_id: str) -> bool:
        """Whether ComfyUI already has this prompt (queued, running or finished)."""
        if await self.comfy.history(prompt_id) is not None:
            return True
        running, pending = await self.comfy.queue()
        return prompt_id in running or prompt_id in pending

    async def _submit(self, run: Run, uploads: Uploads | None = None) -> None:
        job = run.job
        if uploads is not None:
            names = await uploads.task
        else:
            names = await self._upload_photos(job.id, run.attempt, run.preset)
        prompt = workflow.build_workflow(
            run.preset,
            photos=names,
            prompt=job.prompt,
            chosen=job.options,
            job_id=job.id,
            attempt=run.attempt,
        )
        if not await self.lock.held():
            raise ComfyUIUnavailable("the GPU lock was lost to another worker")
        await self.comfy.submit(prompt, run.prompt_id)
        log.info("job %s: submitted as prompt %s", job.id, run.prompt_id)

    async def _execute(self, run: Run) -> None:
        """Wait for the run's prompt; hand the result or the failure on. Never raises: a job
        whose step died here is let go (its lease lapses) and taken up again later."""
        with job_context(run.job.id):
            try:
                await self._wait_for_result(run)
            except BackendUnavailable as exc:
                self._backend_down.failed(exc)
                self._let_go(run.delivery)
            except Exception:
                log.exception(
                    "job %s: its run ended on an unexpected error; it is taken up again "
                    "after its lease",
                    run.job.id,
                )
                self._let_go(run.delivery)

    async def _wait_for_result(self, run: Run) -> None:
        run.started = time.monotonic()
        deadline = run.started + run.preset.timeout_seconds

        async def on_start() -> None:
            run.executing = True

        preview: LivePreview | None = None
        shown = LiveProgress(self.messages, run.job, run.preset)

        async def on_progress(percent: int) -> None:
            with contextlib.suppress(RedisError, OSError):
                await self.live.set(
                    run.job.id, "processing", progress=percent, worker=self.config.name
                )
            if preview is not None:
                preview.percent = percent
            shown.offer(percent)

        while True:
            try:
                # A previews preset's frames go into its photo status message while it runs;
                # closed, like the progress, before anything else may touch that message
                # (result, apology, retry).
                preview = self.messages.live_preview(run.job, run.preset)
                try:
                    outputs = await self.comfy.wait(
                        run.prompt_id,
                        deadline=deadline,
                        on_progress=on_progress,
                        quiet_poll=self.config.quiet_poll_seconds,
                        on_start=on_start,
                        on_preview=None if preview is None else preview.offer,
                    )
                finally:
                    await shown.close()
                    if preview is not None:
                        await preview.close()
                ours = workflow.our_outputs(
                    outputs, run.job.id, run.attempt, run.preset.contract.output.node
                )
                if not ours:
                    raise StaleOutput(
                        f"ComfyUI returned {[o.filename for o in outputs]}, not this attempt's "
                        "files"
                    )
                # All of them before anything is stored: a job never has half its outputs.
                files = await asyncio.gather(*(self.comfy.download(image) for image in ours))
                saved = [(image.filename, data) for image, data in zip(ours, files, strict=True)]
            except ComfyUIUnavailable as exc:
                if run.executing and await self._crashed_under(run, exc):
                    return
                log.warning("job %s: ComfyUI unreachable (%s); waiting for it", run.job.id, exc)
                if not await self._resume_after_outage(run):
                    return
                deadline = time.monotonic() + run.preset.timeout_seconds
                continue
            except PromptVanished as exc:
                # ComfyUI restarted (or someone deleted the prompt). While it ran, that is a
                # death under this job; while it only waited in the queue, it is not its fault.
                if run.executing:
                    if await self._crashed_under(run, exc):
                        return
                elif run.resubmits >= _MAX_RESUBMITS:
                    await self._settle_run(run, exc)
                    return
                else:
                    run.resubmits += 1
                log.warning("job %s: %s; submitting it again", run.job.id, exc)
                if not await self._resubmit(run):
                    return
                deadline = time.monotonic() + run.preset.timeout_seconds
                continue
            except Exception as exc:
                if isinstance(exc, PromptTimeout):
                    await self._stop_prompt(run.prompt_id)
                await self._settle_run(run, exc)
                return
            self._spawn(run.delivery, self._finish_success(run, saved))
            return

    async def _crashed_under(self, run: Run, exc: ComfyUIError) -> bool:
        """ComfyUI died while running this job: count it; True when the job failed for it."""
        run.executing = False  # the next death counts only if a new run starts executing
        seen = run.job.comfyui_crashes
        job = await _retrying(lambda: self.backend.record_comfyui_crash(run.job.id, seen=seen))
        run.job = job
        log.warning(
            "job %s: ComfyUI died while running it (%d time(s)): %s",
            job.id, job.comfyui_crashes, exc,
        )  # fmt: skip
        if job.comfyui_crashes < MAX_COMFYUI_CRASHES:
            return False
        message = f"ComfyUI died {job.comfyui_crashes} times while running this job"
        await self._settle_failure(run.delivery, job, run.preset, _ComfyUICrashed(message))
        return True

    async def _resume_after_outage(self, run: Run) -> bool:
        """Once ComfyUI is back, re-attach to the prompt or submit it again; no attempt used."""
        self.healthy.clear()
        while not self.healthy.is_set():
            if self._stopping.is_set():
                return False
            await self._pause(self.config.idle_poll_seconds)
        return await self._resubmit(run, unless_in_comfyui=True)

    async def _resubmit(self, run: Run, *, unless_in_comfyui: bool = False) -> bool:
        """Submit the run's prompt again (ComfyUI is up but lost it, or may have: then only when
        it is not in ComfyUI's queue or history); False when settled."""
        try:
            if not (unless_in_comfyui and await self._in_comfyui(run.prompt_id)):
                await self._submit(run)
        except ComfyUIUnavailable:
            return await self._resume_after_outage(run)
        except BackendUnavailable:
            raise
        except Exception as exc:
            await self._settle_run(run, exc)
            return False
        return True

    async def _stop_prompt(self, prompt_id: str) -> None:
        """Interrupt exactly our prompt (and drop it if it is still queued)."""
        with contextlib.suppress(ComfyUIError):
            await self.comfy.interrupt(prompt_id)
            await self.comfy.delete_queued([prompt_id])

    # -- outcomes -------------------------------------------------------------------------

    async def _settle_run(self, run: Run, exc: BaseException) -> None:
        await self._settle_failure(run.delivery, run.job, run.preset, exc)

    async def _settle_failure(
        self, delivery: Delivery, job: Job, preset: Preset | None, exc: BaseException
    ) -> None:
        """A processing job's run went wrong: retry it, fail it for good, or (ComfyUI down)
        hand it back without using an attempt."""
        if isinstance(exc, _InputMissing):
            kind = FailureKind.INPUT
        elif isinstance(exc, _ComfyUICrashed):
            kind = FailureKind.CRASHED
        elif isinstance(exc, _ResultRefused):
            kind = FailureKind.REFUSED
        elif isinstance(exc, _Undeliverable):
            kind = exc.kind
        elif isinstance(exc, StaleOutput):
            kind = FailureKind.EXECUTION
        else:
            kind = classify(exc)
        message = exc.message if isinstance(exc, PromptRejected) else str(exc) or type(exc).__name__
        if kind is not FailureKind.REFUSED:
            metrics.COMFYUI_ERRORS.labels(kind.value).inc()
        if kind is FailureKind.UNAVAILABLE:
            # Not the job's fault: it waits in the queue, no attempt used.
            log.warning("job %s: ComfyUI unavailable (%s); back to the queue", job.id, message)
            self.healthy.clear()
            await self._hand_back(delivery, delay=self.config.idle_poll_seconds)
            return
        decision = decide(
            kind,
            attempts_used=job.attempts,
            max_attempts=self.config.max_attempts,
            backoff_base=self.config.backoff_seconds,
            previous_error=job.error,
        )
        if decision.free_memory:
            with contextlib.suppress(ComfyUIError):
                await self.comfy.free()
        error = describe(kind, message)
        if decision.action is Action.RETRY:
            log.warning(
                "job %s: attempt %d failed (%s); retrying in %.0fs",
                job.id, job.attempts + 1, error, decision.delay,
            )  # fmt: skip
            job = await _retrying(lambda: self.backend.set_status(job.id, "queued", error=error))
            await self.queue.defer(
                delivery, {**delivery.payload, "attempts": job.attempts}, decision.delay
            )
            self._release(delivery)
            with contextlib.suppress(RedisError, OSError):
                await self.live.set(job.id, "queued")
            await self.messages.show_retrying(job, self.config.max_attempts, preset)
            return
        log.error("job %s: failed for good after %d run(s): %s", job.id, job.attempts + 1, error)
        job = await _retrying(lambda: self.backend.set_status(job.id, "failed", error=error))
        with contextlib.suppress(RedisError, OSError):
            await self.live.set(job.id, "failed")
        self._spawn(delivery, self._finish_failed(delivery, job, preset, kind))

    async def _finish_success(self, run: Run, saved: list[tuple[str, bytes]]) -> None:
        """Store every output of the run in one request and mark the job succeeded, send the
        result once, acknowledge. A still's photos leave while the backend stores them: its
        message is claimed while the job is still processing."""
        job = run.job
        files = [(data, filename, _mime_of(filename)) for filename, data in saved]
        rendering: asyncio.Task[list[Rendered]] | None = None
        sending: asyncio.Task[None] | None = None
        claimed = False
        try:
            await self._check_result(files)
            rendering = asyncio.create_task(self._render(None, run.preset, files))
            if run.preset.contract.output.kind is MediaKind.IMAGE:
                job, rendered, sending = await self._store_still(run, files, rendering)
            else:
                job = await self._store(job, files)
                rendered = await rendering
                if _recorded_kinds(job) != _kinds_rendered(run.preset, files):
                    # The backend read an output as another kind than the preset makes (a
                    # still where an animation was expected): render by the record.
                    rendered = await self._render(job, run.preset, files)
                job, claimed = await self._succeed(job)
        except BackendUnavailable:
            raise  # the backend is down, not the job's fault: let it go, no attempt used
        except BackendError as exc:
            if exc.status in (404, 409):
                # The job is no longer ours to finish (gone, or moved on): its record decides.
                log.warning("job %s: result not taken (%s); back to the queue", job.id, exc)
                await self._hand_back(run.delivery, delay=0)
                return
            await self._settle_run(run, exc)  # refused for good: no retry can help
            return
        except (_UploadLost, _Undeliverable) as exc:
            log.warning("job %s: %s", job.id, exc)
            await self._settle_run(run, exc)
            return
        except Exception as exc:
            # Nobody foresaw this: count it as a failed run, so it cannot repeat for ever.
            log.exception("job %s: storing the result failed", job.id)
            await self._settle_run(run, exc)
            return
        finally:
            if rendering is not None:
                await _stop(rendering)
        log.info(
            "job %s: succeeded in %.1fs with %d output(s)",
            job.id, time.monotonic() - run.started, len(files),
        )  # fmt: skip
        # Redis writes the photo need not wait for: they go while it is sent.
        remembering = asyncio.create_task(self._remember(job, files))
        try:
            if sending is None:
                # Not claimed early (claimed by a run that died sending, or no answer): the
                # claim now decides, as on a redelivery, and never sends a claimed one twice.
                await self.messages.deliver_result(job, run.preset, rendered, claimed=claimed)
            else:
                await sending
        finally:
            await remembering
        await self._ack(run.delivery)
        await self._forget(job.id)

    async def _store_still(
        self,
        run: Run,
        files: Sequence[tuple[bytes, str, str]],
        rendering: asyncio.Task[list[Rendered]],
    ) -> tuple[Job, list[Rendered], asyncio.Task[None] | None]:
        """Store a still's outputs, marking the job succeeded; the job, its rendered photos,
        and their send, under way since the photos were rendered (None: not claimed early, to
        be claimed and sent now).

        Stills decoded into photos are what the backend takes, so the photos need not wait for
        the store, only for the claim of their message: asked while they are rendered, and
        given back if they cannot all be."""
        job = run.job
        claiming = asyncio.create_task(self._claim_early(job))
        try:
            rendered = await rendering
        except BaseException:
            await self._give_back(claiming)
            raise
        if _all_photos(files, rendered):
            mine = await claiming
        else:
            await self._give_back(claiming)
            mine = None
        if mine is None:
            return await self._store(job, files, succeed=True), rendered, None
        sending = asyncio.create_task(
            self.messages.deliver_result(mine, run.preset, rendered, claimed=True)
        )
        try:
            job = await self._store(job, files, succeed=True)
        except BaseException:
            # What comes next (a retry, an apology) sees how the send ended.
            await _ended(sending, job.id)
            raise
        return job, rendered, sending

    async def _claim_early(self, job: Job) -> Job | None:
        """Claim the final message of the processing job; the job as claimed, or None when
        it is not claimed now: by an earlier run (which may have sent it), or by this call
        without an answer (it may have been)."""
        try:
            return await self.backend.record_delivery(job.id, "sending")
        except BackendUnavailable:
            return None
        except BackendError as exc:
            if exc.code == "delivery_claimed":
                return None
            raise

    async def _give_back(self, claiming: asyncio.Task[Job | None]) -> None:
        """Give back the claim of a message that cannot go early, when it was made (nothing
        has been sent): the result is then stored first, and its message or apology claimed
        as usual."""
        try:
            await asyncio.wait([claiming])
        except asyncio.CancelledError:
            claiming.cancel()
            raise
        mine = None if claiming.cancelled() or claiming.exception() else claiming.result()
        if mine is None:
            return
        try:
            await _retrying(lambda: self.backend.record_delivery(mine.id, "pending"))
        except BackendError as exc:
            if exc.code != "not_releasable":  # given back already: a retried call's answer
                raise

    async def _remember(self, job: Job, files: Sequence[tuple[bytes, str, str]]) -> None:
        """The job's live status, and its outputs into the result cache, where a worker that
        takes the job up again finds them if this one dies before the result is sent."""
        with contextlib.suppress(RedisError, OSError):
            await self.live.set(job.id, "succeeded", progress=100, worker=self.config.name)
        with contextlib.suppress(RedisError, OSError):
            await self.live.cache_results(job.id, files, self.config.result_cache_seconds)

    async def _forget(self, job_id: str) -> None:
        """Drop the cached outputs once the result went out and the job left the queue: kept
        for RESULT_CACHE_SECONDS after every job, they held an hour of results in Redis."""
        with contextlib.suppress(RedisError, OSError):
            await self.live.drop_results(job_id)

    async def _store(
        self,
        job: Job,
        files: Sequence[tuple[bytes, str, str]],
        *,
        succeed: bool = False,
    ) -> Job:
        """All outputs into the backend in one request (``succeed``: the job marked succeeded
        in the same step; its message is claimed apart, early or after)."""
        try:
            job = await _retrying(
                lambda: self.backend.put_outputs(job.id, files, succeed=succeed, claim=False)
            )
        except BackendUnavailable as exc:
            if not await self._backend_answers(job.id):
                raise
            # The backend is up, yet this upload never got an answer: a refusal that cut
            # the connection, or a fault of its storage. A failed run: bounded retries.
            raise _UploadLost(f"the backend did not take the result: {exc}") from exc
        return job

    async def _render(
        self, job: Job | None, preset: Preset, files: Sequence[tuple[bytes, str, str]]
    ) -> list[Rendered]:
        """The outputs rendered for Telegram, by the kinds the job records (None: the kind
        the preset makes)."""
        outputs = await _output_files(job, preset, files)
        try:
            return await self.messages.prepare_result(preset, outputs)
        except encode.TooLarge as exc:
            raise _Undeliverable(str(exc), FailureKind.TOO_LARGE) from exc
        except encode.EncodeError as exc:
            raise _Undeliverable(str(exc), FailureKind.REFUSED) from exc

    async def _succeed(self, job: Job) -> tuple[Job, bool]:
        """Mark the job succeeded and claim its delivery in one step; True when claimed.

        When that step gets no answer it may or may not have happened: the job is then
        marked succeeded on its own (repeatable), and the delivery claimed as a redelivery
        would, which never sends a claimed one twice."""
        try:
            return await self.backend.set_status(job.id, "succeeded", deliver=True), True
        except BackendUnavailable:
            return await _retrying(lambda: self.backend.set_status(job.id, "succeeded")), False

    async def _backend_answers(self, job_id: str) -> bool:
        try:
            await self.backend.job(job_id)
        except (BackendError, BackendUnavailable):
            return False
        return True

    async def _check_result(self, files: Sequence[tuple[bytes, str, str]]) -> None:
        """Refuse here outputs the backend would refuse: a body over its limit is cut off
        with the connection, which looks like an outage, not like the 413 it is."""
        limits = await self._result_limits()
        if limits is None:
            return
        if len(files) > limits.max_outputs:
            raise _ResultRefused(
                f"the run saved {len(files)} files, over the backend's limit of "
                f"{limits.max_outputs}"
            )
        for n, (data, _filename, _mime) in enumerate(files):
            name = "the result" if len(files) == 1 else f"output {n + 1}"
            if len(data) > limits.result_max_bytes:
                raise _ResultRefused(
                    f"{name} is {len(data):,} bytes, over the backend's limit of "
                    f"{limits.result_max_bytes:,}"
                )
            try:
                with Image.open(io.BytesIO(data)) as image:
                    width, height = image.size
            except Image.DecompressionBombError as exc:
                raise _ResultRefused(f"{name} has far too many pixels: {exc}") from None
            except Exception:
                continue  # a video, or not ours to judge: the backend says what it makes of it
            if width * height > limits.result_max_pixels:
                raise _ResultRefused(
                    f"{name} is {width}x{height} pixels, over the backend's limit of "
                    f"{limits.result_max_pixels:,}"
                )

    async def _result_limits(self) -> ResultLimits | None:
        if self._limits is not None and time.monotonic() - self._limits[0] < 60:
            return self._limits[1]
        try:
            limits = await _retrying(self.backend.result_limits)
        except BackendError:
            return None  # a backend that does not say: its answer to the upload decides
        self._limits = (time.monotonic(), limits)
        return limits

    async def _finish_failed(
        self, delivery: Delivery, job: Job, preset: Preset | None, kind: FailureKind | None
    ) -> None:
        await self.messages.deliver_apology(job, preset, kind)
        await self._ack(delivery)

    async def _finish_settled(self, delivery: Delivery, job: Job) -> None:
        """A redelivered job that is already decided: make sure the user heard about it."""
        try:
            preset: Preset | None = await self._preset(job.preset)
        except BackendError:
            preset = None  # removed since: the messages name the job's preset slug instead
        if job.status == "failed":
            await self._finish_failed(delivery, job, preset, error_kind(job.error))
            return
        files = await self.live.cached_results(job.id)
        if files is None or len(files) != len(job.outputs):
            files = []
            for output in job.outputs:
                data, content_type = await _retrying(
                    lambda index=output.index: self.backend.job_output(job.id, index)
                )
                mime = content_type.split(";")[0].strip() or output.mime
                files.append((data, f"{job.id}-{output.index}{_extension(mime)}", mime))
        outputs = await _output_files(job, preset, files)
        await self.messages.deliver_outputs(job, preset, outputs)
        await self._ack(delivery)
        await self._forget(job.id)

    # -- plumbing -------------------------------------------------------------------------

    def _spawn(self, delivery: Delivery, work: Awaitable[None]) -> None:
        """Finish a job in the background; its lease is renewed only while this runs."""
        self._finishing[delivery.message_id] += 1

        async def guarded() -> None:
            with job_context(delivery.job_id):
                try:
                    await work
                except BackendUnavailable as exc:
                    self._backend_down.failed(exc)
                except Exception:
                    log.exception(
                        "job %s: finishing it failed; it is taken up again after its lease",
                        delivery.job_id,
                    )
                finally:
                    self._finishing[delivery.message_id] -= 1
                    # Acknowledged, handed back, or let go: no one renews its lease any more.
                    self._let_go(delivery)

        task = asyncio.create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _ack(self, delivery: Delivery) -> None:
        await self.queue.ack(delivery)
        self._release(delivery)

    async def _hand_back(self, delivery: Delivery, delay: float) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.queue.defer(delivery, delivery.payload, delay)
        self._release(delivery)

    def _let_go(self, delivery: Delivery) -> None:
        """A step for the job ended without settling it: stop renewing its lease, unless a
        background finisher is still working on it."""
        if self._finishing[delivery.message_id] <= 0:
            del self._finishing[delivery.message_id]
            self._release(delivery)

    def _release(self, delivery: Delivery) -> None:
        """Stop renewing the job's lease: nothing is being done for it here any more. Unless
        it was acknowledged or handed back, it is taken up again once the lease lapses."""
        self._held.pop(delivery.message_id, None)

    async def _preset(self, slug: str) -> Preset:
        cached = self._presets.get(slug)
        if cached and time.monotonic() - cached[0] < 60:
            return cached[1]
        detail = await self.backend.preset(slug)
        preset = Preset.from_manifest(detail.manifest, detail.workflow)
        self._presets[slug] = (time.monotonic(), preset)
        return preset

    async def _keep_leases(self) -> None:
        """Renew the leases of held jobs and the GPU lock, well within their expiry."""
        interval = self.config.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if self.lock.token is not None and not await self.lock.renew():
                    log.error("GPU lock lost; no new jobs until it is ours again")
                for delivery in list(self._held.values()):
                    renewed = await self.queue.renew(self.config.name, delivery)
                    # Not renewed because it was acknowledged meanwhile: nothing was lost.
                    if not renewed and delivery.message_id in self._held:
                        log.warning("job %s: lease lost to another worker", delivery.job_id)
                        self._held.pop(delivery.message_id, None)
            except (RedisError, OSError) as exc:
                self._redis_down.failed(exc)
            except Exception:
                # Renewal must outlive any surprise: a lapsed lease hands a running job to
                # another worker.
                log.exception("lease renewal failed; trying again")

    async def _watch_comfyui(self) -> None:
        """Track ComfyUI's health; on start and whenever it comes back, check the presets."""
        ttl = max(3 * self.config.idle_poll_seconds, self.config.lease_seconds)
        checked = False
        while True:
            try:
                await self.comfy.system_stats()
                if not checked or not self.healthy.is_set():
                    checked = await self._check_presets()
                self.healthy.set()
                self._comfyui_down.passed()
            except ComfyUIError as exc:
                self._comfyui_down.failed(exc)
                self.healthy.clear()
            except Exception:
                # The watcher must outlive any surprise: without it no job is ever taken.
                log.exception("checking ComfyUI and the presets failed; trying again")
            try:
                await self.backend.worker_heartbeat(
                    self.config.name,
                    comfyui_url=self.config.comfyui_url,
                    healthy=self.healthy.is_set(),
                    runnable=self.runnable,
                    problems=self.problems,
                    ttl_seconds=ttl,
                )
            except BackendUnavailable as exc:
                self._backend_down.failed(exc)
                await asyncio.sleep(self._backend_down.delay())
                continue
            except BackendError as exc:
                log.warning("heartbeat refused by the backend: %s", exc)
            else:
                self._backend_down.passed()
            await asyncio.sleep(self.config.idle_poll_seconds)

    async def _check_presets(self) -> bool:
        """Which presets this ComfyUI can run; False when the backend could not list them
        (checked again on the next round)."""
        object_info = await self.comfy.object_info()
        try:
            listed = await self.backend.presets()
        except BackendUnavailable as exc:
            self._backend_down.failed(exc)
            return False
        except BackendError as exc:
            log.warning("presets not checked, backend: %s", exc)
            return False
        runnable: list[str] = []
        problems: dict[str, str] = {}
        for summary in listed:
            try:
                preset = await self._preset(summary.slug)
            except BackendUnavailable as exc:
                self._backend_down.failed(exc)
                return False
            except Exception as exc:  # one unreadable preset must not stop the others
                problems[summary.slug] = f"cannot be read: {exc}"
                log.warning("preset %s cannot be read: %s", summary.slug, exc)
                continue
            found = compatibility_problems(preset, object_info)
            if found:
                problems[preset.slug] = "; ".join(found)
                log.warning("preset %s cannot run here: %s", preset.slug, problems[preset.slug])
            else:
                runnable.append(preset.slug)
        self.runnable, self.problems = runnable, problems
        log.info("ComfyUI can run %d preset(s): %s", len(runnable), ", ".join(runnable) or "none")
        return True


# A prompt lost from ComfyUI's queue before it ran is submitted again this often, no attempt used.
_MAX_RESUBMITS = 3


@dataclass(frozen=True)
class Uploads:
    """A job's photos on their way into ComfyUI: one per slot, named for one attempt."""

    attempt: int
    slots: int
    task: asyncio.Task[list[str]]


async def _cancel(uploads: Uploads | None) -> None:
    """Stop uploads that are not needed (after all, or any more); their outcome is moot."""
    if uploads is not None:
        await _stop(uploads.task)


async def _stop(task: asyncio.Task[T]) -> None:
    """Cancel a helper task that is no longer needed and wait until it has ended (without
    raising its outcome: the caller has its own)."""
    if not task.done():
        task.cancel()
    await asyncio.wait([task])


def _all_photos(files: Sequence[tuple[bytes, str, str]], rendered: Sequence[Rendered]) -> bool:
    """Whether every output was decoded into a photo from a PNG, JPEG or WebP file: a still
    the backend takes (its own check is the same decode), so the photos may leave first."""
    photos = {piece.output for part in rendered for piece in part.pieces if piece.form is Form.JPEG}
    return len(photos) == len(files) and all(
        data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"))
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
        for data, _filename, _mime in files
    )


async def _ended(task: asyncio.Task[None], job_id: str) -> None:
    """Wait for a task that must not be cut short to end, and log its error (the caller is
    already failing for its own); when the caller is cancelled, so is the task."""
    try:
        await asyncio.wait([task])
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("job %s: sending the result failed too: %r", job_id, error)


class _InputMissing(Exception):
    """The job's photo cannot be fetched or used: no retry will help."""


class _ResultRefused(Exception):
    """The result is beyond what the backend takes: no retry will change that."""


class _Undeliverable(Exception):
    """The stored outputs cannot be sent to Telegram (too large even encoded smaller)."""

    def __init__(self, message: str, kind: FailureKind) -> None:
        super().__init__(message)
        self.kind = kind


def _mime_of(filename: str) -> str:
    """An output's type from its extension (png, webp, mp4...), as ComfyUI named it."""
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _extension(mime: str) -> str:
    return {"image/png": ".png", "image/webp": ".webp", "video/mp4": ".mp4"}.get(
        mime, mimetypes.guess_extension(mime) or ""
    )


def _recorded_kinds(job: Job) -> list[str]:
    return [str(output.kind) for output in sorted(job.outputs, key=lambda o: o.index)]


def _kinds_rendered(preset: Preset, files: Sequence[object]) -> list[str]:
    return [preset.contract.output.kind.value] * len(files)


async def _output_files(
    job: Job | None, preset: Preset | None, files: Sequence[tuple[bytes, str, str]]
) -> list[OutputFile]:
    """The outputs with what delivery needs of each: the kind the backend recorded (else,
    or with no job, the preset's), and dimensions and length read from the bytes."""
    recorded = {output.index: output for output in job.outputs} if job is not None else {}
    default = preset.contract.output.kind.value if preset is not None else "image"

    def build() -> list[OutputFile]:
        built = []
        for index, (data, filename, mime) in enumerate(files):
            known = recorded.get(index)
            kind = str(known.kind) if known is not None else default
            try:
                facts = encode.probe(data, kind)
            except encode.EncodeError:
                facts = encode.Facts()  # delivery sends what it cannot read as a file
            built.append(
                OutputFile(
                    index=index,
                    data=data,
                    filename=filename,
                    mime=mime,
                    kind=kind,
                    width=facts.width,
                    height=facts.height,
                    frames=facts.frames,
                    duration_seconds=facts.duration_seconds,
                )
            )
        return built

    return await asyncio.to_thread(build)


class _UploadLost(Exception):
    """The backend answers, but not to the upload of this result."""


class _ComfyUICrashed(Exception):
    """ComfyUI died under this job too often: it is not given the job again."""


def _without_credentials(url: str) -> str:
    """The URL without a user or password, fit for a log line."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


class Outage:
    """One line when a service goes down (what, and what to check), one when it is back, and
    a growing pause between tries while it stays down."""

    def __init__(self, service: str, hint: str, *, first: float = 1.0, cap: float = 15.0) -> None:
        self.service = service
        self.hint = hint
        self.first = first
        self.cap = cap
        self.failures = 0

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.failures == 1:
            # The underlying error names no URL (a URL may carry a password).
            cause = exc.__cause__ or exc
            reason = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
            log.warning(
                "%s unreachable (%s): %s; retrying until it answers",
                self.service, reason.splitlines()[0][:200], self.hint,
            )  # fmt: skip

    def passed(self) -> None:
        if self.failures:
            log.info("%s reachable again", self.service)
        self.failures = 0

    def delay(self) -> float:
        """Seconds to wait before the next try: doubling from ``first`` up to ``cap``."""
        return min(self.cap, self.first * 2 ** max(0, self.failures - 1))


async def _retrying(call: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
    """Backend calls on the way out: a short outage should not cost a finished result."""
    for attempt in range(attempts):
        try:
            return await call()
        except BackendUnavailable:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(min(10.0, 0.5 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")
