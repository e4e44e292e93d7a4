"""ComfyUIClient against a real ComfyUI 0.3.64 (CPU): every path comfygram uses.

Each test uses a fresh client id, its own prompt ids and small images, so tests sharing the one
server do not see each other's messages or files.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import websockets
from PIL import Image

from comfygram.comfyui import (
    ComfyUIClient,
    ComfyUIError,
    ComfyUIUnavailable,
    ExecutionFailed,
    OutputImage,
    PromptInterrupted,
    PromptRejected,
)
from tests import images
from tests.real_comfyui import ROOT, RealComfyUI, blocker, new_prompt_id, real_comfyui
from tests.redis_server import free_port

__all__ = ["real_comfyui"]  # the fixture, imported for pytest
pytestmark = pytest.mark.real_comfyui


@pytest.fixture
async def client(real_comfyui: RealComfyUI) -> AsyncIterator[ComfyUIClient]:
    async with ComfyUIClient(real_comfyui.url, f"test-{uuid.uuid4().hex}", timeout=10) as c:
        yield c


def invert_workflow(image: str, prefix: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def soon(seconds: float = 15.0) -> float:
    return time.monotonic() + seconds


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:10]}"


async def upload(client: ComfyUIClient, color: tuple[int, int, int] = (200, 80, 40)) -> str:
    return await client.upload_image(images.png(64, 64, color), f"{unique('in')}.png")


async def test_system_stats_names_the_version_and_the_cpu(client: ComfyUIClient):
    stats = await client.system_stats()
    assert stats.version == "0.3.64"
    assert [d.type for d in stats.devices] == ["cpu"]
    assert stats.devices[0].vram_total > 0


async def test_object_info_lists_nodes_and_uploaded_images(client: ComfyUIClient):
    name = await upload(client)
    everything = await client.object_info()
    assert {"LoadImage", "ImageInvert", "SaveImage", "ImageScaleBy", "ImageBlend"} <= set(
        everything
    )
    one = await client.object_info("LoadImage")
    assert list(one) == ["LoadImage"]
    assert name in one["LoadImage"]["input"]["required"]["image"][0]
    assert await client.object_info("NoSuchNodeType") == {}


async def test_upload_renames_a_different_file_unless_told_to_overwrite(
    client: ComfyUIClient, real_comfyui: RealComfyUI
):
    filename = f"{unique('same')}.png"
    first = await client.upload_image(images.png(8, 8, (1, 2, 3)), filename)
    assert first == filename
    renamed = await client.upload_image(images.png(8, 8, (4, 5, 6)), filename, overwrite=False)
    assert renamed == filename.replace(".png", " (1).png")
    replaced = await client.upload_image(images.png(8, 8, (7, 8, 9)), filename, overwrite=True)
    assert replaced == filename
    with Image.open(real_comfyui.input_dir / filename) as stored:
        assert stored.getpixel((0, 0)) == (7, 8, 9)
    folder = unique("sub")
    nested = await client.upload_image(images.png(8, 8), "x.png", subfolder=folder)
    assert nested == f"{folder}/x.png"
    assert (real_comfyui.input_dir / folder / "x.png").is_file()


async def test_a_prompt_runs_under_our_id_and_its_image_downloads(client: ComfyUIClient):
    name = await upload(client, (200, 80, 40))
    prompt_id = new_prompt_id()
    prefix = f"comfygram/{unique('job')}-0"
    await client.submit(invert_workflow(name, prefix), prompt_id)
    outputs = await client.wait(prompt_id, deadline=soon())
    folder, _, stem = prefix.rpartition("/")
    [image] = outputs
    assert image.subfolder == folder and image.type == "output"
    assert image.filename.startswith(f"{stem}_") and image.filename.endswith(".png")
    data = await client.download(image)
    with Image.open(io.BytesIO(data)) as result:
        assert result.size == (64, 64)
        # ComfyUI works in float32 and truncates: 255 - x, or one less.
        pixel = result.convert("RGB").getpixel((10, 10))
    assert all(0 <= 255 - x - y <= 1 for x, y in zip((200, 80, 40), pixel, strict=True)), pixel

    entry = await client.history(prompt_id)
    assert entry is not None and entry["status"]["status_str"] == "success"
    _number, queued_id, _prompt, extra, _outputs = entry["prompt"]
    assert queued_id == prompt_id and extra["client_id"] == client.client_id
    assert await client.history(new_prompt_id()) is None


async def test_completion_comes_over_the_websocket(client: ComfyUIClient):
    """quiet_poll far beyond the deadline: only the socket can end the wait in time."""
    busy = new_prompt_id()
    await client.submit(blocker(nodes=3), busy)  # ours is still queued when the socket opens
    name = await upload(client)
    prompt_id = new_prompt_id()
    await client.submit(invert_workflow(name, f"comfygram/{unique('ws')}-0"), prompt_id)
    progress: list[int] = []

    async def on_progress(percent: int) -> None:
        progress.append(percent)

    started = time.monotonic()
    outputs = await client.wait(
        prompt_id, deadline=soon(20), on_progress=on_progress, quiet_poll=60
    )
    assert len(outputs) == 1 and progress[-1] == 100
    assert time.monotonic() - started < 20


async def test_execution_messages_go_only_to_the_prompts_client_id(client: ComfyUIClient):
    ws_url = client.base_url.replace("http://", "ws://") + "/ws?clientId="
    name = await upload(client)
    prompt_id = new_prompt_id()
    async with (
        websockets.connect(ws_url + client.client_id) as ours,
        websockets.connect(ws_url + uuid.uuid4().hex) as other,
    ):
        await client.submit(invert_workflow(name, f"comfygram/{unique('to')}-0"), prompt_id)
        seen: list[tuple[str, object]] = []
        async with asyncio.timeout(15):
            while ("executing", None) not in seen:
                message = json.loads(await ours.recv())
                if message["data"].get("prompt_id") == prompt_id:
                    seen.append((message["type"], message["data"].get("node", "")))
        kinds = [kind for kind, _ in seen]
        assert kinds.index("execution_start") < kinds.index("execution_success")
        assert kinds.index("execution_success") < len(kinds) - 1  # executing null comes last
        others: list[str] = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                while True:
                    message = json.loads(await other.recv())
                    if message["data"].get("prompt_id") == prompt_id:
                        others.append(message["type"])
        assert others == []


async def test_queue_delete_and_interrupt_touch_only_the_named_prompt(client: ComfyUIClient):
    busy, waiting = new_prompt_id(), new_prompt_id()
    await client.submit(blocker(nodes=20), busy)
    name = await upload(client)
    await client.submit(invert_workflow(name, f"comfygram/{unique('q')}-0"), waiting)
    async with asyncio.timeout(10):
        while (await client.queue())[0] != [busy]:
            await asyncio.sleep(0.05)
    running, pending = await client.queue()
    assert running == [busy] and waiting in pending

    await client.delete_queued([waiting])
    assert waiting not in (await client.queue())[1]
    await client.interrupt(new_prompt_id())  # not running: nothing happens
    await asyncio.sleep(0.5)
    assert (await client.queue())[0] == [busy]

    await client.interrupt(busy)
    with pytest.raises(PromptInterrupted):
        await client.wait(busy, deadline=soon())
    with pytest.raises(ComfyUIError, match="vanished"):
        await client.wait(waiting, deadline=soon())


async def test_free_is_accepted(client: ComfyUIClient):
    await client.free()
    await client.free(unload_models=False, free_memory=True)


async def test_a_missing_node_is_explained(client: ComfyUIClient):
    workflow = invert_workflow(await upload(client), "comfygram/x")
    workflow["2"]["class_type"] = "NoSuchNodeType"
    with pytest.raises(PromptRejected) as rejected:
        await client.submit(workflow, new_prompt_id())
    assert "NoSuchNodeType does not exist" in rejected.value.message
    assert rejected.value.body["error"]["type"] == "invalid_prompt"


async def test_a_missing_model_file_is_explained(client: ComfyUIClient):
    missing = f"{unique('no-such-model')}.safetensors"
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": await upload(client)}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": missing}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["2", 2]}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["2", 2]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}},
    }
    with pytest.raises(PromptRejected) as rejected:
        await client.submit(workflow, new_prompt_id())
    message = rejected.value.message
    assert "node 2 (CheckpointLoaderSimple) needs the model file" in message
    assert f"'{missing}' (ckpt_name), which is not installed" in message


async def test_a_missing_input_image_is_explained(client: ComfyUIClient):
    workflow = invert_workflow(f"{unique('gone')}.png", "comfygram/x")
    with pytest.raises(PromptRejected, match="cannot find the input image"):
        await client.submit(workflow, new_prompt_id())


async def test_a_file_that_is_no_image_fails_at_run_time(client: ComfyUIClient):
    name = await client.upload_image(b"not an image at all", f"{unique('bad')}.png")
    prompt_id = new_prompt_id()
    await client.submit(invert_workflow(name, f"comfygram/{unique('bad')}-0"), prompt_id)
    with pytest.raises(ExecutionFailed) as failed:
        await client.wait(prompt_id, deadline=soon())
    assert failed.value.node_type == "LoadImage"
    assert "UnidentifiedImageError" in failed.value.exception_type
    assert not failed.value.out_of_memory


async def test_an_identical_prompt_runs_nothing_but_a_new_prefix_saves_again(
    client: ComfyUIClient,
):
    name = await upload(client, (9, 99, 199))
    stem = unique("cache")
    first, second, third = new_prompt_id(), new_prompt_id(), new_prompt_id()
    await client.submit(invert_workflow(name, f"comfygram/{stem}-0"), first)
    [image] = await client.wait(first, deadline=soon())
    await client.submit(invert_workflow(name, f"comfygram/{stem}-0"), second)
    assert await client.wait(second, deadline=soon()) == [image]  # the old file, again
    await client.submit(invert_workflow(name, f"comfygram/{stem}-1"), third)
    [fresh] = await client.wait(third, deadline=soon())
    assert fresh.filename.startswith(f"{stem}-1_")


async def test_downloading_a_missing_file_is_an_error(client: ComfyUIClient):
    with pytest.raises(ComfyUIError, match="404"):
        await client.download(OutputImage(f"{unique('none')}.png", "comfygram", "output"))


async def test_no_server_on_the_port_is_unavailable():
    async with ComfyUIClient(f"http://127.0.0.1:{free_port()}", "nobody", timeout=2) as client:
        with pytest.raises(ComfyUIUnavailable):
            await client.system_stats()


@pytest.mark.parametrize(
    ("environment", "outcome"),
    [
        ({}, "1 skipped"),
        ({"COMFYGRAM_REQUIRE_COMFYUI": "1"}, "1 error"),
        ({"CI": "true"}, "1 error"),
    ],
)
def test_without_the_shared_folder_it_skips_here_and_fails_in_ci(
    tmp_path, environment: dict[str, str], outcome: str
):
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "COMFYGRAM_REQUIRE_COMFYUI")}
    env.update(environment, COMFYUI_SHARED_DIR=str(tmp_path / "no-such-folder"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rsf",
            f"{__file__}::test_system_stats_names_the_version_and_the_cpu",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert outcome in result.stdout, result.stdout + result.stderr
    assert f"{tmp_path / 'no-such-folder'}/install not found" in result.stdout


async def test_the_extension_freezes_start_up_objects_and_full_collections_get_short(
    client: ComfyUIClient,
):
    """comfygram's ComfyUI extension (comfyui/custom_nodes/comfygram_gc_freeze), which the test
    server loads: frozen at the first prompt, ComfyUI's full collections then take a fraction
    of the one before."""
    name = await upload(client)
    prompt_id = new_prompt_id()
    await client.submit(invert_workflow(name, f"comfygram/{unique('gc')}"), prompt_id)
    await client.wait(prompt_id, deadline=soon(30))
    # ComfyUI's prompt loop collects 10 s after its last prompt at the latest.
    deadline = soon(30)
    while True:
        state = await client.gc_state()
        assert state is not None, "comfygram's extension is not loaded"
        if state["full_collections_ms"]:
            break
        assert time.monotonic() < deadline, f"no full collection within 30 s: {state}"
        await asyncio.sleep(0.5)
    assert state["frozen"] > 100_000, state  # torch and ComfyUI's modules
    assert state["tracked"] < state["frozen"] / 10, state
    before = state["full_collection_before_freeze_ms"]
    assert max(state["full_collections_ms"]) < before / 5, state
