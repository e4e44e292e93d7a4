"""A private redis-server process that a test can stop and start again (a real outage)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


async def machine_redis_keys(prefix: str) -> list[bytes] | None:
    """Keys under ``prefix`` in any database of 127.0.0.1:6379 (None when nothing listens)."""
    found: list[bytes] = []
    for db in range(16):
        client = Redis.from_url(f"redis://127.0.0.1:6379/{db}", socket_connect_timeout=1)
        try:
            found += [key async for key in client.scan_iter(f"{prefix}*")]
        except RedisConnectionError:
            return None if db == 0 else found
        except ResponseError:
            break  # fewer databases there
        finally:
            await client.aclose()
    return found
