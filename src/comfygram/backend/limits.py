"""Limits on request bodies for every route: how large, and how long a client may take.

`Content-Length` alone proves nothing: a chunked body has none, and a client may send one
byte at a time. So the body is counted as it arrives and refused (413) the moment it passes
its route's limit, and a body still arriving `body_timeout` seconds after the request began is
refused (408). Both answers close the connection, so nothing more of that body is read.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comfygram.backend.errors import error_response

# Multipart framing around an upload; bodies beyond limit + this are refused.
MULTIPART_SLACK = 64 * 1024
# Every route that takes no upload (JSON API, Telegram's webhook, the admin panel's forms):
# their bodies are a few kilobytes.
SMALL_BODY_BYTES = 1024 * 1024
# Results come from our own workers (an upscale may be much larger than what users send):
# each output file may be this many times MAX_UPLOAD_BYTES.
RESULT_SIZE_FACTOR = 4
# All of an attempt's outputs arrive in one body (PUT /outputs): at most this many times the
# per-file limit, whatever their number (an album of small images, or one large video).
OUTPUTS_BODY_FACTOR = 4

_RESULT_UPLOAD = re.compile(r"^/api/jobs/[^/]+/result$")
_OUTPUTS_UPLOAD = re.compile(r"^/api/jobs/[^/]+/outputs$")


def body_limit(path: str, max_upload_bytes: int, max_photos: int = 1) -> int:
    """The most bytes a request to `path` may carry.

    A job's photos arrive in one body, so /api/jobs/create takes MAX_UPLOAD_BYTES for each
    photo the most demanding loaded preset declares (``max_photos``); each file is still held
    to MAX_UPLOAD_BYTES by the route.
    """
    if path == "/api/jobs/create":
        return max_upload_bytes * max(max_photos, 1) + MULTIPART_SLACK
    if _RESULT_UPLOAD.match(path):
        return max_upload_bytes * RESULT_SIZE_FACTOR + MULTIPART_SLACK
    if _OUTPUTS_UPLOAD.match(path):
        return max_upload_bytes * RESULT_SIZE_FACTOR * OUTPUTS_BODY_FACTOR + MULTIPART_SLACK
    return SMALL_BODY_BYTES


class BodyLimits:
    """Pure ASGI middleware (outermost), so it sees every route, mounted apps included."""

    def __init__(
        self, app: ASGIApp, *, limit_for: Callable[[str], int], body_timeout: float
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        headers = Headers(scope=scope)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await _refuse(scope, receive, send, 413)
            return
        has_body = (length.isdigit() and int(length) > 0) or "transfer-encoding" in headers
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        received = 0
        body_done = not has_body
        answered = False  # our refusal went out: the app's own answer is dropped
        started = False

        async def guarded_receive() -> Message:
            nonlocal received, body_done, answered
            if answered:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()  # only a disconnect is left to hear
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                status = 408
            else:
                if message["type"] != "http.request":
                    return message
                received += len(message.get("body", b""))
                if received <= limit:
                    body_done = not message.get("more_body", False)
                    return message
                status = 413
            if not started:
                answered = True
                await _refuse(scope, receive, send, status)
            return {"type": "http.disconnect"}

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
                if not body_done:
                    # Answered before the body was read (a 401, a 404...): close the
                    # connection rather than keep reading a body nobody wants.
                    raw = [*message.get("headers", []), (b"connection", b"close")]
                    message = {**message, "headers": raw}
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not answered:
                raise
            # The app stumbled over the body we cut off; the client has its answer already.


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int) -> None:
    if status == 413:
        response = error_response(
            413,
            "file_too_large",
            "The request body is too large.",
            headers={"Connection": "close"},
        )
    else:
        response = error_response(
            408,
            "request_timeout",
            "The request body arrived too slowly; send it again.",
            headers={"Connection": "close"},
        )
    await response(scope, receive, send)


# A request's headers (a few hundred bytes) must have arrived this long after the connection
# opened or the previous answer was sent.
HEADER_TIMEOUT_SECONDS = 10.0


def http_protocol(header_timeout: float = HEADER_TIMEOUT_SECONDS) -> type:
    """uvicorn's HTTP protocol, plus a deadline on each request's headers.

    uvicorn bounds nothing before a request's headers are complete, and restarts its keep-alive
    timer on every byte, so a client trickling its headers would hold a connection forever.
    Pass the result as uvicorn's `http=`.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderDeadline(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.keep_alive = False  # an answer is on its way: close after it
                return
            message = b"The request's headers arrived too slowly."
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"connection: close\r\ncontent-length: "
                + str(len(message)).encode()
                + b"\r\n\r\n"
                + message
            )
            self.transport.close()

    return HeaderDeadline
