"""ComfyUIDouble's nodes and fault knobs, driven over real HTTP and WebSocket."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
import websockets
from PIL import Image, ImageChops, ImageFilter, ImageStat

from comfygram.comfyui import (
    ComfyUIClient,
    ComfyUIUnavailable,
    ExecutionFailed,
    OutputImage,
    PromptRejected,
    explain_rejection,
)
from comfygram.presets import compatibility_problems, load_preset
from tests.doubles.comfyui import OOM_MESSAGE, ComfyUIDouble, read_mp4_standin

BUILTIN = Path(__file__).parent.parent / "src" / "comfygram" / "presets" / "builtin"
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
MODELS = {
    "checkpoints": [CHECKPOINT],
    "diffusion_models": ["flux1-dev-kontext_fp8_scaled.safetensors"],
    "unet": ["qwen_image_edit_fp8_e4m3fn.safetensors"],  # merged into diffusion_models
    "vae": ["ae.safetensors"],
    "text_encoders": ["clip_l.safetensors"],
    "clip": ["t5xxl_fp8_e4m3fn_scaled.safetensors"],  # merged into text_encoders
}


@pytest.fixture
async def comfy(tmp_path: Path) -> AsyncIterator[ComfyUIDouble]:
    double = ComfyUIDouble(tmp_path / "comfyui")
    await double.start()
    yield double
    await double.stop()


@pytest.fixture
async def client(comfy: ComfyUIDouble) -> AsyncIterator[ComfyUIClient]:
    async with ComfyUIClient(comfy.url, uuid.uuid4().hex, timeout=5.0) as c:
        yield c


def noise_png(size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def workflow(image: str, middle: dict[str, Any], prefix: str = "jobs/out") -> dict[str, Any]:
    """LoadImage (1) -> one node (2) -> SaveImage (3)."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {**middle, "inputs": {"image": ["1", 0], **middle.get("inputs", {})}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


INVERT = {"class_type": "ImageInvert"}


def soon() -> float:
    return time.monotonic() + 5.0


async def run(client: ComfyUIClient, prompt: dict[str, Any]) -> tuple[str, list[OutputImage]]:
    prompt_id = str(uuid.uuid4())
    await client.submit(prompt, prompt_id)
    return prompt_id, await client.wait(prompt_id, deadline=soon())


async def fails(client: ComfyUIClient, prompt: dict[str, Any]) -> ExecutionFailed:
    prompt_id = str(uuid.uuid4())
    await client.submit(prompt, prompt_id)
    with pytest.raises(ExecutionFailed) as caught:
        await client.wait(prompt_id, deadline=soon())
    return caught.value


async def rejected(client: ComfyUIClient, prompt: dict[str, Any]) -> PromptRejected:
    with pytest.raises(PromptRejected) as caught:
        await client.submit(prompt, str(uuid.uuid4()))
    return caught.value


async def upload(client: ComfyUIClient, data: bytes | None = None) -> str:
    return await client.upload_image(data or noise_png(), f"{uuid.uuid4().hex}.png")


def cached_nodes(entry: dict[str, Any]) -> list[str]:
    messages = dict((kind, data) for kind, data in entry["status"]["messages"])
    return messages["execution_cached"]["nodes"]


# -- nodes --------------------------------------------------------------------------------------


async def test_blur_matches_pillow_gaussian_blur(client: ComfyUIClient) -> None:
    data = noise_png()
    name = await upload(client, data)
    blur = {"class_type": "ImageBlur", "inputs": {"blur_radius": 2, "sigma": 1.0}}
    _, images = await run(client, workflow(name, blur))
    result = Image.open(io.BytesIO(await client.download(images[0]))).convert("RGB")
    original = Image.open(io.BytesIO(data)).convert("RGB")
    assert result.tobytes() != original.tobytes()
    assert result.tobytes() == original.filter(ImageFilter.GaussianBlur(radius=2)).tobytes()


async def test_blur_inputs_are_listed_and_checked(client: ComfyUIClient) -> None:
    info = (await client.object_info("ImageBlur"))["ImageBlur"]
    assert info["input"]["required"] == {
        "image": ["IMAGE", {}],
        "blur_radius": ["INT", {"default": 1, "min": 1, "max": 31, "step": 1}],
        "sigma": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}],
    }
    assert info["category"] == "image/postprocessing"
    name = await upload(client)
    too_big = {"class_type": "ImageBlur", "inputs": {"blur_radius": 40, "sigma": 1.0}}
    error = (await rejected(client, workflow(name, too_big))).body["node_errors"]["2"]
    assert error["errors"][0]["type"] == "value_bigger_than_max"
    assert error["errors"][0]["message"] == "Value 40 bigger than max of 31"
    assert error["dependent_outputs"] == ["3"]
    not_a_number = {"class_type": "ImageBlur", "inputs": {"blur_radius": 2, "sigma": "abc"}}
    error = (await rejected(client, workflow(name, not_a_number))).body["node_errors"]["2"]
    assert error["errors"][0]["details"] == "sigma, abc, could not convert string to float: 'abc'"


async def test_sharpen_preset_is_compatible_and_runs(client: ComfyUIClient) -> None:
    preset = load_preset(BUILTIN / "sharpen")
    assert compatibility_problems(preset, await client.object_info()) == []
    data = noise_png()
    prompt = copy.deepcopy(preset.workflow)
    prompt[preset.contract.photos[0].node]["inputs"]["image"] = await upload(client, data)
    prompt[preset.contract.output.node]["inputs"]["filename_prefix"] = f"jobs/{uuid.uuid4().hex}"
    _, images = await run(client, prompt)
    result = Image.open(io.BytesIO(await client.download(images[0]))).convert("RGB")
    assert result.size == (32, 24)
    assert result.tobytes() != Image.open(io.BytesIO(data)).convert("RGB").tobytes()


