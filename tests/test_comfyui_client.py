"""ComfyUIClient against ComfyUIDouble (a loopback server answering like ComfyUI 0.3.64)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfygram import comfyui
from comfygram.comfyui import (
    ComfyUIClient,
    ComfyUIError,
    ComfyUIUnavailable,
    ExecutionFailed,
    OutputImage,
    PromptInterrupted,
    PromptRejected,
    PromptTimeout,
    explain_rejection,
    parse_preview,
)
from tests.doubles.comfyui import ComfyUIDouble, preview_frame, preview_with_metadata


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


def png(color: tuple[int, int, int] = (200, 80, 40), size: tuple[int, int] = (16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def invert_workflow(image: str, prefix: str = "jobs/inv") -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


async def submit_invert(client: ComfyUIClient, color=(200, 80, 40)) -> str:
    name = await client.upload_image(png(color), f"{uuid.uuid4().hex}.png")
    prompt_id = str(uuid.uuid4())
    await client.submit(invert_workflow(name), prompt_id)
    return prompt_id


async def wait_until_running(client: ComfyUIClient, prompt_id: str) -> None:
    async with asyncio.timeout(5):
        while prompt_id not in (await client.queue())[0]:
            await asyncio.sleep(0.01)


async def test_system_stats_parsed(client: ComfyUIClient) -> None:
    stats = await client.system_stats()
    assert stats.version == "0.3.64"
    assert stats.devices[0].name == "cpu"
    assert stats.devices[0].type == "cpu"
    assert stats.devices[0].vram_total == 25276502016
    assert stats.devices[0].vram_free == 24048091136


async def test_upload_submit_wait_download_inverts(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    name = await client.upload_image(png((200, 80, 40)), "in.png")
    assert name == "in.png"
    prompt_id = str(uuid.uuid4())
    number = await client.submit(invert_workflow(name), prompt_id)
    assert isinstance(number, int)
    assert comfy.prompts_received[-1]["prompt_id"] == prompt_id
    assert comfy.prompts_received[-1]["client_id"] == client.client_id

    images = await client.wait(prompt_id, deadline=soon())
    assert images == [OutputImage("inv_00001_.png", "jobs", "output", node="3")]
    assert (await client.history(prompt_id))["prompt"][1] == prompt_id  # our own id is used
    result = Image.open(io.BytesIO(await client.download(images[0])))
    assert result.size == (16, 12)
    # as the real ComfyUI: float32 and truncated, so 200 inverts to 54 (test_real_comfyui_double)
    assert result.convert("RGB").getpixel((3, 3)) == (54, 175, 215)


async def test_every_saved_file_comes_back_with_its_node_and_whether_it_moves(
    client: ComfyUIClient,
) -> None:
    """As ComfyUI 0.3.64 reports them: a batch as one file per image, a video and an animation
    under ``images`` too, flagged ``animated``."""
    name = await client.upload_image(png((10, 20, 30), (16, 12)), "rich.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "r/b"}},
        "5": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": 2.0}},
        "6": {
            "class_type": "SaveVideo",
            "inputs": {
                "video": ["5", 0],
                "filename_prefix": "r/v",
                "format": "mp4",
                "codec": "h264",
            },
        },
        "7": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {
                "images": ["3", 0],
                "filename_prefix": "r/a",
                "fps": 2.0,
                "lossless": False,
                "quality": 80,
                "method": "default",
            },
        },
    }
    prompt_id = str(uuid.uuid4())
    await client.submit(prompt, prompt_id)
    saved = await client.wait(prompt_id, deadline=soon())
    assert sorted(saved, key=lambda o: o.filename) == [
        OutputImage("a_00001_.webp", "r", "output", node="7", animated=True),
        OutputImage("b_00001_.png", "r", "output", node="4"),
        OutputImage("b_00002_.png", "r", "output", node="4"),
        OutputImage("v_00001_.mp4", "r", "output", node="6", animated=True),
    ]


async def test_the_socket_offers_no_compression(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    """ComfyUI (aiohttp) takes permessage-deflate when offered and would then compress every
    message on its event loop, preview frames that are JPEG already included."""
    prompt_id = await submit_invert(client)
    await client.wait(prompt_id, deadline=soon())
    assert comfy.socket_extension_offers == [None]


async def test_upload_into_subfolder_names_it(client: ComfyUIClient) -> None:
    name = await client.upload_image(png(), "sub.png", subfolder="jobs")
    assert name == "jobs/sub.png"
    prompt_id = str(uuid.uuid4())
    await client.submit(invert_workflow(name), prompt_id)
    assert len(await client.wait(prompt_id, deadline=soon())) == 1


async def test_progress_increases_to_100(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    comfy.execution_delay = 0.04
    seen: list[int] = []

    async def on_progress(percent: int) -> None:
        seen.append(percent)

    comfy.pause()  # hold the prompt until wait() has its socket: no message is missed
    prompt_id = await submit_invert(client)
    waiting = asyncio.create_task(
        client.wait(prompt_id, deadline=soon(), on_progress=on_progress, quiet_poll=1.0)
    )
    async with asyncio.timeout(5):
        await comfy.socket_connected(client.client_id)
    comfy.resume()
    await waiting
    assert seen, "no progress reported"
    assert seen == [25, 50, 75, 100]  # the first node's progress; later nodes never go back


async def test_silent_websocket_completes_by_polling(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    comfy.drop_websocket_messages = True
    comfy.execution_delay = 0.05
    prompt_id = await submit_invert(client)
    started = time.monotonic()
    images = await client.wait(prompt_id, deadline=soon(), quiet_poll=0.2)
    assert len(images) == 1
    assert time.monotonic() - started < 1.5  # a few quiet_poll intervals


async def test_history_written_late_after_execution_success(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    comfy.history_write_delay = 0.2
    prompt_id = await submit_invert(client)
    images = await client.wait(prompt_id, deadline=soon(), quiet_poll=2.0)
    assert len(images) == 1


async def test_a_prompt_heard_from_its_start_needs_no_history(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    """The socket heard the prompt start and each save node's files: its outputs are those,
    without waiting for the history (written a second late here)."""
    comfy.execution_delay = 0.2
    blocker = await submit_invert(client, (1, 2, 3))  # ours waits behind it, socket connected
    prompt_id = await submit_invert(client)
    comfy.history_write_delay = 1.0
    images = await client.wait(prompt_id, deadline=soon(), quiet_poll=2.0)
    assert await client.history(prompt_id) is None  # not written yet: the socket told it all
    assert [image.type for image in images] == ["output"]
    async with asyncio.timeout(5):
        while (entry := await client.history(prompt_id)) is None:
            await asyncio.sleep(0.05)
    assert images == comfyui._outcome(prompt_id, entry)  # the same files the history lists
    assert blocker != prompt_id


async def test_the_next_wait_hears_its_prompt_start_on_the_socket_left_open(
    comfy: ComfyUIDouble, client: ComfyUIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's waits follow one another; the next prompt starts as the previous ends,
    before its wait begins. The socket the first wait leaves open has queued that start and
    its files, so the second asks ComfyUI nothing: neither its queue at the start nor the
    history (written a second late here) at the end."""
    comfy.execution_delay = 0.1
    first = await submit_invert(client, (1, 2, 3))
    second = await submit_invert(client)
    assert len(await client.wait(first, deadline=soon(), quiet_poll=2.0)) == 1
    comfy.history_write_delay = 1.0  # for the second, still running
    await wait_until_running(client, second)  # it started before its wait: nothing lost
    asked: list[str] = []
    monkeypatch.setattr(client, "history", lambda *a: asked.append("history"))
    monkeypatch.setattr(client, "queue", lambda *a: asked.append("queue"))
    images = await client.wait(second, deadline=soon(), quiet_poll=2.0)
    monkeypatch.undo()
    assert asked == []  # the socket had heard it start: ComfyUI was asked nothing
    assert await client.history(second) is None
    assert [image.type for image in images] == ["output"]


