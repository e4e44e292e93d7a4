"""Where a single job's time goes, and how long ComfyUI sits idle while jobs wait (issue 13).

    .venv/bin/python bench/fast_path.py [--comfyui real|double|both] [--jobs 20] [--burst 24]
        [--worker-src PATH ...] [--compare PATH_A PATH_B] [--no-status-message] [--double-delay 0]
        [--side 512] [--worker-backend] [--stock-comfyui] [--gpu-ms 0]

The system as operators deploy it, each part its own process: `comfygram backend` (uvicorn) on a
fresh PostgreSQL database (127.0.0.1:5432, created and dropped here), Redis 127.0.0.1:6379 (db 9,
a fresh key prefix), one `comfygram worker` configured through its environment, and ComfyUI: the
real 0.3.64 (started on a free port and stopped here) and/or the ComfyUI double (in this
process). The Telegram double runs in this process; the bench plays the bot: it registers users,
grants credits, creates each job with `POST /api/jobs/create` (the `invert` preset, a fresh
512x512 PNG of noise, 788 KB, so ComfyUI's cache never answers) and sends the job's status
message as the bot does, though straight to the Telegram double: the bot's own call would also
take the chat's turn in the shared Telegram rate budget. `--no-status-message` leaves it out (a
job created through the API alone: the worker then has no message to edit or delete).

Every instant is wall clock (time.time()): the create call's 201 as this client received it
("accepted"), the job's created_at / started_at / finished_at from `GET /api/jobs/{id}`, ComfyUI's
`execution_start` / `execution_success` timestamps from `/history`, and the moment the Telegram
double had read the whole sendPhoto request ("handed to Telegram").

Single jobs (`--jobs`, one at a time on an idle system, two warm-up jobs first): p50/p95 of
accepted -> processing (and created_at -> processing), processing -> ComfyUI start, ComfyUI's
execution, ComfyUI done -> succeeded, ComfyUI done -> handed to Telegram, and the overhead:
(handed to Telegram - accepted) - execution; issue 13's goal is a median <= 30 ms. Under the
table, the job with the median overhead as a timeline (ms after accepted, the Telegram calls to
its chat included), to see which step a stage's time went to.

A bare best-case runner on the same ComfyUI in the same run is the yardstick: upload the PNG,
`POST /prompt` with a client_id, wait on the WebSocket for `executing` with node null, `GET
/history`, `GET /view`; its overhead is its total minus the execution.

Burst (`--burst` jobs created at once, each by its own user): ComfyUI's idle fraction from
`/history`, the gaps between one execution's end and the next one's start over the span from
the first start to the last end. "while jobs wait" counts a gap only from the moment some job
that ran later had been accepted (arrivals slower than ComfyUI are not the worker's idling);
"all gaps" counts every gap; "once every job was created" counts from the moment the burst's
last job was accepted, when no creation competes for the CPU any more; "of which a prompt was
queued" is the part of the gaps when the next prompt was already in ComfyUI's queue, ComfyUI's
own share; the rest is ComfyUI waiting for the worker to submit (the double logs when each prompt
was queued; of the real ComfyUI, a WebSocket of the bench's own hears each change of its queue's
length, which ComfyUI sends every client). The bare runner does the same keeping two prompts in
ComfyUI. Goal: <= 3 %.
Under it, the CPU each part of the system spent per job over the burst (from /proc: the
backend's and the worker's process trees, the real ComfyUI, this process with its doubles, and
the machine's rest: PostgreSQL, Redis) and how busy the machine's cores were, over the whole
burst and from ComfyUI's first start to its last end: when they are all busy, ComfyUI waits for
a core, not for a prompt.

`--worker-backend` gives each worker a backend process of its own (the bot's creations go to
the other; their CPU is counted together), as docs/deploy.md suggests. `--stock-comfyui` runs
the real ComfyUI without comfygram's extension (comfyui/custom_nodes); the last line says how
long ComfyUI's full garbage collections took.

`--gpu-ms N` (real ComfyUI only) gives every job, the bare runner's too, a GPU's share: the
`gpu` preset is `invert` with the bench's own node (bench/comfyui/custom_nodes, loaded here
only) waiting N ms before the inversion, as a sampler waits on its device with the CPU free.
Here the whole of `invert` is CPU work on the cores the rest of the system needs; on a GPU
server most of a job is not, and it is whether the worker keeps such a ComfyUI fed that the
idle fraction should tell (`--side 256 --gpu-ms 40`: a 50 ms job).

`--worker-src PATH` (repeatable; `--compare A B` is the same as two of them) runs the backend
and the worker of each with PYTHONPATH=PATH, e.g. a `git worktree` of an older commit's `src`:
a worker is always paired with the backend of the same source. The bench, the doubles and the
bare runner always come from this checkout. Each source gets its own database, key prefix,
backend and worker, all running at once on each ComfyUI: single jobs take turns between the
sources (a load drifting on a shared machine weighs on each alike), then each source's burst and
its bare runner, one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import redis.asyncio as aioredis
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.backend_rates import machine_busy, tree_cpu_seconds  # noqa: E402
from comfygram.comfyui import ComfyUIClient  # noqa: E402
from tests.doubles.comfyui import ComfyUIDouble  # noqa: E402
from tests.doubles.telegram import TEST_BOT_TOKEN, TelegramDouble  # noqa: E402
from tests.real_comfyui import RealComfyUI, missing  # noqa: E402
from tests.redis_server import free_port  # noqa: E402

API_TOKEN = "bench-fast-path-token"
PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "postgres"}
REDIS_URL = "redis://127.0.0.1:6379/9"
INVERT = ROOT / "src/comfygram/presets/builtin/invert"
# The bench's own ComfyUI node (bench/comfyui/custom_nodes), for --gpu-ms.
BENCH_NODES = ROOT / "bench" / "comfyui" / "extra_model_paths.yaml"
WARM_UP = 2
FIRST_USER = 5_000_000
START_TIMEOUT = 90.0
JOB_TIMEOUT = 60.0


@dataclass(frozen=True)
class Workload:
    """The preset every job asks for, its workflow (the bare runner submits the same one) and
    the presets folder that holds it (None: a built-in)."""

    preset: str
    workflow: dict[str, Any]
    presets_dir: Path | None = None

    @classmethod
    def invert(cls) -> Workload:
        return cls("invert", json.loads((INVERT / "workflow.json").read_text()))

    @classmethod
    def gpu_stand_in(cls, root: Path, milliseconds: int) -> Workload:
        """`invert` with the bench's GPU stand-in before the inversion: a job whose GPU part
        takes ``milliseconds``, its CPU parts (decode, invert, encode) as they are."""
        graph = cls.invert().workflow
        graph["4"] = {
            "class_type": "ComfygramBenchGpuWait",
            "inputs": {"image": ["1", 0], "milliseconds": milliseconds},
        }
        graph["2"]["inputs"]["image"] = ["4", 0]
        folder = root / "presets" / "gpu"
        folder.mkdir(parents=True)
        manifest = (INVERT / "preset.toml").read_text()
        assert 'slug = "invert"' in manifest
        (folder / "preset.toml").write_text(manifest.replace('slug = "invert"', 'slug = "gpu"'))
        (folder / "workflow.json").write_text(json.dumps(graph))
        return cls("gpu", graph, folder.parent)


def noise_png(side: int) -> bytes:
    """Random RGB pixels: a PNG that does not compress (788 KB at 512 px) and that no cache
    has seen."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def wall(stamp: str) -> float:
    """A backend timestamp (ISO 8601, UTC when it says nothing) as time.time()."""
    moment = datetime.fromisoformat(stamp)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


