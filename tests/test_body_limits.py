"""Request bodies against a real uvicorn on loopback, spoken to with raw sockets: a streamed
(chunked) body over its route's limit is refused as it arrives, on every route, and a client
that sends its body too slowly is answered 408 and cut off."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from pydantic import SecretStr
from sqlalchemy import func, select

from comfygram.backend.app import create_app
from comfygram.backend.limits import SMALL_BODY_BYTES, http_protocol
from comfygram.backend.models import Job, User
from comfygram.settings import Settings
from tests.bot_helpers import serve
from tests.conftest import REDIS_URL, WEBHOOK_SECRET
from tests.helpers import API_TOKEN, seed_sqlite

BODY_TIMEOUT = 1.5
CHUNK = 64 * 1024
FLOOD = 96 * 1024 * 1024  # what the client would send if nobody stopped it
# Loopback socket buffers hold a few MB; a server that reads the whole flood lets it all in.
STOPPED_BY = 40 * 1024 * 1024


@pytest.fixture
def limited_settings(tmp_path: Path, redis_prefix: str, redis: object) -> Settings:
    """SQLite only: what is tested here is the HTTP layer, the same on either database."""
    return Settings(
        _env_file=None,
        api_token=API_TOKEN,
        webhook_secret=WEBHOOK_SECRET,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/comfygram.db",
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        media_dir=tmp_path / "media",
        max_upload_bytes=2 * 1024 * 1024,
        body_timeout_seconds=BODY_TIMEOUT,
        admin_username="ops",
        admin_password=SecretStr("a-long-admin-password-42"),
    )


@pytest.fixture
async def server(limited_settings: Settings) -> AsyncIterator[tuple[str, int, object]]:
    await seed_sqlite(limited_settings.database_url)
    app = create_app(limited_settings)
    async with serve(lambda _url: app) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port), app


def request_head(
    method: str, path: str, port: int, headers: dict[str, str], chunked: bool = True
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Client:
    """A raw loopback connection whose reading survives a reset on its sending side.

    asyncio's streams close the transport when a write meets the server's RST, dropping an
    answer that had already arrived; the kernel still holds it, and `sock_recv` reads it.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, port: int) -> Client:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(sock)

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def _receive(self) -> bool:
        data = await self.loop.sock_recv(self.sock, 65536)
        self.buffer += data
        return bool(data)

    async def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._receive():
                raise EOFError(f"closed with {len(self.buffer)} of {size} bytes")
        taken = bytes(self.buffer[:size])
        del self.buffer[:size]
        return taken

    async def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if not await self._receive():
                return self._rest()
        return await self._take(end + 2)

    def _rest(self) -> bytes:
        rest = bytes(self.buffer)
        self.buffer.clear()
        return rest

    async def read_response(self) -> tuple[int, dict[str, str], bytes]:
        status_line = await self._line()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        headers: dict[str, str] = {}
        while (line := await self._line()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self._take(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, body

    async def read_to_end(self) -> bytes:
        """What the server sends before it hangs up (a reset counts as hanging up)."""
        with contextlib.suppress(ConnectionResetError):
            while await self._receive():
                pass
        return self._rest()

    def close(self) -> None:
        self.sock.close()


MULTIPART = "multipart/form-data; boundary=x"
# How each kind of body begins, so the parser reading it finds nothing wrong but its length.
OPENINGS = {
    MULTIPART: b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n',
    "application/x-www-form-urlencoded": b"username=",
    "application/json": b'{"telegram_id": 5, "username": "',
}


async def flood(
    port: int, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes, int]:
    """Stream a chunked body of up to FLOOD bytes; the answer and how much got sent."""
    client = await Client.connect(port)
    method = "PUT" if path.endswith(("/result", "/outputs")) else "POST"
    await client.send(request_head(method, path, port, headers))
    opening = OPENINGS.get(headers.get("Content-Type", ""), b"")
    if opening:
        await client.send(f"{len(opening):x}\r\n".encode() + opening + b"\r\n")
    sent = 0
    answer = asyncio.create_task(client.read_response())
    chunk = f"{CHUNK:x}\r\n".encode() + b"a" * CHUNK + b"\r\n"
    try:
        while sent < FLOOD and not answer.done():
            await client.send(chunk)
            sent += CHUNK
        if not answer.done():
            await client.send(b"0\r\n\r\n")
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server hung up on the flood: what we want
    status, response_headers, body = await asyncio.wait_for(answer, 30)
    # And it hangs up: the rest of the body is never read.
    assert await asyncio.wait_for(client.read_to_end(), 30) == b""
    client.close()
    return status, response_headers, body, sent


AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/admin/login", {"Content-Type": MULTIPART}, 413),
        ("/admin/login", {"Content-Type": "application/x-www-form-urlencoded"}, 413),
        ("/api/users/register", {**AUTH, "Content-Type": "application/json"}, 413),
        ("/api/jobs/create", {**AUTH, "Content-Type": MULTIPART}, 413),
        (
            "/api/jobs/00000000-0000-0000-0000-000000000000/result",
            {**AUTH, "Content-Type": MULTIPART},
            413,
        ),
        # All of an attempt's outputs: 4 x the per-file limit (32 MB here), still refused.
        (
            "/api/jobs/00000000-0000-0000-0000-000000000000/outputs",
            {**AUTH, "Content-Type": MULTIPART},
            413,
        ),
        # Answered before the body is read (no bot runs here; no token; no body wanted):
        # the connection is closed rather than the body read on.
        (
            "/webhook",
            {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET},
            503,
        ),
        ("/api/users/register", {"Content-Type": "application/json"}, 401),
        # Without the token a creation's body is not even read for its turn.
        ("/api/jobs/create", {"Content-Type": MULTIPART}, 401),
        ("/healthz", {}, 405),
    ],
)
async def test_a_streamed_body_over_the_limit_is_refused_as_it_arrives(
    server: tuple[str, int, object], path: str, headers: dict[str, str], status: int
) -> None:
    _host, port, app = server
    answered, response_headers, body, sent = await flood(port, path, headers)
    assert answered == status, body
    if status == 413:
        assert json.loads(body)["error"]["code"] == "file_too_large"
    assert response_headers["connection"] == "close"
    assert sent < STOPPED_BY, f"{sent} bytes were taken in before the answer"
    async with app.state.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == 0
        assert await session.scalar(select(func.count()).select_from(User)) == 0
    media = app.state.settings.media_dir
    assert not media.exists() or not any(p.is_file() for p in media.rglob("*"))


