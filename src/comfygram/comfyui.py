"""Async client for one ComfyUI server (HTTP API plus the /ws event stream).

Written against ComfyUI 0.3.64. Facts it relies on:
- ``execution_success`` can arrive before the history is written; ``executing`` with
  ``node: null`` for the prompt arrives after it and is the completion signal.
- Execution messages go only to the socket whose ``clientId`` equals the prompt's
  ``client_id``; a later socket with the same id silences the earlier one.
- ``/history/{id}`` is the authority: whatever the socket says or misses, a prompt that is
  in neither the history nor the queue is gone.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import mimetypes
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

__all__ = [
    "ComfyUIClient",
    "ComfyUIError",
    "ComfyUIUnavailable",
    "Device",
    "ExecutionFailed",
    "OutputImage",
    "Preview",
    "PromptInterrupted",
    "PromptRejected",
    "PromptTimeout",
    "PromptVanished",
    "SystemStats",
    "explain_rejection",
    "parse_preview",
]

ProgressCallback = Callable[[int], Awaitable[None]]
StartCallback = Callable[[], Awaitable[None]]
# Called with the image bytes (JPEG as ComfyUI encodes previews by default) of a preview frame.
PreviewCallback = Callable[[bytes], Awaitable[None]]
# Socket messages that show a prompt executing ("executing" with node null is its end).
_RUNNING_SIGNS = frozenset({"execution_start", "executing", "progress", "progress_state"})

# How long a wait leaves its socket open for the next one. The worker waits for one prompt
# after another: the next prompt's messages (its start, its files) queue up on the open socket
# meanwhile instead of being lost to a socket not yet connected. Left unread much longer, a
# server's messages would back up into ComfyUI's sender.
_KEEP_SOCKET_SECONDS = 1.0
# How long a wait reads what a kept socket has queued before it decides whether the socket
# heard its prompt start (and then asks ComfyUI nothing).
_QUEUED_READ_SECONDS = 0.002
# How long wait() keeps asking /history after the completion signal before it falls back
# to its regular polling (the history write normally precedes that signal).
_HISTORY_RETRIES = 10
_HISTORY_RETRY_PAUSE = 0.05

# ComfyUI's binary WebSocket events (protocol.py BinaryEventTypes): each frame starts with its
# event as a big-endian uint32.
PREVIEW_IMAGE = 1  # then the image type (uint32: 1 JPEG, 2 PNG) and the image
PREVIEW_IMAGE_WITH_METADATA = 4  # then the metadata's length (uint32), its JSON, the image
_IMAGE_TYPES = {1: "image/jpeg", 2: "image/png"}
# Sent right after connecting, as ComfyUI's frontend does: from then on the server sends
# previews as PREVIEW_IMAGE_WITH_METADATA, which names the prompt (comfy_execution/progress.py).
_FEATURE_FLAGS = json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})


class ComfyUIError(Exception):
    """Anything that went wrong talking to ComfyUI or running a prompt there."""


class ComfyUIUnavailable(ComfyUIError):
    """The server is not there: connection refused or reset, timeout, or a 5xx answer."""


class PromptRejected(ComfyUIError):
    """``POST /prompt`` answered 400; ``message`` is one human sentence, ``body`` the JSON."""

    def __init__(self, message: str, body: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.body = body


class ExecutionFailed(ComfyUIError):
    """A node raised while the prompt ran (``execution_error``)."""

    def __init__(
        self,
        prompt_id: str,
        node_id: str | None,
        node_type: str | None,
        exception_type: str,
        exception_message: str,
    ) -> None:
        self.prompt_id = prompt_id
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = exception_message.strip()
        super().__init__(
            f"node {node_id} ({node_type}) failed: {exception_type}: {self.exception_message}"
        )

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> ExecutionFailed:
        """Build from the data of an ``execution_error`` message (socket or history)."""
        return cls(
            prompt_id=str(data.get("prompt_id", "")),
            node_id=None if data.get("node_id") is None else str(data["node_id"]),
            node_type=data.get("node_type"),
            exception_type=str(data.get("exception_type", "")),
            exception_message=str(data.get("exception_message", "")),
        )

    @property
    def out_of_memory(self) -> bool:
        """True when the GPU (or host) ran out of memory: worth retrying elsewhere or later."""
        text = f"{self.exception_type} {self.exception_message}".lower()
        return (
            "outofmemoryerror" in text or "allocation on device" in text or "out of memory" in text
        )


class PromptInterrupted(ComfyUIError):
    """The prompt was interrupted (``execution_interrupted``)."""


class PromptVanished(ComfyUIError):
    """The prompt is in neither the history nor the queue (a restart lost it, or it was
    deleted)."""


class PromptTimeout(ComfyUIError, asyncio.TimeoutError):
    """The deadline passed before the prompt finished."""


@dataclass(frozen=True)
class Device:
    name: str
    type: str
    vram_total: int
    vram_free: int


@dataclass(frozen=True)
class SystemStats:
    version: str
    devices: list[Device] = field(default_factory=list)
    argv: tuple[str, ...] = ()

    @property
    def preview_method(self) -> str:
        """ComfyUI's ``--preview-method`` (``none`` by default: it then sends no preview frames)."""
        for i, arg in enumerate(self.argv):
            if arg == "--preview-method" and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if arg.startswith("--preview-method="):
                return arg.partition("=")[2]
        return "none"