# -- ComfyUI's own record --------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    """One prompt's run, from its `/history` status messages (seconds, wall clock)."""

    prompt_id: str
    start: float
    end: float
    graph: str  # the prompt as JSON text, to find which job it ran

    @property
    def seconds(self) -> float:
        return self.end - self.start


def executions(history: dict[str, Any]) -> list[Execution]:
    """The successful runs in a `/history` answer, in the order they started."""
    runs = []
    for prompt_id, entry in history.items():
        stamps = {
            kind: data.get("timestamp")
            for kind, data in (entry.get("status") or {}).get("messages") or []
        }
        if stamps.get("execution_start") is None or stamps.get("execution_success") is None:
            continue
        graph = json.dumps(entry["prompt"][2])
        start, end = stamps["execution_start"] / 1000, stamps["execution_success"] / 1000
        runs.append(Execution(prompt_id, start, end, graph))
    return sorted(runs, key=lambda run: run.start)


def run_of(job_id: str, runs: list[Execution]) -> Execution:
    """The job's last successful run (its output prefix carries the job id)."""
    return [run for run in runs if job_id in run.graph][-1]


def idle(runs: list[Execution], accepted: dict[str, float]) -> tuple[float, float]:
    """ComfyUI's idle fraction over [first start, last end]: (while jobs wait, all gaps).

    ``accepted`` maps a prompt id to when its job was accepted; a gap counts as "waiting"
    only from the moment a job that ran later (any of them) was already accepted."""
    span = runs[-1].end - runs[0].start
    waiting_since = list(itertools.accumulate(reversed([accepted[r.prompt_id] for r in runs]), min))
    waiting_since.reverse()  # [i]: the earliest acceptance among runs i and later
    gaps = waiting = 0.0
    for index, (previous, following) in enumerate(itertools.pairwise(runs), start=1):
        gaps += max(0.0, following.start - previous.end)
        waiting += max(0.0, following.start - max(previous.end, waiting_since[index]))
    return waiting / span, gaps / span


def late_submits(runs: list[Execution], queued: dict[str, float]) -> list[tuple[float, float]]:
    """Where ComfyUI waited for the worker: (ms from the first start, ms waited) for each prompt
    queued more than 2 ms after the one before it had ended."""
    return [
        (1000 * (previous.end - runs[0].start), 1000 * (queued[following.prompt_id] - previous.end))
        for previous, following in itertools.pairwise(runs)
        if queued[following.prompt_id] - previous.end > 0.002
    ]


def idle_after(runs: list[Execution], moment: float) -> float:
    """ComfyUI's idle fraction from ``moment`` (or its first start, if later) to its last end:
    after the last job of a burst was accepted, what is left is the worker's feeding, with no
    creation competing for the CPU."""
    start = max(moment, runs[0].start)
    gaps = sum(
        max(0.0, following.start - max(previous.end, start))
        for previous, following in itertools.pairwise(runs)
    )
    return gaps / (runs[-1].end - start)