async def test_black_and_white_preset_is_compatible_and_gives_its_luma(
    client: ComfyUIClient,
) -> None:
    preset = load_preset(BUILTIN / "bw")
    assert compatibility_problems(preset, await client.object_info()) == []
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 80, 40)).save(buffer, "PNG")
    prompt = copy.deepcopy(preset.workflow)
    name = await upload(client, buffer.getvalue())
    prompt[preset.contract.photos[0].node]["inputs"]["image"] = name
    prompt[preset.contract.output.node]["inputs"]["filename_prefix"] = f"jobs/{uuid.uuid4().hex}"
    _, images = await run(client, prompt)
    grey = Image.open(io.BytesIO(await client.download(images[0]))).convert("RGB").getpixel((4, 4))
    luma = (0.34 * 200 + 0.66 * 80) * 0.89 + 0.11 * 40  # the preset's two blends
    assert grey[0] == grey[1] == grey[2] and abs(grey[0] - luma) <= 2, grey


async def test_a_mask_of_the_missing_alpha_channel_fails_at_run_time(
    client: ComfyUIClient,
) -> None:
    alpha = {"class_type": "ImageToMask", "inputs": {"channel": "alpha"}}
    prompt = workflow(await upload(client), alpha)
    prompt["4"] = {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}}
    prompt["3"]["inputs"]["images"] = ["4", 0]
    failed = await fails(client, prompt)
    assert (failed.node_type, failed.exception_type) == ("ImageToMask", "IndexError")


# -- models and node types ----------------------------------------------------------------------


