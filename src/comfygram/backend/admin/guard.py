"""The guard in front of every state-changing request to the admin panel.

Any request under /admin other than GET and HEAD (sqladmin's own create, edit, delete and
import as well as the panel's actions and logout) is refused with 403 when its ``Origin`` (or,
without one, its ``Referer``) is another site, and when it does not carry the session's CSRF
token (form field ``csrf`` or header ``X-CSRF-Token``). The login form is checked for its
origin only: there is no session to hold a token before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comfygram.backend.admin.auth import csrf_ok

if TYPE_CHECKING:
    from comfygram.backend.admin import Panel

SAFE_METHODS = frozenset({"GET", "HEAD"})
# The panel's forms are a few fields; anything larger is not one of them.
MAX_FORM_BYTES = 256 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_and_port(netloc: str, scheme: str) -> tuple[str, int | None] | None:
    """(host, port) of `netloc`, the port defaulting to the scheme's; None when malformed."""
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS.get(scheme)


def same_origin(source: str, host_header: str) -> bool:
    """Whether the origin (or page URL) `source` names the host and port this request was sent
    to. The scheme is not compared: behind a TLS proxy the backend sees plain HTTP."""
    try:
        parts = urlsplit(source)
    except ValueError:
        return False
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
        return False  # "null", file:, data: and other opaque origins
    theirs = _host_and_port(parts.netloc, parts.scheme)
    ours = _host_and_port(host_header, parts.scheme)
    return theirs is not None and theirs == ours


def foreign_source(headers: Headers) -> str | None:
    """The Origin (or Referer) of a request from another site; None for the panel's own pages
    and for clients that send neither (they still need the token)."""
    host = headers.get("host", "")
    for name in ("origin", "referer"):
        value = headers.get(name)
        if value is not None:
            return None if same_origin(value, host) else f"{name.title()} {value[:200]!r}"
    return None


def route_path(scope: Scope) -> str:
    """The path inside the panel's mount (/login for /admin/login)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class TooLarge(Exception):
    pass


class Disconnected(Exception):
    pass


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the body read already, then waits on the real one (disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class AdminGuard:
    """ASGI middleware inside the panel's session middleware; see the module's docstring."""

    def __init__(self, app: ASGIApp, panel: Panel) -> None:
        self.app = app
        self.panel = panel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        foreign = foreign_source(request.headers)
        if foreign is not None:
            # Read the (small) form before refusing it: an answer sent while the browser still
            # uploads races it (CI once saw Chromium show its own empty 403 page instead).
            try:
                await _read_body(receive)
            except Disconnected:
                return
            except TooLarge:
                pass
            message = f"Refused: this request came from another site ({foreign})."
            await self._error(request, 403, message)(scope, receive, send)
            return
        if route_path(scope) == "/login":
            await self.app(scope, receive, send)
            return

        length = request.headers.get("content-length", "")
        try:
            if length.isdigit() and int(length) > MAX_FORM_BYTES:
                raise TooLarge
            body = await _read_body(receive)
        except TooLarge:
            await self._error(request, 413, "This form is too large.")(scope, receive, send)
            return
        except Disconnected:
            return
        submitted = request.headers.get("x-csrf-token")
        if submitted is None and body:
            form_request = Request(scope, _replay(body, receive))
            try:
                async with form_request.form() as form:
                    value = form.get("csrf")
                    submitted = value if isinstance(value, str) else None
            except Exception:  # a malformed body carries no token
                submitted = None
        if not csrf_ok(request, submitted):
            if not request.session.get("admin"):
                # Not logged in: to the login page, as for any page of the panel.
                login = request.url_for("admin:login")
                await RedirectResponse(login, status_code=302)(scope, receive, send)
                return
            message = "This form has expired: reload the page and try again."
            await self._error(request, 403, message)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _error(self, request: Request, status: int, message: str) -> Response:
        # Plain text: the refusal must not depend on templates or on the session's state.
        return Response(message, status_code=status, media_type="text/plain; charset=utf-8")
