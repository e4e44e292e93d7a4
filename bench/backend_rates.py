"""The backend's request rates: /healthz, job status reads and job creations, side by side.

    .venv/bin/python bench/backend_rates.py [--workers 1,2] [--seconds 8] [--clients 20]

For each process count in ``--workers``, starts the real ``comfygram backend`` (uvicorn,
BACKEND_WORKERS=N) on a free port, with PostgreSQL on 127.0.0.1:5432 in a fresh database this
script creates and drops, and Redis on 127.0.0.1:6379 (database 9) under a fresh prefix it
deletes. Then ``--clients`` keep-alive HTTP/1.1 connections, each sending its next request as
soon as the last one is answered, for ``--seconds`` per phase:

- ``/healthz``: the server's floor (no database, no body);
- ``create``: ``POST /api/jobs/create`` with a noisy 2560x1920 JPEG at quality 90 (~1.3 MB),
  each client as its own user (charge, file write, commit, enqueue);
- ``read``: ``GET /api/jobs/{id}`` of the jobs just created (all queued: the read that counts
  the queue ahead of the job).

The load generator is this process: raw asyncio streams on uvloop, no HTTP library, so a
request costs it little; it still shares the machine's cores with the backend, and its own CPU
time is printed, and so is the backend's (every process of it, from /proc) per answer, which
other load on the machine changes less than the rates, and how busy the whole machine was
(anything else running takes cores from both). The first second of each phase is a warm-up
and is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import uvloop
from PIL import Image
from redis.asyncio import Redis

TOKEN = "bench-token-0123456789"
PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "postgres"}
REDIS_URL = "redis://127.0.0.1:6379/9"
PRESET = "bw"
WARMUP_SECONDS = 1.0


def photo(width: int, height: int) -> bytes:
    """A noisy colour picture: JPEG finds little to throw away, as in a real photo."""
    size = (width, height)
    gradient = Image.linear_gradient("L").resize(size)
    channels = [
        Image.blend(Image.effect_noise(size, 20), gradient.rotate(90 * i), 0.6) for i in range(3)
    ]
    buffer = io.BytesIO()
    Image.merge("RGB", channels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants alive now (Linux)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
            found.append(current)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants alive now (Linux)."""
    total = 0.0
    for current in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def connections_per_process(pid: int, port: int) -> list[int]:
    """How many established connections to ``port`` each process of the tree holds, the
    busiest first (Linux: /proc/net/tcp and each process's socket descriptors)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rpartition(":")[2], 16) == port and fields[3] == "01":
            inodes.add(f"socket:[{fields[9]}]")
    counts = []
    for current in process_tree(pid):
        with contextlib.suppress(OSError):
            fds = Path(f"/proc/{current}/fd").iterdir()
            held = sum(1 for fd in fds if _readlink(fd) in inodes)
            if held:
                counts.append(held)
    return sorted(counts, reverse=True)


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU jiffies of the whole machine since boot, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Connection:
    """One keep-alive HTTP/1.1 connection; answers must carry a Content-Length (uvicorn's do)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        self.writer.close()


def request(method: str, path: str, body: bytes = b"", content_type: str = "") -> bytes:
    head = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {TOKEN}",
        f"Content-Length: {len(body)}",
    ]
    if content_type:
        head.append(f"Content-Type: {content_type}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def create_request(telegram_id: int, image: bytes) -> bytes:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="telegram_id"\r\n\r\n'
        f"{telegram_id}\r\n".encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="preset"\r\n\r\n'
        f"{PRESET}\r\n".encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    body = b"".join(parts)
    return request("POST", "/api/jobs/create", body, f"multipart/form-data; boundary={boundary}")


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    machine_busy: float = 0.0  # share of every core's time spent on anything, ours or not

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def server_ms_per_answer(self) -> float:
        return self.server_cpu / max(len(self.latencies), 1) * 1000

    def percentile(self, share: float) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else 0.0
        return statistics.quantiles(self.latencies, n=100)[int(share * 100) - 1] * 1000


async def load(
    name: str,
    server: int,
    connections: list[Connection],
    requests: list[list[bytes]],
    seconds: float,
    on_answer: list | None = None,
) -> Phase:
    """Every connection sends its requests (cycling) back to back for ``seconds`` after the
    warm-up; ``on_answer`` collects the bodies of counted 2xx answers. ``server``: the
    backend's pid, whose CPU time is counted over the same seconds."""
    phase = Phase(name)
    loop = asyncio.get_running_loop()
    start = loop.time()
    counted_from, stop = start + WARMUP_SECONDS, start + WARMUP_SECONDS + seconds
    cpu_start = server_start = busy_start = None

    async def client(connection: Connection, mine: list[bytes]) -> None:
        nonlocal cpu_start, server_start, busy_start
        sent = 0
        while (now := loop.time()) < stop:
            status, body = await connection.send(mine[sent % len(mine)])
            sent += 1
            if now < counted_from:
                continue
            if cpu_start is None:
                cpu_start, server_start = time.process_time(), tree_cpu_seconds(server)
                busy_start = machine_busy()
            if 200 <= status < 300:
                phase.latencies.append(loop.time() - now)
                if on_answer is not None:
                    on_answer.append(body)
            else:
                phase.errors += 1
                if phase.errors == 1:
                    print(f"  {name}: {status} {body[:200]!r}", file=sys.stderr)

    await asyncio.gather(*(client(c, r) for c, r in zip(connections, requests, strict=True)))
    phase.seconds = loop.time() - counted_from
    phase.client_cpu = time.process_time() - (cpu_start or 0.0)
    phase.server_cpu = tree_cpu_seconds(server) - (server_start or 0.0)
    busy, total = machine_busy()
    if busy_start is not None and total > busy_start[1]:
        phase.machine_busy = (busy - busy_start[0]) / (total - busy_start[1])
    return phase


@contextlib.asynccontextmanager
async def fresh_database():
    name = f"comfygram_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(**PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def start_backend(workers: int, database_url: str, prefix: str, folder: Path) -> tuple:
    port = free_port()
    # PYTHONPATH: another checkout's src to measure (bench/results/backend_rates.md).
    keep = ("PATH", "HOME", "LANG", "VIRTUAL_ENV", "PYTHONPATH", "CREATION_TURNS")
    env = {k: v for k, v in os.environ.items() if k in keep} | {
        "API_TOKEN": TOKEN,
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": prefix,
        "MEDIA_DIR": str(folder / "media"),
        "BACKEND_WORKERS": str(workers),
        "SIGNUP_BONUS": "0",
        "MAX_ACTIVE_JOBS_PER_USER": "1000000",
        "LOG_LEVEL": "WARNING",
    }
    log = (folder / "backend.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "comfygram", "backend", "--port", str(port)],
        env=env,
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, port


def backend_log(log: Path) -> str:
    return log.read_text()[-4000:]


async def wait_ready(process: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the backend stopped:\n{backend_log(log)}")
        with contextlib.suppress(OSError):
            connection = await Connection.open(port)
            status, _ = await connection.send(request("GET", "/readyz"))
            connection.close()
            if status == 200:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the backend did not start:\n{backend_log(log)}")


async def spread_connections(
    pid: int, port: int, workers: int, users: list[int]
) -> tuple[list[Connection], list[int]]:
    """A connection per client, and how many each process holds. Opened one at a time, each
    answered before the next opens, as clients' pools open theirs over time: opened all at
    once, they queue before any process accepts and the first to wake takes them all. Opened
    again while a process holds none (it was still starting)."""
    for _ in range(10):
        connections = []
        for _ in users:
            connections.append(await Connection.open(port))
            await connections[-1].send(request("GET", "/healthz"))
        spread = connections_per_process(pid, port)
        if len(spread) == min(workers, len(users)):
            break
        for connection in connections:
            connection.close()
        await asyncio.sleep(1)
    return connections, spread


async def measure(
    workers: int, args: argparse.Namespace, image: bytes
) -> tuple[list[Phase], list[int]]:
    """The three phases, and how many of the clients' connections each process held."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    users = list(range(1, args.clients + 1))
    async with fresh_database() as database_url:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            process, port = start_backend(workers, database_url, prefix, folder)
            connections: list[Connection] = []
            try:
                await wait_ready(process, port, folder / "backend.log")
                connections, spread = await spread_connections(process.pid, port, workers, users)
                setup = connections[0]
                for user in users:
                    register = json.dumps({"telegram_id": user}).encode()
                    credit = json.dumps(
                        {"amount": 1_000_000, "reason": "bench", "actor": "bench",
                         "idempotency_key": f"bench-{user}"}
                    ).encode()  # fmt: skip
                    for path, body in (
                        ("/api/users/register", register),
                        (f"/api/users/by-telegram-id/{user}/credits", credit),
                    ):
                        status, answer = await setup.send(
                            request("POST", path, body, "application/json")
                        )
                        assert status in (200, 201), answer
                healthz = [[request("GET", "/healthz")] for _ in users]
                phases = [await load("/healthz", process.pid, connections, healthz, args.seconds)]
                created: list[bytes] = []
                creates = [[create_request(user, image)] for user in users]
                phases.append(
                    await load(
                        "create",
                        process.pid,
                        connections,
                        creates,
                        args.seconds,
                        on_answer=created,
                    )
                )
                ids = [json.loads(body)["id"] for body in created]
                reads = [
                    [request("GET", f"/api/jobs/{job_id}") for job_id in ids[i :: len(users)]]
                    or [request("GET", f"/api/jobs/{ids[0]}")]
                    for i in range(len(users))
                ]
                phases.append(await load("read", process.pid, connections, reads, args.seconds))
                return phases, spread
            finally:
                for connection in connections:
                    connection.close()
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                redis = Redis.from_url(REDIS_URL)
                keys = [key async for key in redis.scan_iter(f"{prefix}:*")]
                if keys:
                    await redis.delete(*keys)
                await redis.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2", help="process counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="counted seconds per phase")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--side", type=int, default=2560, help="photo width (height: 3/4)")
    parser.add_argument("--json", type=Path, help="also write the rates to this file")
    args = parser.parse_args()

    image = photo(args.side, args.side * 3 // 4)
    load_average = os.getloadavg()
    measured = {int(n): await measure(int(n), args, image) for n in args.workers.split(",")}
    results = {workers: phases for workers, (phases, _) in measured.items()}

    print(
        f"backend on PostgreSQL, {args.clients} keep-alive clients, {args.seconds:g} s per "
        f"phase; photo {args.side}x{args.side * 3 // 4} JPEG of {len(image) / 1e6:.2f} MB; "
        f"{os.cpu_count()} cores shared with the load generator (this process); load average "
        f"before: {load_average[0]:.2f}"
    )
    print(
        f"{'workers':<8} {'phase':<9} {'rate/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'errors':>6} {'client CPU':>10} {'backend CPU ms':>14} "
        f"{'machine busy':>12}"
    )
    for workers, phases in results.items():
        for phase in phases:
            print(
                f"{workers:<8} {phase.name:<9} {phase.rate:>8.1f} {phase.percentile(0.5):>8.1f} "
                f"{phase.percentile(0.95):>8.1f} {phase.errors:>6} "
                f"{phase.client_cpu / phase.seconds:>10.0%} {phase.server_ms_per_answer:>14.2f} "
                f"{phase.machine_busy:>12.0%}"
            )
    for workers, (phases, spread) in measured.items():
        health, create, read = (phase.rate for phase in phases)
        print(
            f"workers {workers}: read/healthz {read / health:.2f}, "
            f"create/healthz {create / health:.3f}; connections per process "
            + "/".join(map(str, spread))
        )
    if args.json:
        rates = {n: {phase.name: phase.rate for phase in phases} for n, phases in results.items()}
        spreads = {n: spread for n, (_, spread) in measured.items()}
        figures = {"image_bytes": len(image), "rates": rates, "connections_per_process": spreads}
        args.json.write_text(json.dumps(figures))


if __name__ == "__main__":
    uvloop.run(main())