async def test_loaders_list_the_model_files(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    comfy.models = MODELS
    info = await client.object_info()
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"] == [
        [CHECKPOINT],
        {"tooltip": "The name of the checkpoint (model) to load."},
    ]
    assert info["CheckpointLoaderSimple"]["output"] == ["MODEL", "CLIP", "VAE"]
    unet = info["UNETLoader"]["input"]["required"]
    assert unet["unet_name"] == [
        ["flux1-dev-kontext_fp8_scaled.safetensors", "qwen_image_edit_fp8_e4m3fn.safetensors"]
    ]
    assert unet["weight_dtype"] == [["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]]
    assert info["VAELoader"]["input"]["required"]["vae_name"] == [["ae.safetensors", "pixel_space"]]
    encoders = ["clip_l.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors"]
    clip = info["CLIPLoader"]["input"]
    assert clip["required"]["clip_name"] == [encoders]
    assert "qwen_image" in clip["required"]["type"][0]
    assert clip["optional"]["device"] == [["default", "cpu"], {"advanced": True}]
    assert info["CLIPLoader"]["input_order"] == {
        "required": ["clip_name", "type"],
        "optional": ["device"],
    }
    dual = info["DualCLIPLoader"]["input"]["required"]
    assert dual["clip_name1"] == dual["clip_name2"] == [encoders]
    assert "flux" in dual["type"][0]
    # The kontext preset finds all its model files; only its sampling nodes are missing here.
    problems = compatibility_problems(load_preset(BUILTIN / "kontext"), info)
    assert problems and all(p.startswith("node type ") for p in problems)
    comfy.models = {**MODELS, "vae": []}
    problems = compatibility_problems(load_preset(BUILTIN / "kontext"), await client.object_info())
    assert any("ae.safetensors" in p for p in problems)


def vae_roundtrip(image: str, ckpt_name: str) -> dict[str, Any]:
    """Load a checkpoint, and pass the image through its VAE: the loader is validated."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["4", 2]}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "x"}},
    }


async def test_missing_model_is_value_not_in_list(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    comfy.models = MODELS
    name = await upload(client)
    caught = await rejected(client, vae_roundtrip(name, "flux-kontext.safetensors"))
    assert caught.body["node_errors"] == {
        "4": {
            "errors": [
                {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": f"ckpt_name: 'flux-kontext.safetensors' not in ['{CHECKPOINT}']",
                    "extra_info": {
                        "input_name": "ckpt_name",
                        "input_config": [
                            [CHECKPOINT],
                            {"tooltip": "The name of the checkpoint (model) to load."},
                        ],
                        "received_value": "flux-kontext.safetensors",
                    },
                }
            ],
            "dependent_outputs": ["9"],
            "class_type": "CheckpointLoaderSimple",
        }
    }
    assert caught.body["error"]["type"] == "prompt_outputs_failed_validation"
    assert explain_rejection(caught.body) == (
        "ComfyUI rejected the workflow: node 4 (CheckpointLoaderSimple) needs the model file "
        "'flux-kontext.safetensors' (ckpt_name), which is not installed; "
        f"installed: '{CHECKPOINT}'."
    )
    # With the file listed the prompt is taken; the double does not run model nodes.
    failure = await fails(client, vae_roundtrip(name, CHECKPOINT))
    assert failure.node_type == "CheckpointLoaderSimple"


async def test_long_model_list_is_not_sent_back(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    comfy.models = {"checkpoints": [f"model-{i:02}.safetensors" for i in range(25)]}
    caught = await rejected(client, vae_roundtrip(await upload(client), "missing.safetensors"))
    error = caught.body["node_errors"]["4"]["errors"][0]
    assert error["details"] == "ckpt_name: 'missing.safetensors' not in (list of length 25)"
    assert error["extra_info"]["input_config"] is None
    assert "not among the 25 installed files" in explain_rejection(caught.body)


async def test_hidden_node_is_gone(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    comfy.hide_node("ImageInvert")
    assert "ImageInvert" not in await client.object_info()
    assert await client.object_info("ImageInvert") == {}
    caught = await rejected(client, workflow(await upload(client), INVERT))
    assert caught.body["error"] == {
        "type": "invalid_prompt",
        "message": "Cannot execute because node ImageInvert does not exist.",
        "details": "Node ID '#2'",
        "extra_info": {},
    }
    comfy.hidden_nodes.clear()
    assert "ImageInvert" in await client.object_info()


# -- runtime faults -----------------------------------------------------------------------------


async def test_fail_times_fails_the_next_n_prompts(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    comfy.fail_times(2, "RuntimeError", "boom\n")
    for _ in range(2):
        failure = await fails(client, workflow(await upload(client), INVERT))
        assert (failure.exception_type, failure.exception_message) == ("RuntimeError", "boom")
        assert (failure.node_id, failure.node_type) == ("2", "ImageInvert")
    prompt_id, images = await run(client, workflow(await upload(client), INVERT))
    assert len(images) == 1
    assert len(comfy.executed_prompt_ids) == 3 and comfy.executed_prompt_ids[-1] == prompt_id


async def test_fail_always_until_switched_off(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    comfy.fail_always("RuntimeError", "broken card")
    for _ in range(2):
        failure = await fails(client, workflow(await upload(client), INVERT))
        assert failure.exception_message == "broken card"
    comfy.fail_always(None)
    assert len((await run(client, workflow(await upload(client), INVERT)))[1]) == 1


async def test_out_of_memory_then_free_and_retry(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    comfy.out_of_memory_next()
    prompt = workflow(await upload(client), INVERT, prefix=f"jobs/{uuid.uuid4().hex}")
    failure = await fails(client, prompt)
    assert failure.out_of_memory
    assert failure.exception_type == "torch.OutOfMemoryError"
    assert failure.exception_message == OOM_MESSAGE.strip()
    assert failure.exception_message.startswith("Allocation on device \nThis error means")
    await client.free(unload_models=True, free_memory=True)
    assert comfy.free_calls == [{"unload_models": True, "free_memory": True}]
    # The same prompt again: the node before the failure is cached, the rest runs.
    prompt_id, images = await run(client, prompt)
    assert len(images) == 1
    assert cached_nodes(await client.history(prompt_id) or {}) == ["1"]


# -- HTTP faults --------------------------------------------------------------------------------


async def test_dropped_request_gets_no_answer(comfy: ComfyUIDouble) -> None:
    comfy.drop_http(times=1)
    async with httpx.AsyncClient(timeout=5.0) as http:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await http.get(f"{comfy.url}/system_stats")
        assert (await http.get(f"{comfy.url}/system_stats")).status_code == 200
    assert comfy.dropped_requests == ["/system_stats"]


async def test_dropped_paths_make_the_client_see_unavailable(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    comfy.drop_http(times=2, paths=["/prompt", "/history"])
    assert (await client.system_stats()).version == "0.3.64"  # not a dropped path
    with pytest.raises(ComfyUIUnavailable):
        await client.submit(workflow(await upload(client), INVERT), str(uuid.uuid4()))
    assert comfy.prompts_received == []  # the request never reached the route
    with pytest.raises(ComfyUIUnavailable):
        await client.history("some-id")
    assert comfy.dropped_requests == ["/prompt", "/history/some-id"]
    assert len((await run(client, workflow(await upload(client), INVERT)))[1]) == 1


async def test_http_delay_slows_every_answer(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    comfy.http_delay = 0.1
    started = time.monotonic()
    await client.system_stats()
    await client.queue()
    assert time.monotonic() - started >= 0.2
    comfy.http_delay = 0.0
    started = time.monotonic()
    await client.system_stats()
    assert time.monotonic() - started < 0.1


# -- output cache and occupancy -----------------------------------------------------------------


def output_files(comfy: ComfyUIDouble) -> list[str]:
    return sorted(p.name for p in comfy.dirs["output"].rglob("*.png"))


async def test_identical_prompt_is_cached(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    name = await upload(client)
    first_id, first = await run(client, workflow(name, INVERT, prefix="jobs/a"))
    assert first == [OutputImage("a_00001_.png", "jobs", "output", node="3")]
    assert cached_nodes(await client.history(first_id) or {}) == []

    again_id, again = await run(client, workflow(name, INVERT, prefix="jobs/a"))
    assert again == first  # the earlier file, not a new one
    assert output_files(comfy) == ["a_00001_.png"]
    entry = await client.history(again_id) or {}
    assert cached_nodes(entry) == ["1", "2", "3"]
    assert entry["outputs"] == {
        "3": {"images": [{"filename": "a_00001_.png", "subfolder": "jobs", "type": "output"}]}
    }

    other_id, other = await run(client, workflow(name, INVERT, prefix="jobs/b"))
    assert other == [OutputImage("b_00001_.png", "jobs", "output", node="3")]
    assert cached_nodes(await client.history(other_id) or {}) == ["1", "2"]

    comfy.cache_enabled = False
    _, uncached = await run(client, workflow(name, INVERT, prefix="jobs/b"))
    assert uncached == [OutputImage("b_00002_.png", "jobs", "output", node="3")]


async def test_new_image_bytes_under_the_same_name_are_not_cached(client: ComfyUIClient) -> None:
    await client.upload_image(noise_png(), "same.png")
    await run(client, workflow("same.png", INVERT, prefix="jobs/c"))
    await client.upload_image(noise_png(), "same.png")  # overwrite: new bytes
    prompt_id, images = await run(client, workflow("same.png", INVERT, prefix="jobs/c"))
    assert images == [OutputImage("c_00002_.png", "jobs", "output", node="3")]
    assert cached_nodes(await client.history(prompt_id) or {}) == []


async def test_timeline_records_each_prompt(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    first, _ = await run(client, workflow(await upload(client), INVERT))
    second, _ = await run(client, workflow(await upload(client), INVERT))
    assert comfy.executed_prompt_ids == [first, second]
    assert [(event, pid, cid) for _, event, pid, cid in comfy.timeline] == [
        ("start", first, client.client_id),
        ("end", first, client.client_id),
        ("start", second, client.client_id),
        ("end", second, client.client_id),
    ]
    times = [t for t, *_ in comfy.timeline]
    assert times == sorted(times)


# -- WebSocket sequences, as recorded -----------------------------------------------------------

RECORDED_FIRST_RUN = [
    ("status", None),
    ("status", None),
    ("execution_start", None),
    ("execution_cached", None),
    ("progress_state", None),
    ("executing", "1"),
    ("progress_state", None),
    ("progress_state", None),
    ("executing", "2"),
    ("progress_state", None),
    ("progress_state", None),
    ("executing", "3"),
    ("executed", "3"),
    ("progress_state", None),
    ("execution_success", None),
    ("status", None),
    ("executing", None),
]
RECORDED_CACHED = [
    ("execution_start", None),
    ("execution_cached", None),
    ("executed", "3"),
    ("progress_state", None),
    ("execution_success", None),
    ("executing", None),
]
RECORDED_PREFIX_ESCAPES = [  # the error is raised by SaveImage (node 3)
    ("execution_start", None),
    ("execution_cached", None),
    ("progress_state", None),
    ("executing", "1"),
    ("progress_state", None),
    ("progress_state", None),
    ("executing", "2"),
    ("progress_state", None),
    ("progress_state", None),
    ("executing", "3"),
    ("execution_error", None),
    ("executing", None),
]


def kinds(messages: list[dict[str, Any]], prompt_only: bool = False) -> list[tuple[str, Any]]:
    """(type, node) pairs; ``prompt_only`` keeps the messages that name a prompt."""
    return [
        (m["type"], m["data"].get("node") if m["type"] in ("executing", "executed") else None)
        for m in messages
        if not prompt_only or "prompt_id" in m["data"]
    ]


async def listen(
    comfy: ComfyUIDouble,
    client_id: str,
    action: Callable[[websockets.ClientConnection], Awaitable[None]],
) -> list[dict[str, Any]]:
    """Messages on ``client_id``'s socket from ``action`` until a prompt ends."""
    async with websockets.connect(f"ws://127.0.0.1:{comfy.port}/ws?clientId={client_id}") as ws:
        # No feature_flags unless the client sends its own first (as the real server).
        assert json.loads(await ws.recv())["type"] == "status"
        await action(ws)
        messages: list[dict[str, Any]] = []
        async with asyncio.timeout(5):
            while (
                not messages or messages[-1]["type"] != "executing" or messages[-1]["data"]["node"]
            ):
                messages.append(json.loads(await ws.recv()))
        return messages


async def test_success_and_cached_sequences(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    prompt = workflow(await upload(client), INVERT)

    async def submit(ws: websockets.ClientConnection) -> None:
        await client.submit(prompt, str(uuid.uuid4()))

    first = await listen(comfy, client.client_id, submit)
    assert kinds(first) == RECORDED_FIRST_RUN
    states = [m["data"]["nodes"] for m in first if m["type"] == "progress_state"]
    assert states[0] == {
        "1": {
            "value": 0.0,
            "max": 1.0,
            "state": "running",
            "node_id": "1",
            "prompt_id": first[2]["data"]["prompt_id"],
            "display_node_id": "1",
            "parent_node_id": None,
            "real_node_id": "1",
        }
    }
    assert [n["state"] for n in states[-1].values()] == ["finished"] * 3
    again = await listen(comfy, client.client_id, submit)
    assert kinds(again, prompt_only=True) == RECORDED_CACHED
    again_id = next(m["data"]["prompt_id"] for m in again if "prompt_id" in m["data"])
    state = next(m["data"] for m in again if m["type"] == "progress_state")
    assert state == {
        "prompt_id": again_id,
        "nodes": {
            "3": {
                **states[-1]["3"],
                "value": 1,
                "max": 1,
                "prompt_id": again_id,
            }
        },
    }


async def test_error_sequence(client: ComfyUIClient, comfy: ComfyUIDouble) -> None:
    prompt = workflow(await upload(client), INVERT, prefix="../escape")

    async def submit(ws: websockets.ClientConnection) -> None:
        await client.submit(prompt, str(uuid.uuid4()))

    messages = await listen(comfy, client.client_id, submit)
    assert kinds(messages, prompt_only=True) == RECORDED_PREFIX_ESCAPES
    error = next(m["data"] for m in messages if m["type"] == "execution_error")
    assert (error["node_id"], error["node_type"], error["executed"]) == (
        "3",
        "SaveImage",
        ["1", "2"],
    )
    assert error["current_inputs"]["filename_prefix"] == ["../escape"]


async def test_interrupt_sequence(client: ComfyUIClient, comfy: ComfyUIDouble) -> None:
    comfy.execution_delay = 0.1
    prompt = workflow(await upload(client), INVERT)
    prompt_id = str(uuid.uuid4())

    async def submit_then_interrupt(ws: websockets.ClientConnection) -> None:
        await client.submit(prompt, prompt_id)
        async with asyncio.timeout(5):
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "executing" and message["data"]["node"] == "2":
                    break
        await client.interrupt(prompt_id)

    messages = await listen(comfy, client.client_id, submit_then_interrupt)
    assert kinds(messages, prompt_only=True)[-2:] == [
        ("execution_interrupted", None),
        ("executing", None),
    ]
    interrupted = next(m["data"] for m in messages if m["type"] == "execution_interrupted")
    assert (interrupted["node_id"], interrupted["node_type"]) == ("2", "ImageInvert")
    assert interrupted["executed"] == ["1"]


# -- rich outputs: batches, stitching, animations, video, previews ------------------------------


def solid_png(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


async def execute(comfy: ComfyUIDouble, prompt: dict[str, Any]) -> dict[str, Any]:
    """POST /prompt, then the /history entry once written (raw HTTP, as the real server)."""
    async with httpx.AsyncClient(base_url=comfy.url) as http:
        answer = await http.post("/prompt", json={"prompt": prompt, "client_id": "rich"})
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        async with asyncio.timeout(5):
            while not (entry := (await http.get(f"/history/{prompt_id}")).json()):
                await asyncio.sleep(0.02)
    assert entry[prompt_id]["status"]["status_str"] == "success", entry
    return entry[prompt_id]


async def view(comfy: ComfyUIDouble, file: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=comfy.url) as http:
        answer = await http.get("/view", params=file)
    assert answer.status_code == 200
    return answer


def image_of(answer: httpx.Response) -> Image.Image:
    return Image.open(io.BytesIO(answer.content))


async def test_rich_nodes_are_listed_as_the_real_server_lists_them(client: ComfyUIClient) -> None:
    info = await client.object_info()
    assert info["SaveVideo"]["output_node"] is True
    assert info["SaveVideo"]["input"]["required"]["format"][1]["options"] == ["auto", "mp4"]
    assert info["SaveVideo"]["input"]["required"]["codec"][1]["options"] == ["auto", "h264"]
    assert info["CreateVideo"]["output"] == ["VIDEO"]
    assert info["ImageStitch"]["input"]["optional"] == {"image2": ["IMAGE"]}
    assert info["ImageRotate"]["input"]["required"]["rotation"] == [
        ["none", "90 degrees", "180 degrees", "270 degrees"]
    ]
    for name in ("SaveAnimatedWEBP", "SaveAnimatedPNG", "ImageFlip", "RepeatImageBatch"):
        assert info[name]["name"] == name


async def test_batch_save_image_writes_one_png_per_image(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    name = await client.upload_image(solid_png((20, 10), (200, 30, 40)), "red.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": {"class_type": "RepeatImageBatch", "inputs": {"image": ["3", 0], "amount": 2}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "b/x"}},
    }
    entry = await execute(comfy, prompt)
    files = entry["outputs"]["5"]["images"]
    assert entry["outputs"]["5"] == {"images": files}  # no "animated" for still images
    assert [f["filename"] for f in files] == [f"x_{n:05}_.png" for n in (1, 2, 3, 4)]
    assert {(f["subfolder"], f["type"]) for f in files} == {("b", "output")}
    colors = []
    for file in files:
        answer = await view(comfy, file)
        assert answer.headers["content-type"] == "image/png"
        colors.append(image_of(answer).getpixel((0, 0)))
    # RepeatImageBatch repeats the whole batch: original, inverted, original, inverted.
    assert colors == [(200, 30, 40), (54, 225, 215)] * 2


async def test_stitch_flip_and_rotate(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    left = await client.upload_image(solid_png((40, 30), (255, 0, 0)), "left.png")
    right = await client.upload_image(solid_png((20, 60), (0, 0, 255)), "right.png")

    def stitch(direction: str) -> dict[str, Any]:
        return {
            "class_type": "ImageStitch",
            "inputs": {
                "image1": ["1", 0],
                "image2": ["2", 0],
                "direction": direction,
                "match_image_size": True,
                "spacing_width": 4,
                "spacing_color": "white",
            },
        }

    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": left}},
        "2": {"class_type": "LoadImage", "inputs": {"image": right}},
        "3": stitch("right"),
        "4": stitch("down"),
        "5": {
            "class_type": "ImageFlip",
            "inputs": {"image": ["3", 0], "flip_method": "y-axis: horizontally"},
        },
        "6": {"class_type": "ImageRotate", "inputs": {"image": ["3", 0], "rotation": "90 degrees"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "s"}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "d"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "f"}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "r"}},
    }
    outputs = (await execute(comfy, prompt))["outputs"]
    side, down, flipped, turned = [
        image_of(await view(comfy, outputs[n]["images"][0])).convert("RGB")
        for n in ("7", "8", "9", "10")
    ]
    # The second photo is scaled to the first's height (10 x 30), after 4 white pixels.
    assert side.size == (40 + 4 + 10, 30)
    assert [side.getpixel((x, 15)) for x in (0, 41, 52)] == [
        (255, 0, 0),
        (255, 255, 255),
        (0, 0, 255),
    ]
    assert down.size == (40, 30 + 4 + 120)  # scaled to the first's width
    assert down.getpixel((20, 0)) == (255, 0, 0) and down.getpixel((20, 153)) == (0, 0, 255)
    assert flipped.getpixel((0, 15)) == (0, 0, 255) and flipped.getpixel((53, 15)) == (255, 0, 0)
    # Clockwise, as ComfyUI turns: the left photo ends up on top.
    assert turned.size == (30, 54)
    assert turned.getpixel((15, 0)) == (255, 0, 0) and turned.getpixel((15, 53)) == (0, 0, 255)


def animation_prompt(name: str) -> dict[str, Any]:
    """Three distinct frames (photo, blend, negative) repeated twice: 6 frames."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "ImageBlend",
            "inputs": {
                "image1": ["1", 0],
                "image2": ["2", 0],
                "blend_factor": 0.5,
                "blend_mode": "normal",
            },
        },
        "4": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["3", 0]}},
        "5": {"class_type": "ImageBatch", "inputs": {"image1": ["4", 0], "image2": ["2", 0]}},
        "6": {"class_type": "RepeatImageBatch", "inputs": {"image": ["5", 0], "amount": 2}},
    }


async def test_animated_webp_and_png(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    prompt = animation_prompt(
        await client.upload_image(solid_png((24, 16), (200, 30, 40)), "a.png")
    )
    prompt["7"] = {
        "class_type": "SaveAnimatedWEBP",
        "inputs": {
            "images": ["6", 0],
            "filename_prefix": "anim/w",
            "fps": 4.0,
            "lossless": True,
            "quality": 80,
            "method": "default",
        },
    }
    prompt["8"] = {
        "class_type": "SaveAnimatedPNG",
        "inputs": {
            "images": ["6", 0],
            "filename_prefix": "anim/p",
            "fps": 4.0,
            "compress_level": 4,
        },
    }
    outputs = (await execute(comfy, prompt))["outputs"]
    for node, filename, content_type in (
        ("7", "w_00001_.webp", "image/webp"),
        ("8", "p_00001_.png", "image/png"),
    ):
        assert outputs[node] == {
            "images": [{"filename": filename, "subfolder": "anim", "type": "output"}],
            "animated": [True],
        }
        answer = await view(comfy, outputs[node]["images"][0])
        assert answer.headers["content-type"] == content_type
        animation = image_of(answer)
        assert (animation.n_frames, animation.size) == (6, (24, 16))
        animation.seek(2)
        assert animation.convert("RGB").getpixel((0, 0)) == (54, 225, 215)
        assert animation.info["duration"] == 250  # int(1000 / fps) ms per frame


async def test_create_video_and_save_video(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    prompt = animation_prompt(await client.upload_image(solid_png((32, 18), (9, 9, 9)), "v.png"))
    prompt["7"] = {"class_type": "CreateVideo", "inputs": {"images": ["6", 0], "fps": 3.0}}
    prompt["8"] = {
        "class_type": "SaveVideo",
        "inputs": {
            "video": ["7", 0],
            "filename_prefix": "clip/v",
            "format": "mp4",
            "codec": "h264",
        },
    }
    outputs = (await execute(comfy, prompt))["outputs"]
    assert outputs == {
        "8": {
            "images": [{"filename": "v_00001_.mp4", "subfolder": "clip", "type": "output"}],
            "animated": [True],
        }
    }
    answer = await view(comfy, outputs["8"]["images"][0])
    assert answer.headers["content-type"] == "video/mp4"
    assert answer.content[4:12] == b"ftypisom"  # as the real file starts
    facts = read_mp4_standin(answer.content)
    assert facts == {
        "format": "mp4",
        "codec": "h264",
        "frames": 6,
        "fps": 3.0,
        "width": 32,
        "height": 18,
        "duration": 2.0,
    }


async def preview_frames(comfy: ComfyUIDouble, client: ComfyUIClient, offer: bool) -> list[bytes]:
    """Binary frames on a socket that does (or does not) offer ``supports_preview_metadata``,
    while a two-node prompt runs; the text messages' types are kept in order as b'json:<type>'."""
    name = await client.upload_image(solid_png((600, 300), (10, 200, 30)), "p.png")
    frames: list[bytes] = []
    async with websockets.connect(f"ws://127.0.0.1:{comfy.port}/ws?clientId=viewer") as ws:
        assert json.loads(await ws.recv())["type"] == "status"
        if offer:
            flags = {"supports_preview_metadata": True}
            await ws.send(json.dumps({"type": "feature_flags", "data": flags}))
            assert json.loads(await ws.recv())["type"] == "feature_flags"
        async with httpx.AsyncClient(base_url=comfy.url) as http:
            body = {"prompt": workflow(name, INVERT), "client_id": "viewer"}
            assert (await http.post("/prompt", json=body)).status_code == 200
        async with asyncio.timeout(5):
            while True:
                message = await ws.recv()
                if isinstance(message, bytes):
                    frames.append(message)
                    continue
                data = json.loads(message)
                frames.append(f"json:{data['type']}".encode())
                if data["type"] == "executing" and data["data"]["node"] is None:
                    return frames


def jpeg_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        return image.size


async def test_previews_without_metadata_are_plain_preview_image_frames(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    comfy.previews = True
    messages = await preview_frames(comfy, client, offer=False)
    frames = [m for m in messages if not m.startswith(b"json:")]
    # Two from the sampling-like node (ImageInvert; never the loader or the save node).
    assert len(frames) == 2
    for frame in frames:
        assert struct.unpack(">II", frame[:8]) == (1, 1)  # PREVIEW_IMAGE, JPEG
        assert jpeg_size(frame[8:]) == (512, 256)  # within --preview-size 512
    # ComfyUI sends the legacy frame right after its "progress" message.
    for index, message in enumerate(messages):
        if not message.startswith(b"json:"):
            assert messages[index - 1] == b"json:progress"


async def test_previews_with_metadata_name_the_prompt_and_node(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    comfy.previews = True
    messages = await preview_frames(comfy, client, offer=True)
    frames = [m for m in messages if not m.startswith(b"json:")]
    assert len(frames) == 2
    prompt_id = comfy.executed_prompt_ids[-1]
    nodes = []
    for frame in frames:
        kind, length = struct.unpack(">II", frame[:8])
        assert kind == 4  # PREVIEW_IMAGE_WITH_METADATA
        metadata = json.loads(frame[8 : 8 + length])
        assert list(metadata) == [
            "node_id",
            "prompt_id",
            "display_node_id",
            "parent_node_id",
            "real_node_id",
            "image_type",
        ]
        assert metadata["prompt_id"] == prompt_id
        assert metadata["image_type"] == "image/jpeg" and metadata["parent_node_id"] is None
        assert jpeg_size(frame[8 + length :]) == (512, 256)
        nodes.append(metadata["node_id"])
    assert nodes == ["2", "2"]
    # ... and before the step's "progress" message, as ComfyUI's progress handler sends it.
    for index, message in enumerate(messages):
        if not message.startswith(b"json:"):
            assert messages[index + 1] == b"json:progress"


async def test_no_previews_unless_configured(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    messages = await preview_frames(comfy, client, offer=True)
    assert not [m for m in messages if not m.startswith(b"json:")]
    assert b"json:progress" not in messages


async def test_the_client_finishes_a_prompt_among_preview_frames(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    comfy.previews = True
    prompt, prompt_id = workflow(await upload(client), INVERT), str(uuid.uuid4())
    comfy.pause()  # run only once the client's socket listens
    await client.submit(prompt, prompt_id)
    waiting = asyncio.create_task(client.wait(prompt_id, deadline=soon()))
    async with asyncio.timeout(5):
        await comfy.socket_connected(client.client_id)
    comfy.resume()
    outputs = await waiting
    assert [o.filename for o in outputs] == ["out_00001_.png"]
    assert len(comfy.previews_sent) == 2  # sent, and skipped by the client


# -- the model-free rich presets: pair, variants, fade ------------------------------------------

RED, BLUE = (220, 40, 30), (30, 60, 210)


async def run_preset(
    client: ComfyUIClient, slug: str, photos: list[bytes], options: dict[str, str]
) -> list[bytes]:
    """The built-in preset filled through its contract as the worker fills it (photos, chosen
    options, output prefix), run on the double; each output file's bytes in ComfyUI's order."""
    preset = load_preset(BUILTIN / slug)
    assert compatibility_problems(preset, await client.object_info()) == []
    chosen = preset.contract.resolve(photos=len(photos), prompt=None, options=options)
    names = [await upload(client, data) for data in photos]
    built = preset.contract.apply(
        preset.workflow,
        photos=names,
        prompt=None,
        chosen=chosen,
        output_prefix=f"comfygram/{slug}-{uuid.uuid4().hex}",
    )
    prompt_id = str(uuid.uuid4())
    await client.submit(built, prompt_id)
    outputs = await client.wait(prompt_id, deadline=time.monotonic() + preset.timeout_seconds)
    return [await client.download(output) for output in outputs]


def picture(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel value, 0..255."""
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def colourful_photo(width: int, height: int) -> bytes:
    """Red grows to the right, blue downwards, green is noise: a tint, a grey tone and a
    mirror image each change it (as in tests/test_real_comfyui_rich_presets.py)."""
    size = (width, height)
    channels = (
        Image.linear_gradient("L").rotate(90).resize(size),
        Image.effect_noise(size, 60),
        Image.linear_gradient("L").resize(size),
    )
    buffer = io.BytesIO()
    Image.merge("RGB", channels).save(buffer, "PNG")
    return buffer.getvalue()


def near(colour: Any, expected: Any, within: float) -> bool:
    return all(abs(a - b) <= within for a, b in zip(colour, expected, strict=True))


async def test_pair_preset_puts_both_photos_side_by_side(client: ComfyUIClient) -> None:
    [result] = await run_preset(
        client, "pair", [solid_png((300, 200), RED), solid_png((200, 400), BLUE)], {}
    )
    pair = picture(result)
    # 300x200 -> 768x512 (ImageScale, width 0), 200x400 -> 256x512 (ImageStitch matching)
    assert pair.size == (1024, 512)
    assert pair.getpixel((384, 256)) == RED and pair.getpixel((896, 256)) == BLUE
    assert pair.getpixel((767, 256)) == RED and pair.getpixel((768, 256)) == BLUE  # the seam


async def test_variants_preset_gives_the_chosen_number_of_distinct_images(
    client: ComfyUIClient,
) -> None:
    photo = colourful_photo(640, 480)
    original = picture(photo).resize((512, 384), Image.Resampling.LANCZOS)
    albums = {}
    for count in ("2", "4"):
        albums[count] = [
            picture(f) for f in await run_preset(client, "variants", [photo], {"count": count})
        ]
        assert len(albums[count]) == int(count)
        assert all(v.size == (512, 384) for v in albums[count])  # longest side 512
        for i, variant in enumerate(albums[count]):
            assert mean_difference(variant, original) > 5, f"variant {i} is the photo itself"
            for j, other in enumerate(albums[count][:i]):
                assert mean_difference(variant, other) > 5, f"variants {j} and {i} look alike"
    assert [two.tobytes() for two in albums["2"]] == [four.tobytes() for four in albums["4"][:2]]
    warm, cool, vintage, mirrored = albums["4"]
    centre = (256, 192)
    assert warm.getpixel(centre)[0] > cool.getpixel(centre)[0]  # orange vs blue soft light
    assert cool.getpixel(centre)[2] > warm.getpixel(centre)[2]
    r, g, b = vintage.getpixel(centre)
    assert r > g > b  # a sepia tone
    assert mirrored.tobytes() == original.transpose(Image.Transpose.FLIP_LEFT_RIGHT).tobytes()


def mp4_facts(data: bytes, probe: list[int]) -> dict[str, Any]:
    """Codec, frame count, rate, duration, size and the mean colour of frames ``probe``."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_image() for frame in container.decode(video=0)]
        return {
            "codec": stream.codec_context.name,
            "frames": stream.frames,
            "decoded": len(frames),
            "fps": float(stream.average_rate or 0),
            "duration": (container.duration or 0) / 1e6,
            "size": (stream.width, stream.height),
            "colours": {k: ImageStat.Stat(frames[k]).mean for k in probe},
        }


@pytest.mark.parametrize(("length", "frames"), [("2s", 48), ("4s", 96)])
async def test_fade_preset_is_an_h264_mp4_of_the_chosen_length(
    client: ComfyUIClient, length: str, frames: int
) -> None:
    [video] = await run_preset(client, "fade", [solid_png((300, 200), RED)], {"length": length})
    assert video[4:8] == b"ftyp"
    every = list(range(frames))
    facts = mp4_facts(video, every)
    assert facts["codec"] == "h264"
    assert facts["frames"] == facts["decoded"] == frames
    assert facts["fps"] == 24.0
    assert facts["duration"] == pytest.approx(frames / 24, abs=0.05)
    assert facts["size"] == (512, 342)  # 300x200 -> 256x171 -> doubled
    # every frame on the line from the photo to its negative (the real test: within 6)
    negative = [255 - c for c in RED]
    for k in every:
        expected = [
            (a * (frames - 1 - k) + b * k) / (frames - 1)
            for a, b in zip(RED, negative, strict=True)
        ]
        assert near(facts["colours"][k], expected, 5), (k, facts["colours"][k], expected)


STRIPES = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]  # thirds of a 60x40 photo, left to right
GREY_BLUE = (0x33, 0x66, 0x99)


def stripes_png() -> bytes:
    photo = Image.new("RGB", (60, 40))
    for i, colour in enumerate(STRIPES):
        photo.paste(colour, (20 * i, 0, 20 * i + 20, 40))
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    return buffer.getvalue()


def scaling_and_compositing(photo: str, prefix: str) -> dict[str, Any]:
    """The nodes the rich presets brought, each on its own and saved under ``prefix/<name>``:
    ImageScale (centre crop, one side 0), ImageScaleToMaxDimension (wide and tall),
    EmptyImage, ImageFromBatch (and its clamping), ImageCompositeMasked (placed, masked,
    resized source) and ImageBlend's signed difference and ComfyUI's soft light."""

    def node(kind: str, **inputs: Any) -> dict[str, Any]:
        return {"class_type": kind, "inputs": inputs}

    def empty(width: int, height: int, colour: int, batch: int = 1) -> dict[str, Any]:
        return node("EmptyImage", width=width, height=height, batch_size=batch, color=colour)

    def scale(width: int, height: int, method: str, crop: str) -> dict[str, Any]:
        return node(
            "ImageScale",
            image=["1", 0],
            upscale_method=method,
            width=width,
            height=height,
            crop=crop,
        )

    def composite(destination: str, source: str, **inputs: Any) -> dict[str, Any]:
        return node(
            "ImageCompositeMasked", destination=[destination, 0], source=[source, 0], **inputs
        )

    nodes = {
        "1": node("LoadImage", image=photo),
        "scaled": scale(30, 30, "bilinear", "center"),
        "by_height": scale(0, 20, "nearest-exact", "disabled"),
        "tall": scale(20, 50, "area", "center"),  # the middle stripe only
        "max_tall": node(
            "ImageScaleToMaxDimension", image=["tall", 0], upscale_method="lanczos", largest_size=25
        ),
        "max_wide": node(
            "ImageScaleToMaxDimension", image=["1", 0], upscale_method="bilinear", largest_size=45
        ),
        "empty": empty(16, 12, 0x336699, batch=3),
        "invert": node("ImageInvert", image=["1", 0]),
        "batch": node("ImageBatch", image1=["1", 0], image2=["invert", 0]),
        "repeat": node("RepeatImageBatch", image=["batch", 0], amount=2),
        "pick": node("ImageFromBatch", image=["repeat", 0], batch_index=1, length=2),
        "clamped": node("ImageFromBatch", image=["repeat", 0], batch_index=9, length=5),
        "pasted": composite("empty", "1", x=4, y=2, resize_source=False),
        "white": empty(60, 40, 0xFFFFFF),
        "half": empty(4, 4, 0x800000),
        "half_mask": node("ImageToMask", image=["half", 0], channel="red"),
        "masked": composite("1", "white", x=0, y=0, resize_source=False, mask=["half_mask", 0]),
        "resized": composite("empty", "1", x=0, y=0, resize_source=True),
        "grey": empty(8, 8, 0x646464),
        "difference": node(
            "ImageBlend",
            image1=["1", 0],
            image2=["grey", 0],
            blend_factor=0.5,
            blend_mode="difference",
        ),
        "light": empty(8, 8, 0xC0C0C0),
        "soft_light": node(
            "ImageBlend",
            image1=["1", 0],
            image2=["light", 0],
            blend_factor=1.0,
            blend_mode="soft_light",
        ),
    }
    steps = {
        "1",
        "tall",
        "invert",
        "batch",
        "repeat",
        "white",
        "half",
        "half_mask",
        "grey",
        "light",
    }
    for name in [n for n in nodes if n not in steps]:  # save the others
        nodes[f"save_{name}"] = node(
            "SaveImage", images=[name, 0], filename_prefix=f"{prefix}/{name}"
        )
    return nodes


# (node, image of its batch, pixel) -> colour, as ComfyUI 0.3.64 computes it
SCALING_AND_COMPOSITING_PIXELS = {
    ("scaled", 0, (2, 15)): STRIPES[0],  # the centre crop keeps half of the outer stripes
    ("scaled", 0, (15, 15)): STRIPES[1],
    ("scaled", 0, (27, 15)): STRIPES[2],
    ("by_height", 0, (29, 19)): STRIPES[2],
    ("max_tall", 0, (0, 0)): STRIPES[1],
    ("max_tall", 0, (9, 24)): STRIPES[1],
    ("max_wide", 0, (44, 29)): STRIPES[2],
    ("empty", 2, (15, 11)): GREY_BLUE,
    ("pick", 0, (0, 0)): (54, 255, 255),  # the negative, then the photo
    ("pick", 1, (0, 0)): STRIPES[0],
    ("clamped", 0, (0, 0)): (54, 255, 255),  # the last image of the batch
    ("pasted", 1, (3, 1)): GREY_BLUE,  # the photo's corner at (4, 2), cut at the border
    ("pasted", 1, (4, 2)): STRIPES[0],
    ("pasted", 2, (15, 11)): STRIPES[0],
    ("masked", 0, (5, 5)): (227, 128, 128),  # halfway to white: mask 128/255
    ("masked", 0, (55, 5)): (128, 128, 227),
    ("resized", 0, (1, 6)): (199, 0, 0),  # the photo shrunk to the destination's 16x12
    ("resized", 0, (8, 6)): (0, 199, 0),
    ("resized", 0, (14, 6)): STRIPES[2],
    ("difference", 0, (5, 5)): (150, 0, 0),  # a - 0.5 * b, clamped (not |a - b|)
    ("soft_light", 0, (5, 5)): (213, 0, 0),  # 0.784 + (2 * 0.753 - 1) * (sqrt(0.784) - 0.784)
}
SCALING_AND_COMPOSITING_SIZES = {
    "scaled": [(30, 30)],
    "by_height": [(30, 20)],
    "max_tall": [(10, 25)],
    "max_wide": [(45, 30)],
    "empty": [(16, 12)] * 3,
    "pick": [(60, 40)] * 2,
    "clamped": [(60, 40)],
    "pasted": [(16, 12)] * 3,
    "masked": [(60, 40)],
    "resized": [(16, 12)] * 3,
    "difference": [(60, 40)],
    "soft_light": [(60, 40)],
}


async def test_scaling_batch_and_composite_nodes_behave_as_comfyui(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    name = await upload(client, stripes_png())
    outputs = (await execute(comfy, scaling_and_compositing(name, "nodes")))["outputs"]
    saved: dict[str, list[Image.Image]] = {}
    for node_id, output in outputs.items():
        saved[node_id.removeprefix("save_")] = [
            image_of(await view(comfy, file)).convert("RGB") for file in output["images"]
        ]
    assert {k: [i.size for i in v] for k, v in saved.items()} == SCALING_AND_COMPOSITING_SIZES
    for (node_id, index, xy), colour in SCALING_AND_COMPOSITING_PIXELS.items():
        assert near(saved[node_id][index].getpixel(xy), colour, 1), (node_id, index, xy)