class QueueWatch:
    """When each prompt reached ComfyUI's queue, heard on a WebSocket of its own: ComfyUI sends
    every client a `status` message with `queue_remaining` (waiting + running) on each change,
    so a rise by n is n prompts queued; they run in the order they were queued."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.queued: list[float] = []  # wall clock, in order
        self._remaining: int | None = None

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[QueueWatch]:
        client_id = f"bench-watch-{uuid.uuid4().hex}"
        async with (
            aiohttp.ClientSession() as session,
            listening(session, self.url, client_id, self._on_event),
        ):
            yield self

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") != "status":
            return
        remaining = event["data"]["status"]["exec_info"]["queue_remaining"]
        if self._remaining is not None and remaining > self._remaining:
            self.queued += [time.time()] * (remaining - self._remaining)
        self._remaining = remaining

    def queued_at(self, runs: list[Execution]) -> dict[str, float] | None:
        """When each of ``runs`` (in the order they started) was queued; None if the count of
        prompts heard differs (another client's, or a message lost)."""
        if len(self.queued) != len(runs):
            return None
        return {run.prompt_id: at for run, at in zip(runs, self.queued, strict=True)}


@contextlib.asynccontextmanager
async def listening(
    session: aiohttp.ClientSession,
    url: str,
    client_id: str,
    on_event: Callable[[dict[str, Any]], None],
) -> AsyncIterator[None]:
    """ComfyUI's WebSocket as ``client_id`` while the block runs: each JSON message (previews,
    sent as binary, are not) goes to ``on_event``."""
    async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:

        async def listen() -> None:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    on_event(json.loads(message.data))

        listener = asyncio.create_task(listen())
        try:
            yield
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener


async def history(session: aiohttp.ClientSession, url: str) -> list[Execution]:
    async with session.get(f"{url}/history", params={"max_items": "100000"}) as response:
        response.raise_for_status()
        return executions(await response.json())


# -- the bare best-case runner -----------------------------------------------------------------


class BareRunner:
    """Upload, submit with a client_id, wait for `executing` node null, read the history, fetch
    the file: the least a runner can do, one WebSocket and one keep-alive HTTP session."""

    def __init__(self, url: str, workflow: dict[str, Any]) -> None:
        self.url = url
        self.workflow = workflow
        self.client_id = uuid.uuid4().hex
        self._done: dict[str, asyncio.Future[None]] = {}

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[BareRunner]:
        async with (
            aiohttp.ClientSession() as session,
            listening(session, self.url, self.client_id, self._on_event),
        ):
            self.session = session
            yield self

    def _on_event(self, event: dict[str, Any]) -> None:
        data = event.get("data") or {}
        if event.get("type") == "executing" and data.get("node") is None:
            waiter = self._done.get(data.get("prompt_id", ""))
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def submit(self, png: bytes) -> str:
        """Upload the photo and queue its prompt; returns the prompt id."""
        name = f"bare-{uuid.uuid4().hex}.png"
        form = aiohttp.FormData()
        form.add_field("image", png, filename=name, content_type="image/png")
        form.add_field("overwrite", "true")
        async with self.session.post(f"{self.url}/upload/image", data=form) as response:
            response.raise_for_status()
            uploaded = (await response.json())["name"]
        prompt_id = str(uuid.uuid4())
        graph = json.loads(json.dumps(self.workflow))
        graph["1"]["inputs"]["image"] = uploaded
        graph["3"]["inputs"]["filename_prefix"] = f"bare/{prompt_id}"
        self._done[prompt_id] = asyncio.get_running_loop().create_future()
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        async with self.session.post(f"{self.url}/prompt", json=body) as response:
            response.raise_for_status()
        return prompt_id

    async def collect(self, prompt_id: str) -> bytes:
        """Wait for the prompt to finish; its output's bytes."""
        await asyncio.wait_for(asyncio.shield(self._done[prompt_id]), JOB_TIMEOUT)
        del self._done[prompt_id]
        async with self.session.get(f"{self.url}/history/{prompt_id}") as response:
            entry = (await response.json())[prompt_id]
        [image] = entry["outputs"]["3"]["images"]
        async with self.session.get(f"{self.url}/view", params=image) as response:
            response.raise_for_status()
            return await response.read()

    async def single(self, png: bytes) -> tuple[str, float]:
        """One job start to end: (prompt id, seconds)."""
        started = time.time()
        prompt_id = await self.submit(png)
        await self.collect(prompt_id)
        return prompt_id, time.time() - started

    async def feed(self, photos: list[bytes], ahead: int) -> list[str]:
        """Keep ``ahead`` prompts in ComfyUI until every photo ran; their prompt ids."""
        slots = asyncio.Semaphore(ahead)

        async def one(png: bytes) -> str:
            async with slots:
                prompt_id = await self.submit(png)
                await asyncio.wait_for(asyncio.shield(self._done[prompt_id]), JOB_TIMEOUT)
            await self.collect(prompt_id)  # after the slot is free, as a runner would
            return prompt_id

        return list(await asyncio.gather(*(one(png) for png in photos)))


# -- where the CPU went -------------------------------------------------------------------------


def comfyui_pid(url: str) -> int | None:
    """The real ComfyUI's process serving ``url`` (its command line names the port)."""
    port = url.rsplit(":", 1)[1]
    for folder in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            words = (folder / "cmdline").read_bytes().split(b"\0")
            if any(w.endswith(b"main.py") for w in words) and port.encode() in words:
                return int(folder.name)
    return None


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds spent by each part of the system between two readings: the backend and the
    worker (process trees), the real ComfyUI, this process (the bench playing the bot, the
    Telegram double, and the ComfyUI double when it is the one running), and the rest of the
    machine (PostgreSQL, Redis, anything else), from /proc."""

    def __init__(self, backends: list[int], worker: int, comfyui: int | None) -> None:
        self.readers = {
            "backend": lambda: sum(tree_cpu_seconds(pid) for pid in backends),
            "worker": lambda: tree_cpu_seconds(worker),
            "ComfyUI": (lambda: tree_cpu_seconds(comfyui)) if comfyui else (lambda: 0.0),
            "bench + doubles": own_cpu_seconds,
        }

    def read(self) -> dict[str, float]:
        seconds = {name: reader() for name, reader in self.readers.items()}
        busy, total = machine_busy()
        tick = os.sysconf("SC_CLK_TCK")
        return seconds | {"machine": busy / tick, "machine, all": total / tick}

    @staticmethod
    def per_job(before: dict[str, float], after: dict[str, float], jobs: int) -> dict[str, float]:
        """ms per job by part ("PostgreSQL, Redis, other" is the machine's rest), and how busy
        the machine's cores were, in %."""
        spent = {name: after[name] - before[name] for name in before}
        machine, available = spent.pop("machine"), spent.pop("machine, all")
        spent["PostgreSQL, Redis, other"] = max(0.0, machine - sum(spent.values()))
        per_job = {name: seconds * 1000 / jobs for name, seconds in spent.items()}
        return per_job | {"machine busy, whole burst, %": 100 * machine / available}


class MachineLoad:
    """How busy the machine's cores are, sampled every ``every`` seconds (wall clock) while the
    block runs, so the share of a span known only afterwards (ComfyUI's first start to its last
    end) can be read."""

    def __init__(self, every: float = 0.02) -> None:
        self.every = every
        self.samples: list[tuple[float, int, int]] = []  # (time.time(), busy, total jiffies)

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[MachineLoad]:
        async def sample() -> None:
            while True:
                self.samples.append((time.time(), *machine_busy()))
                await asyncio.sleep(self.every)

        sampler = asyncio.create_task(sample())
        try:
            yield self
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            self.samples.append((time.time(), *machine_busy()))

    def busy_between(self, start: float, end: float) -> float:
        """The busy share of every core's time from the last sample at or before ``start`` to
        the first at or after ``end``."""
        first = max((s for s in self.samples if s[0] <= start), default=self.samples[0])
        last = min((s for s in self.samples if s[0] >= end), default=self.samples[-1])
        return (last[1] - first[1]) / max(1, last[2] - first[2])


# -- the system under test ---------------------------------------------------------------------


@dataclass
class Source:
    """A `src` folder the backend and worker run from, and how the table names it."""

    path: Path
    label: str

    @classmethod
    def of(cls, path: str) -> Source:
        folder = Path(path).resolve()
        if not (folder / "comfygram" / "__main__.py").is_file():
            raise SystemExit(f"{folder} is not a src folder holding the comfygram package")
        git = ["git", "-C", str(folder)]
        commit = subprocess.run([*git, "log", "-1", "--format=%h"], capture_output=True, text=True)
        if commit.returncode != 0:
            return cls(folder, folder.parent.name)
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "."], capture_output=True, text=True
        ).stdout.strip()
        return cls(folder, commit.stdout.strip() + ("+wip" if dirty else ""))

    def describe(self) -> str:
        done = subprocess.run(
            ["git", "-C", str(self.path), "log", "-1", "--format=%h %ad %s", "--date=iso"],
            capture_output=True,
            text=True,
        )
        return f"{self.label}: {self.path} ({done.stdout.strip()[:110] or 'not a git checkout'})"