@dataclass(frozen=True)
class Preview:
    """One preview frame: the image and, when the frame carries metadata, its prompt."""

    image: bytes
    mime: str
    prompt_id: str | None = None


def parse_preview(frame: bytes) -> Preview | None:
    """A binary WebSocket frame as a Preview; None for any other event or a malformed frame.

    PREVIEW_IMAGE is ``event, image type, image`` (server.py ``send_image``);
    PREVIEW_IMAGE_WITH_METADATA is ``event, metadata length, metadata JSON (prompt_id,
    node_id, image_type...), image`` (``send_image_with_metadata``)."""
    if len(frame) < 8:
        return None
    event, word = struct.unpack(">II", frame[:8])
    if event == PREVIEW_IMAGE:
        mime = _IMAGE_TYPES.get(word)
        image = frame[8:]
        return Preview(image, mime) if mime and image else None
    if event == PREVIEW_IMAGE_WITH_METADATA:
        end = 8 + word
        if end > len(frame):
            return None
        try:
            metadata = json.loads(frame[8:end])
        except ValueError:
            return None
        if not isinstance(metadata, dict):
            return None
        image = frame[end:]
        mime = str(metadata.get("image_type") or "image/jpeg")
        prompt_id = metadata.get("prompt_id")
        if not image or mime not in _IMAGE_TYPES.values():
            return None
        return Preview(image, mime, None if prompt_id is None else str(prompt_id))
    return None


@dataclass(frozen=True)
class OutputImage:
    """One file a save node wrote. ComfyUI 0.3.64 lists every save node's files under
    ``images``, videos and animations included; those add ``animated: [true]``."""

    filename: str
    subfolder: str
    type: str
    # The id of the save node that wrote it ("" when unknown).
    node: str = ""
    # An animation or a video (SaveAnimatedWEBP/PNG, SaveVideo), not a still image.
    animated: bool = False