async def test_a_small_route_takes_a_megabyte_at_most(server: tuple[str, int, object]) -> None:
    """JSON, the webhook and the admin panel take SMALL_BODY_BYTES: a body just over is 413."""
    _host, port, _app = server
    client = await Client.connect(port)
    body = b'{"telegram_id": 5, "username": "' + b"x" * SMALL_BODY_BYTES + b'"}'
    head = request_head(
        "POST",
        "/api/users/register",
        port,
        {**AUTH, "Content-Type": "application/json"},
        chunked=False,
    )
    answer = asyncio.create_task(client.read_response())
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        await client.send(
            head.replace(b"\r\n\r\n", f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()) + body
        )
    status, _headers, _body = await asyncio.wait_for(answer, 30)
    assert status == 413
    client.close()


async def trickle(port: int, path: str, headers: dict[str, str], chunked: bool) -> tuple:
    """Send the head, then one byte of body every 0.25 s until the server answers."""
    client = await Client.connect(port)
    await client.send(request_head("POST", path, port, headers, chunked=chunked))
    opening = OPENINGS.get(headers.get("Content-Type", ""), b"")
    if opening:
        await client.send(
            f"{len(opening):x}\r\n".encode() + opening + b"\r\n" if chunked else opening
        )
    answer = asyncio.create_task(client.read_response())
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        while not answer.done() and loop.time() - began < 20:
            await client.send(b"1\r\na\r\n" if chunked else b"a")
            await asyncio.wait([answer], timeout=0.25)
    except (ConnectionResetError, BrokenPipeError):
        pass
    status, response_headers, body = await asyncio.wait_for(answer, 10)
    assert await asyncio.wait_for(client.read_to_end(), 10) == b""  # and it hung up
    client.close()
    return status, response_headers, body


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/admin/login", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("/api/users/register", {**AUTH, "Content-Type": "application/json"}),
        ("/api/jobs/create", {**AUTH, "Content-Type": MULTIPART}),
    ],
)
async def test_a_client_that_trickles_its_body_is_cut_off(
    server: tuple[str, int, object], path: str, headers: dict[str, str], chunked: bool
) -> None:
    _host, port, _app = server
    if not chunked:
        headers = {**headers, "Content-Length": "100000"}
    status, response_headers, body = await trickle(port, path, headers, chunked)
    assert status == 408, body
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert response_headers["connection"] == "close"


