"""ComfyUIDouble: a loopback HTTP + WebSocket server that answers like ComfyUI 0.3.64.

Shapes, status codes and content types are copied from the recording in
/work/shared/reference/comfyui-0.3.64-api.json (hard-coded here, nothing is read at run
time). It runs LoadImage, ImageInvert, ImageScaleBy, SaveImage and PreviewImage for real
with Pillow, one prompt at a time, and sends the recorded WebSocket sequence to the socket
whose clientId is the prompt's client_id.

Knobs for fault tests: ``execution_delay`` (seconds per node, reported as ``progress``
steps), ``drop_websocket_messages`` (silent socket), ``history_write_delay`` (gap between
``execution_success`` and the history write), ``fail_next_with(...)`` (runtime
``execution_error``), ``stop()``/``start()`` on the same port (ComfyUI down; a restart loses
queue and history as the real server does).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import uvicorn
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

JSON = "application/json; charset=utf-8"
OUTPUT_NODES = {"SaveImage", "PreviewImage"}
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
NODE_INFO: dict[str, dict[str, Any]] = {
    "ImageInvert": {
        "input": {"required": {"image": ["IMAGE"]}},
        "input_order": {"required": ["image"]},
        "output": ["IMAGE"],
        "output_is_list": [False],
        "output_name": ["IMAGE"],
        "name": "ImageInvert",
        "display_name": "Invert Image",
        "description": "",
        "python_module": "nodes",
        "category": "image",
        "output_node": False,
    },
    "ImageScaleBy": {
        "input": {
            "required": {
                "image": ["IMAGE"],
                "upscale_method": [UPSCALE_METHODS],
                "scale_by": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}],
            }
        },
        "input_order": {"required": ["image", "upscale_method", "scale_by"]},
        "output": ["IMAGE"],
        "output_is_list": [False],
        "output_name": ["IMAGE"],
        "name": "ImageScaleBy",
        "display_name": "Upscale Image By",
        "description": "",
        "python_module": "nodes",
        "category": "image/upscaling",
        "output_node": False,
    },
    "SaveImage": {
        "input": {
            "required": {
                "images": ["IMAGE", {"tooltip": "The images to save."}],
                "filename_prefix": [
                    "STRING",
                    {"default": "ComfyUI", "tooltip": "The prefix for the file to save."},
                ],
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },
        "input_order": {
            "required": ["images", "filename_prefix"],
            "hidden": ["prompt", "extra_pnginfo"],
        },
        "output": [],
        "output_is_list": [],
        "output_name": [],
        "name": "SaveImage",
        "display_name": "Save Image",
        "description": "Saves the input images to your ComfyUI output directory.",
        "python_module": "nodes",
        "category": "image",
        "output_node": True,
    },
    "PreviewImage": {
        "input": {"required": {"images": ["IMAGE"]}, "hidden": {"prompt": "PROMPT"}},
        "input_order": {"required": ["images"], "hidden": ["prompt"]},
        "output": [],
        "output_is_list": [],
        "output_name": [],
        "name": "PreviewImage",
        "display_name": "Preview Image",
        "description": "Saves the input images to your ComfyUI output directory.",
        "python_module": "nodes",
        "category": "image",
        "output_node": True,
    },
}
SYSTEM_STATS: dict[str, Any] = {
    "system": {
        "os": "posix",
        "ram_total": 25276502016,
        "ram_free": 24048091136,
        "comfyui_version": "0.3.64",
        "required_frontend_version": "1.27.10",
        "installed_templates_version": "0.1.95",
        "required_templates_version": "0.1.95",
        "python_version": "3.11.7",
        "pytorch_version": "2.14.1+cu130",
        "embedded_python": False,
        "argv": ["main.py", "--cpu", "--listen", "127.0.0.1", "--port", "8188"],
    },
    "devices": [
        {
            "name": "cpu",
            "type": "cpu",
            "index": None,
            "vram_total": 25276502016,
            "vram_free": 24048091136,
            "torch_vram_total": 25276502016,
            "torch_vram_free": 24048091136,
        }
    ],
}


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status_code=status, media_type=JSON)


def _empty(status: int = 200) -> Response:
    return Response(b"", status_code=status)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _rejection(kind: str, message: str, details: str = "", node_errors: Any = None) -> Response:
    error = {"type": kind, "message": message, "details": details, "extra_info": {}}
    return _json({"error": error, "node_errors": node_errors or {}}, 400)


def _safe_join(root: Path, *parts: str) -> Path | None:
    path = root.joinpath(*parts).resolve()
    if os.path.commonpath([root.resolve(), path]) != str(root.resolve()):
        return None
    return path


class _NodeFailed(Exception):
    def __init__(self, exception_type: str, message: str) -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.message = message


class _Interrupted(Exception):
    pass


class ComfyUIDouble:
    """A fake ComfyUI on 127.0.0.1; ``url`` is valid after ``start()``."""

    def __init__(self, root: Path, *, port: int = 0) -> None:
        self.root = Path(root)
        self.dirs = {kind: self.root / kind for kind in ("input", "output", "temp")}
        for path in self.dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.execution_delay = 0.0
        self.drop_websocket_messages = False
        self.history_write_delay = 0.0
        self.free_calls: list[dict[str, Any]] = []
        self.prompts_received: list[dict[str, Any]] = []
        self._fail_next: tuple[str, str] | None = None
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._server: uvicorn.Server | None = None
        self._server_task: asyncio.Task[None] | None = None
        self._executor_task: asyncio.Task[None] | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.pending: list[list[Any]] = []  # [number, prompt_id, prompt, extra_data, outputs]
        self.running: list[Any] | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self._number = 0
        self._interrupt = False
        self._wakeup = asyncio.Event()
        self._sockets: dict[str, WebSocket] = {}
        self._socket_changed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- knobs --------------------------------------------------------------------------------

    def fail_next_with(self, exception_type: str, message: str) -> None:
        """Make the next executed prompt fail with an ``execution_error``."""
        self._fail_next = (exception_type, message)

    def pause(self) -> None:
        """Hold queued prompts (the running one finishes); ``resume()`` lets them run."""
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    async def socket_connected(self, client_id: str) -> None:
        """Return once a WebSocket with ``client_id`` is connected."""
        while client_id not in self._sockets:
            await self._socket_changed.wait()
            self._socket_changed.clear()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app(),
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=1,
            ws_ping_interval=None,
        )
        self._server = uvicorn.Server(config)
        self._server_task = asyncio.create_task(self._server._serve([sock]))
        while not self._server.started:
            if self._server_task.done():
                await self._server_task
            await asyncio.sleep(0.005)
        self._executor_task = asyncio.create_task(self._executor())

    async def stop(self, *, lose_state: bool = True) -> None:
        """Shut the server down (connections refused); a restart forgets queue and history."""
        if self._executor_task is not None:
            self._executor_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._executor_task
            self._executor_task = None
        if self._server is not None and self._server_task is not None:
            self._server.should_exit = True
            await self._server_task
            self._server = self._server_task = None
        if lose_state:
            self._reset_state()

    async def __aenter__(self) -> ComfyUIDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- app ----------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/system_stats", self._system_stats),
                Route("/object_info", self._object_info),
                Route("/object_info/{node_class}", self._object_info_one),
                Route("/upload/image", self._upload, methods=["POST"]),
                Route("/prompt", self._get_prompt, methods=["GET"]),
                Route("/prompt", self._post_prompt, methods=["POST"]),
                Route("/history", self._history_all),
                Route("/history/{prompt_id}", self._history_one),
                Route("/queue", self._get_queue, methods=["GET"]),
                Route("/queue", self._post_queue, methods=["POST"]),
                Route("/interrupt", self._interrupt_route, methods=["POST"]),
                Route("/free", self._free, methods=["POST"]),
                Route("/view", self._view),
                WebSocketRoute("/ws", self._ws),
            ]
        )

    async def _system_stats(self, request: Request) -> Response:
        return _json(SYSTEM_STATS)

    def _node_info(self) -> dict[str, Any]:
        info = json.loads(json.dumps(NODE_INFO))
        files = sorted(
            str(p.relative_to(self.dirs["input"]))
            for p in self.dirs["input"].rglob("*")
            if p.is_file()
        )
        info["LoadImage"] = {
            "input": {"required": {"image": [files, {"image_upload": True}]}},
            "input_order": {"required": ["image"]},
            "output": ["IMAGE", "MASK"],
            "output_is_list": [False, False],
            "output_name": ["IMAGE", "MASK"],
            "name": "LoadImage",
            "display_name": "Load Image",
            "description": "",
            "python_module": "nodes",
            "category": "image",
            "output_node": False,
        }
        return info

    async def _object_info(self, request: Request) -> Response:
        return _json(self._node_info())

    async def _object_info_one(self, request: Request) -> Response:
        name = request.path_params["node_class"]
        info = self._node_info()
        return _json({name: info[name]} if name in info else {})

    async def _upload(self, request: Request) -> Response:
        form = await request.form()
        image = form.get("image")
        if image is None or isinstance(image, str) or not image.filename:
            return _empty(400)
        kind = str(form.get("type") or "input")
        if kind not in self.dirs:
            kind = "input"
        subfolder = str(form.get("subfolder") or "")
        overwrite = str(form.get("overwrite") or "") in ("true", "1")
        folder = _safe_join(self.dirs[kind], subfolder)
        if folder is None:
            return _empty(400)
        data = await image.read()
        name = Path(image.filename).name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        if not overwrite:
            stem, suffix, i = path.stem, path.suffix, 1
            while path.exists() and path.read_bytes() != data:
                path = folder / f"{stem} ({i}){suffix}"
                i += 1
        path.write_bytes(data)
        return _json({"name": path.name, "subfolder": subfolder, "type": kind})

    async def _get_prompt(self, request: Request) -> Response:
        return _json({"exec_info": {"queue_remaining": self._remaining()}})

    def _remaining(self) -> int:
        return len(self.pending) + (1 if self.running is not None else 0)

    async def _post_prompt(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return Response(
                "500 Internal Server Error\n\nServer got itself in trouble",
                status_code=500,
                media_type="text/plain; charset=utf-8",
            )
        self.prompts_received.append(body)
        if not isinstance(body, dict) or "prompt" not in body:
            return _rejection("no_prompt", "No prompt provided", "No prompt provided")
        prompt = body["prompt"]
        if not isinstance(prompt, dict):
            return _rejection("prompt_no_outputs", "Prompt has no outputs")
        rejected = self._validate(prompt)
        if rejected is not None:
            return rejected
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        number = body["number"] if isinstance(body.get("number"), int | float) else self._number
        self._number = max(self._number, int(number)) + 1
        extra = dict(body.get("extra_data") or {})
        if body.get("client_id"):
            extra["client_id"] = body["client_id"]
        outputs = [k for k, v in prompt.items() if v["class_type"] in OUTPUT_NODES]
        self.pending.append([number, prompt_id, prompt, extra, outputs])
        self._wakeup.set()
        await self._broadcast_status()
        return _json({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    def _validate(self, prompt: dict[str, Any]) -> Response | None:
        known = set(NODE_INFO) | {"LoadImage"}
        for node_id, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return _rejection(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                )
            if node["class_type"] not in known:
                return _rejection(
                    "invalid_prompt",
                    f"Cannot execute because node {node['class_type']} does not exist.",
                    f"Node ID '#{node_id}'",
                )
        outputs = [k for k, v in prompt.items() if v["class_type"] in OUTPUT_NODES]
        if not outputs:
            return _rejection("prompt_no_outputs", "Prompt has no outputs")
        node_errors: dict[str, Any] = {}
        for node_id, node in prompt.items():
            errors = self._node_errors(node)
            if errors:
                node_errors[node_id] = {
                    "errors": errors,
                    "dependent_outputs": outputs,
                    "class_type": node["class_type"],
                }
        if node_errors:
            return _rejection(
                "prompt_outputs_failed_validation",
                "Prompt outputs failed validation",
                node_errors=node_errors,
            )
        return None

    def _node_errors(self, node: dict[str, Any]) -> list[dict[str, Any]]:
        inputs = node.get("inputs") or {}
        kind = node["class_type"]
        required = {
            "LoadImage": ["image"],
            **{k: v["input_order"]["required"] for k, v in NODE_INFO.items()},
        }
        errors: list[dict[str, Any]] = []
        for name in required[kind]:
            if name not in inputs:
                errors.append(
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": name,
                        "extra_info": {"input_name": name},
                    }
                )
        if errors:
            return errors
        if kind == "LoadImage":
            image = str(inputs["image"])
            path = _safe_join(self.dirs["input"], image)
            if path is None or not path.is_file():
                errors.append(
                    {
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": f"image - Invalid image file: {image}",
                        "extra_info": {"input_name": "image"},
                    }
                )
        if kind == "ImageScaleBy" and inputs["upscale_method"] not in UPSCALE_METHODS:
            value = inputs["upscale_method"]
            errors.append(
                {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": f"upscale_method: '{value}' not in {UPSCALE_METHODS}",
                    "extra_info": {
                        "input_name": "upscale_method",
                        "input_config": [UPSCALE_METHODS, {}],
                        "received_value": value,
                    },
                }
            )
        return errors

    async def _history_all(self, request: Request) -> Response:
        items = list(self.history.items())
        max_items = request.query_params.get("max_items")
        if max_items and max_items.isdigit():
            items = items[-int(max_items) :]
        return _json(dict(items))

    async def _history_one(self, request: Request) -> Response:
        prompt_id = request.path_params["prompt_id"]
        entry = self.history.get(prompt_id)
        return _json({prompt_id: entry} if entry is not None else {})

    async def _get_queue(self, request: Request) -> Response:
        running = [self.running] if self.running is not None else []
        return _json({"queue_running": running, "queue_pending": self.pending})

    async def _post_queue(self, request: Request) -> Response:
        body = await request.json()
        if body.get("clear"):
            self.pending.clear()
        if "delete" in body:
            doomed = set(body["delete"])
            self.pending[:] = [item for item in self.pending if item[1] not in doomed]
        await self._broadcast_status()
        return _empty()

    async def _interrupt_route(self, request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        target = body.get("prompt_id") if isinstance(body, dict) else None
        if self.running is not None and (target is None or target == self.running[1]):
            self._interrupt = True
        return _empty()

    async def _free(self, request: Request) -> Response:
        raw = await request.body()
        self.free_calls.append(json.loads(raw) if raw else {})
        return _empty()

    async def _view(self, request: Request) -> Response:
        params = request.query_params
        kind = params.get("type") or "output"
        if kind not in self.dirs:
            return _empty(400)
        filename = params.get("filename", "")
        if not filename or "/" in filename or filename.startswith(".."):
            return _empty(400)
        path = _safe_join(self.dirs[kind], params.get("subfolder", ""), filename)
        if path is None:
            return _empty(400)
        if not path.is_file():
            return _empty(404)
        return Response(
            path.read_bytes(),
            media_type="image/png",
            headers={"Content-Disposition": f'filename="{path.name}"'},
        )

    async def _ws(self, ws: WebSocket) -> None:
        client_id = ws.query_params.get("clientId") or uuid.uuid4().hex
        await ws.accept()
        self._sockets[client_id] = ws  # a newer socket with the same id replaces the older
        self._socket_changed.set()
        status = {"status": {"exec_info": {"queue_remaining": self._remaining()}}, "sid": client_id}
        await self._send(ws, "status", status)
        await self._send(
            ws, "feature_flags", {"supports_preview_metadata": True, "max_upload_size": 104857600}
        )
        try:
            while True:
                await ws.receive_text()
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if self._sockets.get(client_id) is ws:
                del self._sockets[client_id]

    # -- messages -----------------------------------------------------------------------------

    async def _send(self, ws: WebSocket, kind: str, data: dict[str, Any]) -> None:
        if self.drop_websocket_messages:
            return
        with contextlib.suppress(Exception):
            await ws.send_text(json.dumps({"type": kind, "data": data}))

    async def _to_client(self, client_id: str | None, kind: str, data: dict[str, Any]) -> None:
        ws = self._sockets.get(client_id) if client_id else None
        if ws is not None:
            await self._send(ws, kind, data)

    async def _broadcast_status(self) -> None:
        data = {"status": {"exec_info": {"queue_remaining": self._remaining()}}}
        for ws in list(self._sockets.values()):
            await self._send(ws, "status", data)

    # -- execution ----------------------------------------------------------------------------

    async def _executor(self) -> None:
        while True:
            if not self.pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._resumed.wait()
            if not self.pending:
                continue
            self.running = self.pending.pop(0)
            self._interrupt = False
            try:
                await self._execute(*self.running)
            finally:
                self.running = None

    async def _execute(
        self,
        number: Any,
        prompt_id: str,
        prompt: dict[str, Any],
        extra: dict[str, Any],
        outputs: list[str],
    ) -> None:
        client = extra.get("client_id")
        messages: list[list[Any]] = []

        async def emit(kind: str, data: dict[str, Any], keep: bool = False) -> None:
            if keep:
                messages.append([kind, data])
            await self._to_client(client, kind, data)

        await emit("execution_start", {"prompt_id": prompt_id, "timestamp": _now_ms()}, True)
        await emit(
            "execution_cached", {"nodes": [], "prompt_id": prompt_id, "timestamp": _now_ms()}, True
        )
        order = self._order(prompt)
        fail = self._fail_next
        self._fail_next = None
        fail_at = next(
            (n for n in reversed(order) if prompt[n]["class_type"] not in OUTPUT_NODES), order[0]
        )
        values: dict[str, Image.Image] = {}
        results: dict[str, Any] = {}
        executed: list[str] = []
        node_id = order[0]
        status_str = "success"
        try:
            for node_id in order:
                if self._interrupt:
                    raise _Interrupted
                await emit(
                    "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}
                )
                await self._delay(emit, prompt_id, node_id)
                if fail is not None and node_id == fail_at:
                    raise _NodeFailed(*fail)
                output = self._run_node(prompt[node_id], values, node_id)
                executed.append(node_id)
                if output is not None:
                    results[node_id] = output
                    await emit(
                        "executed",
                        {
                            "node": node_id,
                            "display_node": node_id,
                            "output": output,
                            "prompt_id": prompt_id,
                        },
                    )
            await emit("execution_success", {"prompt_id": prompt_id, "timestamp": _now_ms()}, True)
        except _Interrupted:
            status_str = "error"
            data = {
                "prompt_id": prompt_id,
                "node_id": node_id,
                "node_type": prompt[node_id]["class_type"],
                "executed": executed,
                "timestamp": _now_ms(),
            }
            await emit("execution_interrupted", data, True)
        except _NodeFailed as exc:
            status_str = "error"
            data = {
                "prompt_id": prompt_id,
                "node_id": node_id,
                "node_type": prompt[node_id]["class_type"],
                "executed": executed,
                "exception_message": exc.message,
                "exception_type": exc.exception_type,
                "traceback": ["<traceback lines omitted>"],
                "current_inputs": {},
                "current_outputs": list(order),
                "timestamp": _now_ms(),
            }
            await emit("execution_error", data, True)
        if self.history_write_delay:
            await asyncio.sleep(self.history_write_delay)
        self.history[prompt_id] = {
            "prompt": [number, prompt_id, prompt, extra, outputs],
            "outputs": results if status_str == "success" else {},
            "status": {
                "status_str": status_str,
                "completed": status_str == "success",
                "messages": messages,
            },
            "meta": {
                n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
                for n in results
            }
            if status_str == "success"
            else {},
        }
        self.running = None
        await self._broadcast_status()
        await emit("executing", {"node": None, "prompt_id": prompt_id})

    async def _delay(self, emit: Any, prompt_id: str, node_id: str) -> None:
        if self.execution_delay <= 0:
            return
        steps = 4
        for step in range(1, steps + 1):
            await asyncio.sleep(self.execution_delay / steps)
            await emit(
                "progress", {"value": step, "max": steps, "prompt_id": prompt_id, "node": node_id}
            )
            if self._interrupt:
                raise _Interrupted

    @staticmethod
    def _order(prompt: dict[str, Any]) -> list[str]:
        order: list[str] = []

        def visit(node_id: str) -> None:
            if node_id in order:
                return
            for value in (prompt[node_id].get("inputs") or {}).values():
                if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt:
                    visit(str(value[0]))
            order.append(node_id)

        for node_id in prompt:
            if prompt[node_id]["class_type"] in OUTPUT_NODES:
                visit(node_id)
        return order

    def _run_node(
        self, node: dict[str, Any], values: dict[str, Image.Image], node_id: str
    ) -> dict[str, Any] | None:
        inputs = node.get("inputs") or {}

        def linked(name: str) -> Image.Image:
            return values[str(inputs[name][0])]

        kind = node["class_type"]
        if kind == "LoadImage":
            path = self.dirs["input"] / str(inputs["image"])
            try:
                with Image.open(path) as image:
                    values[node_id] = image.convert("RGB")
            except UnidentifiedImageError as exc:
                raise _NodeFailed(
                    "PIL.UnidentifiedImageError", f"cannot identify image file '{path}'\n"
                ) from exc
        elif kind == "ImageInvert":
            values[node_id] = ImageOps.invert(linked("image"))
        elif kind == "ImageScaleBy":
            image = linked("image")
            scale = float(inputs["scale_by"])
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            values[node_id] = image.resize(size, Image.Resampling.LANCZOS)
        elif kind in OUTPUT_NODES:
            kind_dir = "output" if kind == "SaveImage" else "temp"
            prefix = (
                str(inputs.get("filename_prefix", "ComfyUI"))
                if kind == "SaveImage"
                else "ComfyUI_temp"
            )
            subfolder, _, stem = prefix.rpartition("/")
            folder = _safe_join(self.dirs[kind_dir], subfolder)
            if folder is None:
                raise _NodeFailed(
                    "Exception",
                    "**** ERROR: Saving image outside the output folder is not allowed.\n",
                )
            folder.mkdir(parents=True, exist_ok=True)
            counter = 1
            while (folder / f"{stem}_{counter:05}_.png").exists():
                counter += 1
            name = f"{stem}_{counter:05}_.png"
            buffer = io.BytesIO()
            linked("images").save(buffer, "PNG")
            (folder / name).write_bytes(buffer.getvalue())
            return {"images": [{"filename": name, "subfolder": subfolder, "type": kind_dir}]}
        return None