class ComfyUIClient:
    """One ComfyUI server. ``client_id`` names this client's WebSocket; use one per worker."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        *,
        timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.timeout = timeout
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._owns_http = http is None
        # The socket the last wait left open for the next one (see _KEEP_SOCKET_SECONDS).
        self._kept: ClientConnection | None = None
        self._kept_timer: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        if (ws := self._take_kept()) is not None:
            await _close_quietly(ws)
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> ComfyUIClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- plain HTTP -------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.base_url + path
        try:
            response = await self._http.request(method, url, **kwargs)
        except (httpx.TransportError, OSError) as exc:
            raise ComfyUIUnavailable(f"ComfyUI at {self.base_url} is unreachable: {exc!r}") from exc
        if response.status_code >= 500:
            raise ComfyUIUnavailable(
                f"ComfyUI answered {response.status_code} to {method} {path}: {response.text[:200]}"
            )
        return response

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        if response.status_code != 200:
            raise ComfyUIError(
                f"ComfyUI answered {response.status_code} to {response.request.method} "
                f"{response.request.url.path}: {response.text[:200]}"
            )
        try:
            return response.json()
        except ValueError as exc:
            raise ComfyUIError(
                f"ComfyUI sent invalid JSON for {response.request.url.path}"
            ) from exc

    async def system_stats(self) -> SystemStats:
        body = self._json(await self._request("GET", "/system_stats"))
        devices = [
            Device(
                name=str(d.get("name", "")),
                type=str(d.get("type", "")),
                vram_total=int(d.get("vram_total") or 0),
                vram_free=int(d.get("vram_free") or 0),
            )
            for d in body.get("devices", [])
        ]
        system = body.get("system", {})
        argv = system.get("argv")
        return SystemStats(
            version=str(system.get("comfyui_version", "")),
            devices=devices,
            argv=tuple(map(str, argv)) if isinstance(argv, list) else (),
        )

    async def gc_state(self) -> dict[str, Any] | None:
        """What comfygram's ComfyUI extension (comfyui/custom_nodes/comfygram_gc_freeze) did
        with ComfyUI's garbage collector; None when it is not loaded."""
        response = await self._request("GET", "/comfygram/gc")
        return None if response.status_code == 404 else self._json(response)

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """``GET /object_info`` (or one class; an unknown class gives ``{}``)."""
        path = "/object_info" if node_class is None else f"/object_info/{node_class}"
        return self._json(await self._request("GET", path))

    async def upload_image(
        self, data: bytes, filename: str, *, overwrite: bool = True, subfolder: str = ""
    ) -> str:
        """Upload to the input folder; returns the value for ``LoadImage.image``.

        ComfyUI may rename the file (``name (1).png``) when ``overwrite`` is false.
        """
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        form = {"overwrite": "true" if overwrite else "false", "type": "input"}
        if subfolder:
            form["subfolder"] = subfolder
        response = await self._request(
            "POST", "/upload/image", files={"image": (filename, data, content_type)}, data=form
        )
        body = self._json(response)
        name = str(body["name"])
        return f"{body['subfolder']}/{name}" if body.get("subfolder") else name

    async def submit(self, workflow: dict[str, Any], prompt_id: str) -> int:
        """Queue ``workflow`` under our ``prompt_id``; returns the queue number."""
        payload = {"prompt": workflow, "client_id": self.client_id, "prompt_id": prompt_id}
        response = await self._request("POST", "/prompt", json=payload)
        if response.status_code == 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": {"message": response.text}}
            raise PromptRejected(explain_rejection(body), body)
        body = self._json(response)
        if body.get("prompt_id") != prompt_id:
            raise ComfyUIError(
                f"ComfyUI queued the prompt as {body.get('prompt_id')!r}, not {prompt_id!r}"
            )
        return int(body.get("number", 0))

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of ``prompt_id``, or None while it is not (yet) there."""
        body = self._json(await self._request("GET", f"/history/{prompt_id}"))
        entry = body.get(prompt_id) if isinstance(body, dict) else None
        return entry or None

    async def queue(self) -> tuple[list[str], list[str]]:
        """(running prompt ids, pending prompt ids)."""
        body = self._json(await self._request("GET", "/queue"))
        running = [str(item[1]) for item in body.get("queue_running", [])]
        pending = [str(item[1]) for item in body.get("queue_pending", [])]
        return running, pending

    async def download(self, image: OutputImage) -> bytes:
        """``GET /view`` for one output image."""
        params = {"filename": image.filename, "subfolder": image.subfolder, "type": image.type}
        response = await self._request("GET", "/view", params=params)
        if response.status_code != 200:
            raise ComfyUIError(
                f"ComfyUI answered {response.status_code} for image {image.subfolder}/"
                f"{image.filename} ({image.type})"
            )
        return response.content

    async def interrupt(self, prompt_id: str) -> None:
        """Interrupt ``prompt_id`` if it is running now (a no-op otherwise)."""
        await self._expect_ok("/interrupt", {"prompt_id": prompt_id})

    async def delete_queued(self, prompt_ids: list[str]) -> None:
        """Remove pending prompts from the queue (running ones are not touched)."""
        await self._expect_ok("/queue", {"delete": list(prompt_ids)})

    async def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """Ask ComfyUI to unload models and/or free cached memory."""
        await self._expect_ok("/free", {"unload_models": unload_models, "free_memory": free_memory})

    async def _expect_ok(self, path: str, payload: dict[str, Any]) -> None:
        response = await self._request("POST", path, json=payload)
        if response.status_code != 200:
            raise ComfyUIError(f"ComfyUI answered {response.status_code} to POST {path}")

    # -- waiting for a prompt ---------------------------------------------------------------

    async def wait(
        self,
        prompt_id: str,
        *,
        deadline: float,
        on_progress: ProgressCallback | None = None,
        quiet_poll: float = 2.0,
        on_start: StartCallback | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> list[OutputImage]:
        """Wait until ``prompt_id`` is done and return its saved images (type ``output``).

        Listens on the WebSocket for progress and completion; whenever the socket is quiet
        for ``quiet_poll`` seconds, drops, or cannot connect, asks ``/history`` and
        ``/queue``. ``deadline`` is a ``time.monotonic()`` value. ``on_start`` is called once,
        when the socket or ``/queue`` first shows the prompt executing. ``on_preview`` gets
        the image of each preview frame of this prompt: one whose metadata names it, or (from a
        server that ignores ``supports_preview_metadata``) one that arrives while the socket's
        last word is that this prompt executes.

        Raises ExecutionFailed, PromptInterrupted, ComfyUIUnavailable, PromptTimeout, or
        PromptVanished (in neither history nor queue), or ComfyUIError.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PromptTimeout(f"prompt {prompt_id} passed its deadline")
        try:
            async with asyncio.timeout(remaining):
                progress = _Progress(on_progress, on_start, on_preview)
                return await self._wait(prompt_id, progress, quiet_poll, deadline)
        except TimeoutError as exc:
            if isinstance(exc, PromptTimeout) or time.monotonic() < deadline:
                raise
            raise _past_deadline(prompt_id) from exc

    def _ws_url(self) -> str:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        path = parts.path.rstrip("/") + "/ws"
        return urlunsplit((scheme, parts.netloc, path, f"clientId={self.client_id}", ""))

    async def _connect(self, open_timeout: float) -> ClientConnection | None:
        try:
            # No permessage-deflate: ComfyUI would compress every message, its preview frames
            # (JPEG already) included, on its own event loop; the messages are small.
            ws = await websockets.connect(
                self._ws_url(),
                open_timeout=open_timeout,
                close_timeout=2,
                max_size=None,
                compression=None,
            )
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException):
            return None
        try:
            # Only a client's first message can offer its flags (server.py).
            await ws.send(_FEATURE_FLAGS)
        except websockets.exceptions.WebSocketException:
            with contextlib.suppress(Exception):
                await ws.close()
            return None
        return ws

    async def _wait(
        self, prompt_id: str, progress: _Progress, quiet_poll: float, deadline: float
    ) -> list[OutputImage]:
        # A kept socket has queued every message since it opened: this prompt's start among
        # them when it started after that, and then nothing of it was lost.
        ws = self._take_kept()
        heard, asked, done = _Heard(), False, None
        try:
            if ws is not None:
                done = await self._listen(
                    ws, prompt_id, progress, _QUEUED_READ_SECONDS, heard, deadline
                )
                if done is not None:
                    return await progress.finish(done)
                asked = heard.started
            while True:
                if ws is None:
                    ws = await self._connect(open_timeout=max(quiet_poll, 1.0))
                    heard, asked = _Heard(), False
                if not asked:
                    asked = True
                    # Messages sent before this socket existed are lost: ask the authority.
                    if (done := await self._poll(prompt_id, progress)) is not None:
                        return await progress.finish(done)
                    if ws is None:  # no socket: poll, and try the socket again next round
                        await asyncio.sleep(quiet_poll)
                        continue
                done = await self._listen(ws, prompt_id, progress, quiet_poll, heard, deadline)
                if done is None:  # quiet or dropped: ask the authority
                    if ws.state is not websockets.State.OPEN:
                        ws = None
                    else:
                        done = await self._poll(prompt_id, progress)
                if done is not None:
                    return await progress.finish(done)
        finally:
            if ws is not None:
                if done is not None and ws.state is websockets.State.OPEN:
                    self._keep(ws)
                else:
                    await _close_quietly(ws)

    def _keep(self, ws: ClientConnection) -> None:
        """Leave the socket open for the next wait, closed if none takes it in time."""
        if self._kept is not None:  # two waits at once: one socket is enough
            self._close_later(ws)
            return
        self._kept = ws
        self._kept_timer = asyncio.get_running_loop().call_later(
            _KEEP_SOCKET_SECONDS, self._drop_kept
        )

    def _take_kept(self) -> ClientConnection | None:
        ws, self._kept = self._kept, None
        if self._kept_timer is not None:
            self._kept_timer.cancel()
            self._kept_timer = None
        if ws is not None and ws.state is not websockets.State.OPEN:
            return None
        return ws

    def _drop_kept(self) -> None:
        if (ws := self._take_kept()) is not None:
            self._close_later(ws)

    def _close_later(self, ws: ClientConnection) -> None:
        task = asyncio.get_running_loop().create_task(_close_quietly(ws))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _listen(
        self,
        ws: ClientConnection,
        prompt_id: str,
        progress: _Progress,
        quiet_poll: float,
        heard: _Heard,
        deadline: float,
    ) -> list[OutputImage] | None:
        """Read messages until our prompt ends (outputs) or ``quiet_poll`` passes (None).

        The deadline is checked here too, not only by wait()'s timeout: a cancellation that
        lands as a message arrives can be lost (asyncio.wait_for on Python 3.11 did so), and
        a timed-out job must not run on to success."""
        quiet_until = time.monotonic() + quiet_poll
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise _past_deadline(prompt_id)
            try:
                async with asyncio.timeout(min(quiet_until, deadline) - now):
                    raw = await ws.recv()
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise _past_deadline(prompt_id) from None
                return None
            except websockets.exceptions.ConnectionClosed:
                return None
            if not isinstance(raw, str):
                await progress.frame(prompt_id, raw)
                continue
            try:
                message = json.loads(raw)
                kind, data = message["type"], message.get("data") or {}
            except (ValueError, KeyError, TypeError):
                continue
            if not isinstance(data, dict):
                continue
            progress.note(kind, data)
            if data.get("prompt_id") != prompt_id:
                continue
            quiet_until = time.monotonic() + quiet_poll
            if kind in _RUNNING_SIGNS and (kind != "executing" or data.get("node") is not None):
                await progress.start()
            heard.note(kind, data)
            if kind == "progress":
                await progress.report(data.get("value"), data.get("max"))
            elif kind == "execution_error":
                raise ExecutionFailed.from_message(data)
            elif kind == "execution_interrupted":
                raise PromptInterrupted(f"prompt {prompt_id} was interrupted")
            elif kind == "execution_success":
                if heard.outputs:  # every save node's files, heard on this socket
                    return _outcome(prompt_id, {"outputs": heard.outputs})
                # History may not be written yet: take it only if it is already there.
                if (entry := await self.history(prompt_id)) is not None:
                    return _outcome(prompt_id, entry)
            elif kind == "executing" and data.get("node") is None:
                for _ in range(_HISTORY_RETRIES):
                    if (entry := await self.history(prompt_id)) is not None:
                        return _outcome(prompt_id, entry)
                    await asyncio.sleep(_HISTORY_RETRY_PAUSE)
                return None

    async def _poll(self, prompt_id: str, progress: _Progress) -> list[OutputImage] | None:
        """Ask /history, then /queue: outputs when done, None while queued or running."""
        if (entry := await self.history(prompt_id)) is not None:
            return _outcome(prompt_id, entry)
        running, pending = await self.queue()
        if prompt_id in running:
            await progress.start()
        if prompt_id in running or prompt_id in pending:
            return None
        # It may have finished between the two requests.
        if (entry := await self.history(prompt_id)) is not None:
            return _outcome(prompt_id, entry)
        raise PromptVanished(f"prompt {prompt_id} vanished: in neither the history nor the queue")