async def test_a_body_sent_in_pieces_in_time_is_taken(server: tuple[str, int, object]) -> None:
    """The deadline is for the whole body, not for each piece: slow but in time is fine."""
    _host, port, _app = server
    client = await Client.connect(port)
    await client.send(
        request_head(
            "POST", "/api/users/register", port, {**AUTH, "Content-Type": "application/json"}
        )
    )
    for piece in (b'{"telegram_id": ', b"77, ", b'"username": "slow"}'):
        await client.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        await asyncio.sleep(0.2)
    await client.send(b"0\r\n\r\n")
    status, _headers, body = await asyncio.wait_for(client.read_response(), 30)
    assert status == 201, body
    assert json.loads(body)["username"] == "slow"
    client.close()


@contextlib.asynccontextmanager
async def serve_with_header_deadline(app: object, header_timeout: float) -> AsyncIterator[int]:
    """uvicorn on a free loopback port with the backend's HTTP protocol (as `comfygram backend`
    and `comfygram run` serve it); yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, http=http_protocol(header_timeout)
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server._serve([sock]))
    while not server.started:
        if task.done():
            await task
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize("keep_alive", [False, True], ids=["first-request", "second-request"])
async def test_a_client_that_trickles_its_headers_is_cut_off(
    limited_settings: Settings, keep_alive: bool
) -> None:
    app = create_app(limited_settings)
    async with serve_with_header_deadline(app, BODY_TIMEOUT) as port:
        client = await Client.connect(port)
        if keep_alive:  # one good request first, on the same connection
            await client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(client.read_response(), 10))[0] == 200
        answer = asyncio.create_task(client.read_response())
        loop = asyncio.get_running_loop()
        began = loop.time()
        head = b"POST /api/users/register HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 400
        try:
            for byte in head:
                if answer.done() or loop.time() - began > 20:
                    break
                await client.send(bytes([byte]))
                await asyncio.wait([answer], timeout=0.25)
        except (ConnectionResetError, BrokenPipeError):
            pass
        status, headers, _body = await asyncio.wait_for(answer, 10)
        assert status == 408 and headers["connection"] == "close"
        assert await asyncio.wait_for(client.read_to_end(), 10) == b""
        client.close()


async def test_a_connection_that_sends_nothing_is_closed(limited_settings: Settings) -> None:
    app = create_app(limited_settings)
    async with serve_with_header_deadline(app, BODY_TIMEOUT) as port:
        client = await Client.connect(port)
        status, _headers, _body = await asyncio.wait_for(client.read_response(), 20)
        assert status == 408
        client.close()


async def test_headers_in_time_are_served(limited_settings: Settings) -> None:
    app = create_app(limited_settings)
    async with serve_with_header_deadline(app, BODY_TIMEOUT) as port:
        client = await Client.connect(port)
        for _ in range(3):  # keep-alive: each request gets its own deadline
            await client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(client.read_response(), 10))[0] == 200
            await asyncio.sleep(BODY_TIMEOUT * 0.6)
        client.close()