async def test_a_socket_no_wait_takes_is_closed(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    prompt_id = await submit_invert(client)
    assert len(await client.wait(prompt_id, deadline=soon(), quiet_poll=2.0)) == 1
    assert comfy.has_socket(client.client_id)  # left open for a next wait
    async with asyncio.timeout(3):  # KEEP_SOCKET_SECONDS and the close
        while comfy.has_socket(client.client_id):
            await asyncio.sleep(0.05)


async def test_a_socket_that_missed_the_start_asks_the_history(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    comfy.execution_delay = 0.3
    comfy.history_write_delay = 0.3
    prompt_id = await submit_invert(client)
    await wait_until_running(client, prompt_id)  # its execution_start went before any socket
    started = time.monotonic()
    images = await client.wait(prompt_id, deadline=soon(), quiet_poll=2.0)
    assert len(images) == 1
    assert await client.history(prompt_id) is not None
    assert time.monotonic() - started >= 0.3  # it waited for the history to be written


async def test_finished_before_wait_is_found_in_history(client: ComfyUIClient) -> None:
    prompt_id = await submit_invert(client)
    async with asyncio.timeout(5):
        while await client.history(prompt_id) is None:
            await asyncio.sleep(0.01)
    assert len(await client.wait(prompt_id, deadline=soon())) == 1


async def test_unknown_prompt_vanished(client: ComfyUIClient) -> None:
    with pytest.raises(ComfyUIError, match="vanished"):
        await client.wait("never-submitted", deadline=soon(), quiet_poll=0.2)


async def test_server_stopped_mid_job_is_unavailable(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    comfy.execution_delay = 1.0
    prompt_id = await submit_invert(client)
    waiting = asyncio.create_task(client.wait(prompt_id, deadline=soon(), quiet_poll=0.2))
    await wait_until_running(client, prompt_id)
    await comfy.stop()
    with pytest.raises(ComfyUIUnavailable):
        await waiting
    with pytest.raises(ComfyUIUnavailable):
        await client.system_stats()
    await comfy.start()  # same port, empty queue and history: the prompt is gone
    assert (await client.system_stats()).version == "0.3.64"
    with pytest.raises(ComfyUIError, match="vanished"):
        await client.wait(prompt_id, deadline=soon(), quiet_poll=0.2)


async def test_unknown_node_is_rejected_clearly(client: ComfyUIClient) -> None:
    workflow = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    with pytest.raises(PromptRejected) as caught:
        await client.submit(workflow, str(uuid.uuid4()))
    assert caught.value.message == (
        "ComfyUI rejected the workflow: Cannot execute because node NoSuchNode does not exist "
        "(Node ID '#1')."
    )
    assert caught.value.body["error"]["type"] == "invalid_prompt"


async def test_missing_input_image_is_rejected(client: ComfyUIClient) -> None:
    with pytest.raises(PromptRejected) as caught:
        await client.submit(invert_workflow("does_not_exist.png"), str(uuid.uuid4()))
    assert "does_not_exist.png" in caught.value.message
    assert "node 1 (LoadImage)" in caught.value.message


# The recorded 400 body of ComfyUI 0.3.64 for a LoadImage of a file that is not there.
RECORDED_MISSING_IMAGE = {
    "error": {
        "type": "prompt_outputs_failed_validation",
        "message": "Prompt outputs failed validation",
        "details": "",
        "extra_info": {},
    },
    "node_errors": {
        "1": {
            "errors": [
                {
                    "type": "custom_validation_failed",
                    "message": "Custom validation failed for node",
                    "details": "image - Invalid image file: does_not_exist.png",
                    "extra_info": {"input_name": "image"},
                }
            ],
            "dependent_outputs": ["3"],
            "class_type": "LoadImage",
        }
    },
}


def missing_checkpoint(input_config: object, installed: str) -> dict:
    """value_not_in_list as ComfyUI's execution.validate_inputs builds it."""
    return {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {
            "4": {
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": f"ckpt_name: 'flux-kontext.safetensors' not in {installed}",
                        "extra_info": {
                            "input_name": "ckpt_name",
                            "input_config": input_config,
                            "received_value": "flux-kontext.safetensors",
                        },
                    }
                ],
                "dependent_outputs": ["9"],
                "class_type": "CheckpointLoaderSimple",
            }
        },
    }


def test_explain_missing_input_image() -> None:
    assert explain_rejection(RECORDED_MISSING_IMAGE) == (
        "ComfyUI rejected the workflow: node 1 (LoadImage) cannot find the input image "
        "'does_not_exist.png' (not uploaded, or deleted)."
    )


@pytest.mark.parametrize(
    "input_config",
    [
        [["sd15.safetensors", "sdxl.safetensors"], {}],
        ["COMBO", {"options": ["sd15.safetensors", "sdxl.safetensors"]}],
        None,  # not sent back: the list is read from details
    ],
)
def test_explain_missing_model_names_file_and_installed(input_config: object) -> None:
    body = missing_checkpoint(input_config, "['sd15.safetensors', 'sdxl.safetensors']")
    assert explain_rejection(body) == (
        "ComfyUI rejected the workflow: node 4 (CheckpointLoaderSimple) needs the model file "
        "'flux-kontext.safetensors' (ckpt_name), which is not installed; installed: "
        "'sd15.safetensors', 'sdxl.safetensors'."
    )


def test_explain_missing_model_among_many() -> None:
    body = missing_checkpoint(None, "(list of length 42)")
    message = explain_rejection(body)
    assert "'flux-kontext.safetensors'" in message
    assert "not among the 42 installed files" in message


def test_explain_missing_model_with_none_installed() -> None:
    message = explain_rejection(missing_checkpoint([[], {}], "[]"))
    assert message.endswith("which is not installed; installed: none.")


async def test_runtime_error_is_execution_failed(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    comfy.fail_next_with(
        "torch.OutOfMemoryError", "Allocation on device 0 would exceed allowed memory."
    )
    prompt_id = await submit_invert(client)
    with pytest.raises(ExecutionFailed) as caught:
        await client.wait(prompt_id, deadline=soon())
    failure = caught.value
    assert failure.prompt_id == prompt_id
    assert (failure.node_id, failure.node_type) == ("2", "ImageInvert")
    assert failure.exception_type == "torch.OutOfMemoryError"
    assert failure.out_of_memory


async def test_non_image_fails_at_run_time(client: ComfyUIClient) -> None:
    name = await client.upload_image(b"not an image", "bad.png")
    prompt_id = str(uuid.uuid4())
    await client.submit(invert_workflow(name), prompt_id)
    with pytest.raises(ExecutionFailed) as caught:
        await client.wait(prompt_id, deadline=soon())
    assert caught.value.exception_type == "PIL.UnidentifiedImageError"
    assert caught.value.node_type == "LoadImage"
    assert not caught.value.out_of_memory


async def test_runtime_error_found_by_polling(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    comfy.drop_websocket_messages = True
    comfy.fail_next_with("RuntimeError", "boom")
    prompt_id = await submit_invert(client)
    with pytest.raises(ExecutionFailed, match="boom"):
        await client.wait(prompt_id, deadline=soon(), quiet_poll=0.2)


async def test_interrupt_stops_our_running_prompt(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    comfy.execution_delay = 1.0
    prompt_id = await submit_invert(client)
    waiting = asyncio.create_task(client.wait(prompt_id, deadline=soon()))
    await wait_until_running(client, prompt_id)
    await client.interrupt("someone-else")  # not running: no effect
    await client.interrupt(prompt_id)
    with pytest.raises(PromptInterrupted):
        await waiting
    assert (await client.history(prompt_id))["status"]["status_str"] == "error"
    assert await client.queue() == ([], [])


async def test_delete_queued(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    comfy.execution_delay = 0.5
    first = await submit_invert(client)
    second = await submit_invert(client)
    await wait_until_running(client, first)
    assert await client.queue() == ([first], [second])
    await client.delete_queued([second])
    assert await client.queue() == ([first], [])
    await client.interrupt(first)


async def test_deadline_passes(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    comfy.execution_delay = 2.0
    prompt_id = await submit_invert(client)
    started = time.monotonic()
    with pytest.raises(PromptTimeout) as caught:
        await client.wait(prompt_id, deadline=soon(0.3), quiet_poll=0.1)
    assert isinstance(caught.value, asyncio.TimeoutError)
    assert 0.25 < time.monotonic() - started < 2.0
    await client.interrupt(prompt_id)


async def test_the_deadline_holds_when_its_cancellation_is_lost(
    comfy: ComfyUIDouble, client: ComfyUIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11 a cancellation that lands as a message arrives could be swallowed
    (asyncio.wait_for did), and a timed-out job ran on to success. Here wait()'s own timeout
    is lost outright: the socket's reader still ends the wait at the deadline."""
    real_timeout = asyncio.timeout
    outer: list[float | None] = []

    def lost_first(delay: float | None) -> Any:
        if not outer:  # wait()'s timeout: it never fires
            outer.append(delay)
            return contextlib.nullcontext()
        return real_timeout(delay)

    comfy.execution_delay = 0.5  # progress messages every 0.125 s, done after 1.5 s
    prompt_id = await submit_invert(client)
    monkeypatch.setattr(comfyui.asyncio, "timeout", lost_first)
    started = time.monotonic()
    with pytest.raises(PromptTimeout):
        await client.wait(prompt_id, deadline=soon(0.4), quiet_poll=2.0)
    monkeypatch.undo()
    assert outer and time.monotonic() - started < 1.2
    await client.interrupt(prompt_id)


async def test_socket_that_cannot_connect_falls_back_to_polling(
    comfy: ComfyUIDouble, client: ComfyUIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_socket(open_timeout: float) -> None:
        return None

    monkeypatch.setattr(client, "_connect", no_socket)
    prompt_id = await submit_invert(client)
    assert len(await client.wait(prompt_id, deadline=soon(), quiet_poll=0.1)) == 1


async def test_object_info_and_free(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    await client.upload_image(png(), "listed.png")
    info = await client.object_info()
    assert "listed.png" in info["LoadImage"]["input"]["required"]["image"][0]
    assert await client.object_info("NoSuchNode") == {}
    await client.free()
    assert comfy.free_calls == [{"unload_models": True, "free_memory": True}]


async def test_unreachable_server_is_unavailable(tmp_path: Path) -> None:
    double = ComfyUIDouble(tmp_path)
    await double.start()
    url = double.url
    await double.stop()
    async with ComfyUIClient(url, "x", timeout=1.0) as c:
        with pytest.raises(ComfyUIUnavailable):
            await c.system_stats()
        with pytest.raises(ComfyUIUnavailable):
            await c.submit(invert_workflow("a.png"), "p")


# -- preview frames -----------------------------------------------------------------------------


def jpeg_of(image: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(image)) as opened:
        assert opened.format == "JPEG"
        return opened.size


def test_preview_frame_without_metadata_is_parsed() -> None:
    # Built as ComfyUI's send_image does: event 1, image type 1 (JPEG), the JPEG.
    frame = preview_frame(Image.new("RGB", (40, 30), (10, 20, 30)))
    preview = parse_preview(frame)
    assert preview is not None
    assert (preview.mime, preview.prompt_id) == ("image/jpeg", None)
    assert jpeg_of(preview.image) == (512, 384)  # fitted to --preview-size as ComfyUI does


def test_preview_frame_with_metadata_names_its_prompt() -> None:
    metadata = {"node_id": "3", "prompt_id": "p-1", "display_node_id": "3"}
    frame = preview_with_metadata(Image.new("RGB", (20, 10)), metadata)
    preview = parse_preview(frame)
    assert preview is not None
    assert (preview.mime, preview.prompt_id) == ("image/jpeg", "p-1")
    assert jpeg_of(preview.image) == (512, 256)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00\x00\x00\x01",  # cut before the image type
        struct.pack(">II", 1, 1),  # no image
        struct.pack(">II", 1, 7) + b"data",  # an unknown image type
        struct.pack(">II", 2, 0) + b"raw",  # UNENCODED_PREVIEW_IMAGE: not ours to show
        struct.pack(">II", 3, 4) + b"text",  # TEXT
        struct.pack(">II", 4, 100) + b"{}",  # metadata longer than the frame
        struct.pack(">II", 4, 3) + b"{x}" + b"jpeg",  # metadata not JSON
        struct.pack(">II", 4, 2) + b"[]" + b"jpeg",  # metadata not an object
        struct.pack(">II", 4, 2) + b"{}",  # no image after the metadata
        struct.pack(">II", 4, 27) + b'{"image_type": "image/tga"}' + b"x",
    ],
)
def test_other_or_broken_frames_are_no_preview(frame: bytes) -> None:
    assert parse_preview(frame) is None


async def run_two_prompts(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> tuple[list[bytes], str, str]:
    """Two prompts of this client run one after the other while wait() follows the second;
    what its on_preview got, and both prompt ids."""
    comfy.previews = True
    comfy.cache_enabled = False
    comfy.execution_delay = 0.1  # still running when wait() first asks /history
    seen: list[bytes] = []

    async def on_preview(image: bytes) -> None:
        seen.append(image)

    comfy.pause()
    first = await submit_invert(client, (10, 10, 10))
    second = await submit_invert(client, (250, 250, 250))
    waiting = asyncio.create_task(client.wait(second, deadline=soon(), on_preview=on_preview))
    async with asyncio.timeout(5):
        await comfy.socket_connected(client.client_id)
    comfy.resume()
    await waiting
    return seen, first, second


def shade(image: bytes) -> int:
    with Image.open(io.BytesIO(image)) as opened:
        return opened.convert("L").getpixel((0, 0))


async def test_wait_shows_only_its_own_prompts_previews(
    comfy: ComfyUIDouble, client: ComfyUIClient
) -> None:
    seen, _, _ = await run_two_prompts(comfy, client)
    # The client offered supports_preview_metadata, so the frames name their prompt (the
    # first may beat the offer to the server: a plain frame, told apart by "executing") ...
    assert len(comfy.previews_sent) == 4 and comfy.previews_sent[-1][1] == 4
    # ... and only the second prompt's two frames (of its light photo) reach the callback.
    assert len(seen) == 2
    assert all(shade(image) > 200 for image in seen)


async def test_frames_without_metadata_count_only_while_this_prompt_executes(
    comfy: ComfyUIDouble, client: ComfyUIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that does not take the offer (as before ComfyUI's preview metadata) sends
    # plain PREVIEW_IMAGE frames: they are ours only between our "executing" and its end.
    monkeypatch.setattr(comfyui, "_FEATURE_FLAGS", json.dumps({"type": "hello", "data": {}}))
    seen, _, _ = await run_two_prompts(comfy, client)
    assert [kind for _, kind in comfy.previews_sent] == [1, 1, 1, 1]
    assert len(seen) == 2
    assert all(shade(image) > 200 for image in seen)


async def test_no_callback_no_trouble(comfy: ComfyUIDouble, client: ComfyUIClient) -> None:
    comfy.previews = True
    prompt_id = await submit_invert(client)
    assert len(await client.wait(prompt_id, deadline=soon())) == 1