def _past_deadline(prompt_id: str) -> PromptTimeout:
    return PromptTimeout(f"prompt {prompt_id} did not finish before its deadline")


async def _close_quietly(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await ws.close()


class _Heard:
    """What one socket heard of the prompt: the files each node reported (``executed``; the
    same as the history's outputs), kept only when the socket also heard the prompt start,
    since a message sent before the socket connected is lost."""

    def __init__(self) -> None:
        self.started = False
        self.outputs: dict[str, Any] = {}

    def note(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "execution_start":
            self.started = True
        elif kind == "executed" and self.started and isinstance(data.get("output"), dict):
            self.outputs[str(data.get("node"))] = data["output"]


class _Progress:
    """Reports strictly increasing percentages to an optional callback, and this prompt's
    preview frames to another."""

    def __init__(
        self,
        callback: ProgressCallback | None,
        on_start: StartCallback | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> None:
        self.callback = callback
        self.on_start = on_start
        self.on_preview = on_preview
        self.started = False
        self.last = -1
        # The prompt the socket last said is executing (None: none, or it ended).
        self.executing: str | None = None

    def note(self, kind: str, data: dict[str, Any]) -> None:
        """Follow which prompt executes, from any prompt's messages on the socket."""
        prompt = data.get("prompt_id")
        if not isinstance(prompt, str):
            return
        ended = kind in ("execution_success", "execution_error", "execution_interrupted") or (
            kind == "executing" and data.get("node") is None
        )
        if ended:
            if self.executing == prompt:
                self.executing = None
        elif kind in _RUNNING_SIGNS:
            self.executing = prompt

    async def frame(self, prompt_id: str, raw: bytes) -> None:
        if self.on_preview is None:
            return
        preview = parse_preview(raw)
        if preview is None:
            return
        # A frame without metadata cannot say whose it is: only while ours executes.
        owner = preview.prompt_id if preview.prompt_id is not None else self.executing
        if owner == prompt_id:
            await self.on_preview(preview.image)

    async def start(self) -> None:
        if not self.started:
            self.started = True
            if self.on_start is not None:
                await self.on_start()

    async def report(self, value: Any, maximum: Any) -> None:
        try:
            percent = int(float(value) * 100 / float(maximum))
        except (TypeError, ValueError, ZeroDivisionError):
            return
        percent = max(0, min(100, percent))
        if self.callback is not None and percent > self.last:
            self.last = percent
            await self.callback(percent)

    async def finish(self, outputs: list[OutputImage]) -> list[OutputImage]:
        await self.report(1, 1)
        return outputs


def _outcome(prompt_id: str, entry: dict[str, Any]) -> list[OutputImage]:
    """Outputs of a finished history entry, or the error it records."""
    status = entry.get("status") or {}
    if status.get("status_str") == "error" or status.get("completed") is False:
        for kind, data in status.get("messages") or []:
            if kind == "execution_error":
                raise ExecutionFailed.from_message({"prompt_id": prompt_id, **data})
            if kind == "execution_interrupted":
                raise PromptInterrupted(f"prompt {prompt_id} was interrupted")
        raise ComfyUIError(f"prompt {prompt_id} ended with status {status.get('status_str')!r}")
    images: list[OutputImage] = []
    for node, output in (entry.get("outputs") or {}).items():
        if not isinstance(output, dict):
            continue
        # One flag for the node's files: SaveVideo and SaveAnimated* write one file each.
        animated = any(flag is True for flag in output.get("animated") or [])
        for image in output.get("images") or []:
            if image.get("type") == "output":
                images.append(
                    OutputImage(
                        filename=str(image["filename"]),
                        subfolder=str(image.get("subfolder", "")),
                        type="output",
                        node=str(node),
                        animated=animated,
                    )
                )
    return images


# -- rejections -------------------------------------------------------------------------------


def _allowed_values(extra_info: dict[str, Any], details: str) -> list[str] | None:
    """The allowed values of a combo input, from input_config or the details text."""
    config = extra_info.get("input_config")
    if isinstance(config, list | tuple) and config:
        first = config[0]
        if isinstance(first, list | tuple):  # [["a", "b"], {...}]
            return [str(v) for v in first]
        if first == "COMBO" and len(config) > 1 and isinstance(config[1], dict):
            options = config[1].get("options")
            if isinstance(options, list):
                return [str(v) for v in options]
    _, sep, tail = details.partition(" not in ")
    if sep and tail.startswith("["):
        with contextlib.suppress(ValueError, SyntaxError):
            values = ast.literal_eval(tail)
            if isinstance(values, list):
                return [str(v) for v in values]
    return None


def _list_text(values: list[str]) -> str:
    return ", ".join(f"'{v}'" for v in values) if values else "none"


def _explain_error(node_id: str, class_type: str, error: dict[str, Any]) -> str:
    kind = str(error.get("type", ""))
    message = str(error.get("message", "")).rstrip(".")
    details = str(error.get("details", ""))
    extra = error.get("extra_info") or {}
    input_name = str(extra.get("input_name", ""))
    node = f"node {node_id} ({class_type})" if class_type else f"node {node_id}"
    if kind == "value_not_in_list":
        received = extra.get("received_value")
        allowed = _allowed_values(extra, details)
        if input_name.endswith("_name"):
            if allowed is None:
                installed = "it is not among the installed files"
                count = details.partition("(list of length ")[2].rstrip(")")
                if count.isdigit():
                    installed = f"it is not among the {count} installed files"
            else:
                installed = f"installed: {_list_text(allowed)}"
            return (
                f"{node} needs the model file '{received}' ({input_name}), "
                f"which is not installed; {installed}"
            )
        allowed_text = "" if allowed is None else f"; allowed: {_list_text(allowed)}"
        return (
            f"{node} input '{input_name}' has the value '{received}', "
            f"which is not allowed{allowed_text}"
        )
    if kind == "custom_validation_failed" and "Invalid image file:" in details:
        missing = details.partition("Invalid image file:")[2].strip()
        return f"{node} cannot find the input image '{missing}' (not uploaded, or deleted)"
    if kind == "required_input_missing":
        return f"{node} is missing its required input '{details or input_name}'"
    if kind in {"value_bigger_than_max", "value_smaller_than_min", "invalid_input_type"}:
        return f"{node} input '{input_name}': {message}"
    text = f"{node}: {message}" if message else f"{node}: {kind}"
    return f"{text} ({details})" if details else text


def explain_rejection(body: dict[str, Any]) -> str:
    """One human sentence for a ``POST /prompt`` 400 body (``error`` + ``node_errors``)."""
    parts: list[str] = []
    node_errors = body.get("node_errors") or {}
    if isinstance(node_errors, dict):
        for node_id, entry in node_errors.items():
            if not isinstance(entry, dict):
                continue
            class_type = str(entry.get("class_type", ""))
            for error in entry.get("errors") or []:
                if isinstance(error, dict):
                    parts.append(_explain_error(str(node_id), class_type, error))
    if not parts:
        error = body.get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or error.get("type") or "unknown error")
            details = str(error.get("details") or "")
            text = message.rstrip(".")
            if details and details != message:
                text = f"{text} ({details})"
            parts.append(text)
        elif error:
            parts.append(str(error).rstrip("."))
        else:
            parts.append("unknown error")
    return "ComfyUI rejected the workflow: " + "; ".join(parts) + "."