@dataclass
class Stages:
    """What one (source, ComfyUI) pair measured; seconds, except the fractions."""

    single: dict[str, list[float]] = field(default_factory=dict)
    bare_execution: list[float] = field(default_factory=list)
    bare_overhead: list[float] = field(default_factory=list)
    burst_idle: tuple[float, float] = (0.0, 0.0)
    burst_idle_created: float = 0.0  # from the moment the burst's last job was accepted
    # The part of it with the next prompt already in ComfyUI's queue.
    burst_idle_queued: float | None = None
    late_submits: list[tuple[float, float]] = field(default_factory=list)
    bare_idle: tuple[float, float] = (0.0, 0.0)
    # CPU ms per job during the burst, by process (see CpuMeter).
    burst_cpu: dict[str, float] = field(default_factory=dict)
    median_job: str = ""  # the timeline of the single job with the median overhead


STAGES = (
    "accepted -> processing",
    "created_at -> processing",
    "processing -> ComfyUI start",
    "ComfyUI execution",
    "ComfyUI done -> succeeded",
    "ComfyUI done -> handed to Telegram",
    "overhead (goal p50 <= 30)",
)


class System:
    """One backend and one worker from ``source``, on a fresh database and key prefix, driving
    the ComfyUI at ``comfyui_url``; this process plays the bot and Telegram."""

    def __init__(
        self,
        source: Source,
        comfyui_url: str,
        telegram: TelegramDouble,
        root: Path,
        workload: Workload,
        *,
        status_messages: bool,
        side: int = 512,
        double: ComfyUIDouble | None = None,
        worker_backend: bool = False,
    ) -> None:
        self.source = source
        self.workload = workload
        self.double = double
        self.status_messages = status_messages
        self.side = side  # the photos' side in pixels
        self.comfyui_url = comfyui_url
        self.telegram = telegram
        self.root = root
        self.database = f"comfygram_fastpath_{uuid.uuid4().hex[:8]}"
        self.prefix = f"bench-fp-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.backend_url = f"http://127.0.0.1:{self.port}"
        # The worker's own backend process (the bot's creations go to the other), or the same.
        self.worker_port = free_port() if worker_backend else self.port
        self.worker_name = f"bench-{uuid.uuid4().hex[:6]}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.backends: list[subprocess.Popen[bytes]] = []  # a worker's own, besides the first
        self.users = itertools.count(FIRST_USER + int(time.time()) % 1_000_000 * 100)

    def environment(self) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONPATH": str(self.source.path),
            "API_TOKEN": API_TOKEN,
            "BOT_TOKEN": TEST_BOT_TOKEN,
            "TELEGRAM_API_URL": self.telegram.url,
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{self.database}",
            "MEDIA_DIR": str(self.root / "media"),
            "REDIS_URL": REDIS_URL,
            "REDIS_PREFIX": self.prefix,
            "BACKEND_HOST": "127.0.0.1",
            "BACKEND_PORT": str(self.port),
            "BACKEND_URL": self.backend_url,
            "BACKEND_API_URL": self.backend_url,
            "COMFYUI_URL": self.comfyui_url,
            "WORKER_NAME": self.worker_name,
            "SIGNUP_BONUS": "0",
            "LOG_LEVEL": "WARNING",
        }
        if self.workload.presets_dir is not None:
            env["PRESETS_DIR"] = str(self.workload.presets_dir)
        return env

    def spawn(self, command: str, backend_port: int | None = None) -> subprocess.Popen[bytes]:
        """``backend_port``: the backend it serves on or talks to, when not the bot's."""
        env = self.environment()
        if backend_port is not None:
            url = f"http://127.0.0.1:{backend_port}"
            env |= {"BACKEND_PORT": str(backend_port), "BACKEND_URL": url, "BACKEND_API_URL": url}
        # cwd is a scratch folder: no .env of the checkout is read.
        with (self.root / f"{command}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "comfygram", command],
                cwd=self.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def log_tail(self, command: str) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / f"{command}.log").read_text().splitlines()[-20:])
        return ""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[System]:
        admin = await asyncpg.connect(**PG_ADMIN)
        await admin.execute(f'CREATE DATABASE "{self.database}"')
        try:
            async with httpx.AsyncClient(
                base_url=self.backend_url,
                headers={"Authorization": f"Bearer {API_TOKEN}"},
                timeout=JOB_TIMEOUT,
            ) as api:
                self.api = api
                backend = self.spawn("backend")
                if self.worker_port != self.port:
                    await self._until(backend, self._backend_up)  # it migrates the database
                    self.backends.append(self.spawn("backend", self.worker_port))
                worker = self.spawn("worker", self.worker_port)  # it waits for its backend
                await self._until(backend, self._backend_up)
                await self._until(worker, self._worker_ready)
                yield self
        finally:
            for process in reversed(self.processes):
                await stop(process)
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            await admin.close()
            redis = aioredis.from_url(REDIS_URL)
            keys = [key async for key in redis.scan_iter(f"{self.prefix}:*")]
            if keys:
                await redis.delete(*keys)
            await redis.aclose()

    async def _until(self, process: subprocess.Popen[bytes], ready: Any) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not await ready():
            if process.poll() is not None or time.monotonic() > deadline:
                command = process.args[-1]
                raise RuntimeError(f"{command} did not come up:\n{self.log_tail(command)}")
            await asyncio.sleep(0.2)

    async def _backend_up(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return (await self.api.get("/healthz")).status_code == 200
        return False

    async def _worker_ready(self) -> bool:
        response = await self.api.get("/api/workers")
        return any(
            w["name"] == self.worker_name and self.workload.preset in w["runnable"]
            for w in response.json()
        )

    # -- the bot's part ----------------------------------------------------------------------

    async def new_users(self, count: int) -> list[int]:
        users = [next(self.users) for _ in range(count)]

        async def one(user: int) -> None:
            self.telegram.user(user)
            await self._ok(self.api.post("/api/users/register", json={"telegram_id": user}))
            grant = {
                "amount": 10,
                "reason": "bench",
                "actor": "bench",
                "idempotency_key": f"{user}",
            }
            await self._ok(self.api.post(f"/api/users/by-telegram-id/{user}/credits", json=grant))

        for start in range(0, count, 8):
            await asyncio.gather(*(one(user) for user in users[start : start + 8]))
        return users

    @staticmethod
    async def _ok(request: Any) -> dict[str, Any]:
        response = await request
        if response.status_code >= 300:
            raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")
        return response.json()

    async def create(self, user: int, png: bytes) -> tuple[str, float]:
        """Create the job as the bot does; (job id, when the 201 arrived)."""
        response = await self.api.post(
            "/api/jobs/create",
            data={"telegram_id": str(user), "preset": self.workload.preset},
            files={"image": ("photo.png", png, "image/png")},
        )
        accepted = time.time()
        if response.status_code != 201:
            raise RuntimeError(f"create: {response.status_code} {response.text}")
        job_id = response.json()["id"]
        if self.status_messages:
            self.reports.append(asyncio.create_task(self._report(job_id, user)))
        return job_id, accepted

    async def _report(self, job_id: str, chat_id: int) -> None:
        """The bot's status message for a new job, sent and recorded (straight to Telegram: the
        bot's call would also take the chat's slot in the shared rate budget)."""
        url = f"{self.telegram.url}/bot{TEST_BOT_TOKEN}/sendMessage"
        sent = await self._ok(self.api.post(url, json={"chat_id": chat_id, "text": "Queued"}))
        record = {"chat_id": chat_id, "message_id": sent["result"]["message_id"]}
        await self._ok(self.api.post(f"/api/jobs/{job_id}/status-message", json=record))

    async def settled(self, job_id: str, user: int) -> tuple[dict[str, Any], float]:
        """The job once delivered, and when its photo was handed to Telegram."""
        try:
            [call] = await self.telegram.wait_for("sendPhoto", chat_id=user, timeout=JOB_TIMEOUT)
        except AssertionError:
            job = await self._ok(self.api.get(f"/api/jobs/{job_id}"))
            raise RuntimeError(
                f"no photo for job {job_id} ({job['status']}, delivery {job['delivery_status']}, "
                f"error {job['error']!r}); the worker's log ends:\n{self.log_tail('worker')}"
            ) from None
        assert call.ok and call.received_at is not None, call
        deadline = time.monotonic() + JOB_TIMEOUT
        while True:
            job = await self._ok(self.api.get(f"/api/jobs/{job_id}"))
            if job["status"] == "succeeded" and job["delivery_status"] not in (
                "pending",
                "sending",
            ):
                return job, call.received_at
            if time.monotonic() > deadline:
                raise RuntimeError(f"job never settled: {job}")
            await asyncio.sleep(0.02)

    def timeline(self, job: dict[str, Any], accepted: float, run: Execution, user: int) -> str:
        """One job's events in ms after it was accepted, Telegram calls to its chat included."""
        events = [
            ("created_at", wall(job["created_at"])),
            ("processing", wall(job["started_at"])),
            ("ComfyUI start", run.start),
            ("ComfyUI done", run.end),
            ("succeeded", wall(job["finished_at"])),
        ]
        events += [
            (call.method, call.received_at)
            for call in self.telegram.sent(chat_id=user)
            if call.received_at is not None
        ]
        events.sort(key=lambda event: event[1])
        return ", ".join(f"{name} {(at - accepted) * 1000:+.0f}" for name, at in events)

    # -- the measurements ----------------------------------------------------------------------

    async def prepare(self, jobs: int, burst: int) -> None:
        """Users and photos for every job ahead, made before any timing."""
        self.reports: list[asyncio.Task[None]] = []
        self.stages = Stages(single={stage: [] for stage in STAGES})
        self.singles: list[tuple[dict[str, Any], float, float, int]] = []
        self.ahead = await self.new_users(WARM_UP + jobs + burst)
        self.photos = [noise_png(self.side) for _ in self.ahead]

    async def single(self, index: int) -> None:
        """The ``index``-th single job, alone in the system; the first WARM_UP do not count."""
        user, png = self.ahead[index], self.photos[index]
        job_id, accepted = await self.create(user, png)
        job, handed = await self.settled(job_id, user)
        if index >= WARM_UP:
            self.singles.append((job, accepted, handed, user))

    async def tally_singles(self) -> None:
        """Each single job's stages, from its record, ComfyUI's history and Telegram's log."""
        async with aiohttp.ClientSession() as session:
            runs = await history(session, self.comfyui_url)
        overheads = []
        for job, accepted, handed, user in self.singles:
            run = run_of(job["id"], runs)
            overheads.append((handed - accepted - run.seconds, job, accepted, run, user))
            started, finished = wall(job["started_at"]), wall(job["finished_at"])
            measured = {
                "accepted -> processing": started - accepted,
                "created_at -> processing": started - wall(job["created_at"]),
                "processing -> ComfyUI start": run.start - started,
                "ComfyUI execution": run.seconds,
                "ComfyUI done -> succeeded": finished - run.end,
                "ComfyUI done -> handed to Telegram": handed - run.end,
                "overhead (goal p50 <= 30)": handed - accepted - run.seconds,
            }
            for stage, seconds in measured.items():
                self.stages.single[stage].append(seconds)
        overheads.sort(key=lambda item: item[0])
        self.stages.median_job = self.timeline(*overheads[len(overheads) // 2][1:])

    async def burst(self, first: int) -> None:
        """Every job from ``first`` on created at once; ComfyUI's idle fraction while they ran."""
        users, photos = self.ahead[first:], self.photos[first:]
        backends = [self.processes[0].pid, *(p.pid for p in self.backends)]
        worker = self.processes[-1].pid
        meter = CpuMeter(backends, worker, None if self.double else comfyui_pid(self.comfyui_url))
        before = meter.read()
        # The double logs when each prompt was queued; the real ComfyUI is listened to.
        watch = None if self.double else QueueWatch(self.comfyui_url)
        async with (
            MachineLoad().sampling() as load,
            watch.watching() if watch else contextlib.nullcontext(),
        ):
            created = await asyncio.gather(
                *(self.create(user, png) for user, png in zip(users, photos, strict=True))
            )
            for (job_id, _), user in zip(created, users, strict=True):
                await self.settled(job_id, user)
            await asyncio.gather(*self.reports)
        self.stages.burst_cpu = CpuMeter.per_job(before, meter.read(), len(created))
        async with aiohttp.ClientSession() as session:
            runs = await history(session, self.comfyui_url)
        burst_runs = [run_of(job_id, runs) for job_id, _ in created]
        accepted_at = {run_of(job_id, runs).prompt_id: at for job_id, at in created}
        burst_runs.sort(key=lambda run: run.start)
        while_running = load.busy_between(burst_runs[0].start, burst_runs[-1].end)
        self.stages.burst_cpu["machine busy while ComfyUI ran them, %"] = 100 * while_running
        self.stages.burst_idle = idle(burst_runs, accepted_at)
        self.stages.burst_idle_created = idle_after(burst_runs, max(accepted_at.values()))
        if watch is not None:
            queued = watch.queued_at(burst_runs)
        else:
            assert self.double is not None
            offset = time.time() - time.monotonic()
            queued = {
                run.prompt_id: self.double.queued_at[run.prompt_id] + offset for run in burst_runs
            }
        if queued is not None:
            self.stages.burst_idle_queued = idle(burst_runs, queued)[0]
            self.stages.late_submits = late_submits(burst_runs, queued)

    async def measure_bare(self, jobs: int, burst: int) -> None:
        """The yardstick, on the same ComfyUI right after the system's own burst."""
        stages = self.stages
        async with BareRunner(self.comfyui_url, self.workload.workflow).connected() as runner:
            photos = [noise_png(self.side) for _ in range(WARM_UP + jobs + burst)]
            totals: dict[str, float] = {}
            for index, png in enumerate(photos[: WARM_UP + jobs]):
                prompt_id, seconds = await runner.single(png)
                if index >= WARM_UP:
                    totals[prompt_id] = seconds
                await asyncio.sleep(0.1)
            begun = time.time()
            fed = await runner.feed(photos[WARM_UP + jobs :], ahead=2)
            runs = {run.prompt_id: run for run in await history(runner.session, self.comfyui_url)}
        for prompt_id, seconds in totals.items():
            stages.bare_execution.append(runs[prompt_id].seconds)
            stages.bare_overhead.append(seconds - runs[prompt_id].seconds)
        burst_runs = sorted((runs[p] for p in fed), key=lambda r: r.start)
        stages.bare_idle = idle(burst_runs, dict.fromkeys(fed, begun))


async def measure(systems: list[System], jobs: int, burst: int) -> None:
    """Single jobs take turns between the systems, so a load that drifts on a shared machine
    weighs on each alike; then each system's burst and its bare runner, one after the other."""
    for system in systems:
        await system.prepare(jobs, burst)
    for index in range(WARM_UP + jobs):
        for system in systems:
            await system.single(index)
            await asyncio.sleep(0.1)  # an idle system between jobs
    for system in systems:
        await system.tally_singles()
        await system.burst(WARM_UP + jobs)
        await system.measure_bare(jobs, burst)


async def stop(process: subprocess.Popen[bytes], grace: float = 40) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``grace`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(process.wait, grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


# -- ComfyUI ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def comfyui(
    kind: str, root: Path, double_delay: float, extension: bool = True, bench_nodes: bool = False
) -> AsyncIterator[tuple[str, ComfyUIDouble | None]]:
    """The URL of a running ComfyUI of this kind for the block's duration, and the double;
    ``extension``: the real one loads comfygram's extension (its GC frozen at the first prompt);
    ``bench_nodes``: and the bench's GPU stand-in."""
    if kind == "double":
        async with ComfyUIDouble(root / "comfyui-double") as double:
            double.execution_delay = double_delay
            double.nodes_in_thread = True  # serving uploads while a prompt runs, as ComfyUI does
            yield double.url, double
        return
    if (reason := missing()) is not None:
        raise SystemExit(f"the real ComfyUI cannot run here: {reason}")
    configs = [BENCH_NODES] if bench_nodes else []
    server = RealComfyUI(free_port(), extension=extension, extra_configs=configs)
    await asyncio.to_thread(server.start)
    try:
        yield server.url, None
    finally:
        await asyncio.to_thread(server.close)


async def full_collections(url: str) -> str:
    """How long the real ComfyUI's full garbage collections took (its prompt loop runs one
    every 10 s while busy), as comfygram's extension reports them."""
    async with ComfyUIClient(url, "bench") as client:
        state = await client.gc_state()
    if state is None:
        return "not measured (--stock-comfyui: about 300 ms each, every 10 s of work)"
    since = state["full_collections_ms"]
    longest = f"at most {max(since):.1f} ms" if since else "none yet"
    return (
        f"{state['full_collection_before_freeze_ms']:.0f} ms before its start-up objects were "
        f"frozen ({state['frozen']:,}); since, {len(since)} of {longest}"
    )


# -- the table ----------------------------------------------------------------------------------


def table(results: dict[tuple[str, str], Stages], jobs: int, burst: int) -> str:
    columns = list(results)
    width = 40
    cell = max(17, *(len(f"{kind}:{label}") + 2 for kind, label in columns))
    head = f"{'ms (p50 / p95)':<{width}}" + "".join(
        f"{f'{kind}:{label}':>{cell}}" for kind, label in columns
    )
    lines = [head, "-" * len(head)]

    def row(name: str, cells: Iterable[str]) -> None:
        lines.append(f"{name:<{width}}" + "".join(f"{text:>{cell}}" for text in cells))

    def spread(values: list[float]) -> str:
        return f"{pct(values, 0.5):.1f} / {pct(values, 0.95):.1f}"

    for stage in STAGES:
        row(stage, (spread(results[c].single[stage]) for c in columns))
    row("bare runner: ComfyUI execution", (spread(results[c].bare_execution) for c in columns))
    row("bare runner: overhead", (spread(results[c].bare_overhead) for c in columns))
    lines.append(f"ComfyUI idle, % of first start -> last end ({burst} jobs at once)")
    row(
        "  system, while jobs wait (goal <= 3)",
        (f"{results[c].burst_idle[0]:.1%}" for c in columns),
    )
    row("  system, all gaps", (f"{results[c].burst_idle[1]:.1%}" for c in columns))
    row(
        "  system, once every job was created",
        (f"{results[c].burst_idle_created:.1%}" for c in columns),
    )
    row(
        "  of which a prompt was queued",
        ("-" if (q := results[c].burst_idle_queued) is None else f"{q:.1%}" for c in columns),
    )
    row("  bare runner, 2 prompts ahead", (f"{results[c].bare_idle[1]:.1%}" for c in columns))
    lines.append("CPU ms per job during the burst, by process")
    for part in results[columns[0]].burst_cpu:
        row(f"  {part}", (f"{results[c].burst_cpu[part]:.1f}" for c in columns))
    lines.append(f"single jobs: {jobs} after {WARM_UP} warm-up, one at a time, 0.1 s apart")
    return "\n".join(lines)


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", choices=("real", "double", "both"), default="both")
    parser.add_argument("--jobs", type=int, default=20, help="single jobs, one at a time")
    parser.add_argument("--burst", type=int, default=24, help="jobs created at once")
    parser.add_argument(
        "--worker-src",
        action="append",
        default=[],
        metavar="PATH",
        help="a src folder to run the backend and worker from (repeatable; default ./src)",
    )
    parser.add_argument("--compare", nargs=2, metavar=("PATH_A", "PATH_B"), default=[])
    parser.add_argument(
        "--double-delay",
        type=float,
        default=0.0,
        help="the double's extra seconds per node (its own work is ~45 ms for invert)",
    )
    parser.add_argument(
        "--no-status-message",
        action="store_true",
        help="create jobs through the API alone, without the bot's status message",
    )
    parser.add_argument(
        "--side", type=int, default=512, help="the photos' side in pixels (longer runs)"
    )
    parser.add_argument(
        "--worker-backend",
        action="store_true",
        help="give the worker a backend process of its own (the bot's creations go to the other)",
    )
    parser.add_argument(
        "--stock-comfyui",
        action="store_true",
        help="run the real ComfyUI without comfygram's extension (its full GC pauses kept)",
    )
    parser.add_argument(
        "--gpu-ms",
        type=int,
        default=0,
        help="real ComfyUI only: each job also waits this long in the bench's GPU stand-in node "
        "(a GPU's part of a job, during which the CPU is free)",
    )
    parser.add_argument("--json", type=Path, help="also write the key figures to this file")
    args = parser.parse_args()
    if args.gpu_ms and args.comfyui != "real":
        parser.error("--gpu-ms needs --comfyui real (the double has no such node)")
    sources = [Source.of(p) for p in [*args.worker_src, *args.compare] or [str(ROOT / "src")]]
    labels = [source.label for source in sources]
    for n, source in enumerate(sources):  # two worktrees of one commit still get two columns
        if labels.count(source.label) > 1:
            source.label = f"{source.label}#{n + 1}"
    kinds = ["real", "double"] if args.comfyui == "both" else [args.comfyui]

    print(
        f"fast path: invert{f' after {args.gpu_ms} ms of GPU stand-in' if args.gpu_ms else ''}, "
        f"{args.side}x{args.side} noise PNG "
        f"({len(noise_png(args.side)):,} B), "
        f"{'without' if args.no_status_message else 'with'} the bot's status message, "
        f"{os.cpu_count()} CPUs"
    )
    for source in sources:
        print("  " + source.describe())
    print(f"  load before: {load()}")
    results: dict[tuple[str, str], Stages] = {}
    with tempfile.TemporaryDirectory(prefix="fast-path-") as tmp:
        workload = (
            Workload.gpu_stand_in(Path(tmp), args.gpu_ms) if args.gpu_ms else Workload.invert()
        )
        async with TelegramDouble() as telegram:
            telegram.recompress_photos = False  # its own CPU time is not the system's
            for kind in kinds:
                async with (
                    comfyui(
                        kind,
                        Path(tmp),
                        args.double_delay,
                        extension=not args.stock_comfyui,
                        bench_nodes=bool(args.gpu_ms),
                    ) as (url, double),
                    contextlib.AsyncExitStack() as running,
                ):
                    systems = []
                    for source in sources:
                        root = Path(tmp) / f"{kind}-{source.label}"
                        root.mkdir()
                        system = System(
                            source,
                            url,
                            telegram,
                            root,
                            workload,
                            status_messages=not args.no_status_message,
                            side=args.side,
                            double=double,
                            worker_backend=args.worker_backend,
                        )
                        systems.append(await running.enter_async_context(system.running()))
                    await measure(systems, args.jobs, args.burst)
                    if double is None:
                        collections = await full_collections(url)
                    for system in systems:
                        results[kind, system.source.label] = system.stages
    print(f"  load after: {load()}")
    print(table(results, args.jobs, args.burst))
    if "real" in kinds:
        print(f"real ComfyUI's full garbage collections: {collections}")
    for (kind, label), stages in results.items():
        overhead = pct(stages.single["overhead (goal p50 <= 30)"], 0.5)
        bare = pct(stages.bare_overhead, 0.5)
        print(f"{kind}:{label}: overhead p50 {overhead:.1f} ms = {overhead / bare:.1f}x bare")
        print(f"  median job, ms after accepted: {stages.median_job}")
        late = ", ".join(f"+{at:.0f}: {waited:.0f}" for at, waited in stages.late_submits[:12])
        print(
            "  burst: ComfyUI waited for the next prompt (ms from its first start: ms) "
            + (late or "never")
        )
    if args.json:
        args.json.write_text(
            json.dumps([figures(*column, stages) for column, stages in results.items()])
        )


def figures(kind: str, label: str, stages: Stages) -> dict[str, Any]:
    """One column's key figures, for --json (bench/goals.py reads them)."""
    return {
        "comfyui": kind,
        "source": label,
        "overhead_p50_ms": pct(stages.single["overhead (goal p50 <= 30)"], 0.5),
        "bare_overhead_p50_ms": pct(stages.bare_overhead, 0.5),
        "idle_while_jobs_wait": stages.burst_idle[0],
        "bare_idle": stages.bare_idle[1],
        "late_submits": len(stages.late_submits),
        "cpu_ms_per_job": stages.burst_cpu,
    }


if __name__ == "__main__":
    asyncio.run(main())
