"""Preview frames from a real ComfyUI 0.3.64 (CPU), read by ComfyUIClient.wait(on_preview=...).

Samplers preview only with model files, which this machine lacks; but ComfyUI ships one
model-free node that sends images down the same path: ``SaveImageWebsocket``
(custom_nodes/websocket_image_save.py, loaded by default) hands each image of its batch to the
progress hook as a PNG preview, whatever ``--preview-method`` says. So the real server's frames,
their format with ``supports_preview_metadata`` and the per-prompt filtering are checked here;
the JPEG frames of ``--preview-method`` come through the same code (server.py
``send_image_with_metadata``).
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from comfygram.comfyui import ComfyUIClient
from tests import images
from tests.real_comfyui import RealComfyUI, blocker, real_comfyui

__all__ = ["real_comfyui"]  # the fixture, imported for pytest
pytestmark = pytest.mark.real_comfyui


@pytest.fixture
async def client(real_comfyui: RealComfyUI) -> AsyncIterator[ComfyUIClient]:
    async with ComfyUIClient(real_comfyui.url, f"test-{uuid.uuid4().hex}", timeout=10) as c:
        yield c


def previewing_workflow(image: str, amount: int) -> dict:
    """The photo repeated ``amount`` times, sent as previews, and saved once (a history)."""
    prefix = f"previews/{uuid.uuid4().hex[:10]}"
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": amount}},
        "3": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def colour(data: bytes) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.size == (48, 32)
        return image.convert("RGB").getpixel((10, 10))


async def test_wait_gets_this_prompts_preview_frames_from_the_real_server(
    client: ComfyUIClient, real_comfyui: RealComfyUI
):
    dark = await client.upload_image(images.png(48, 32, (20, 30, 40)), f"{uuid.uuid4().hex}.png")
    light = await client.upload_image(
        images.png(48, 32, (220, 230, 240)), f"{uuid.uuid4().hex}.png"
    )
    seen: list[bytes] = []

    async def on_preview(image: bytes) -> None:
        seen.append(image)

    # Both prompts wait behind a blocker (about 2 s), so the socket is open before they run.
    await client.submit(blocker(nodes=6), str(uuid.uuid4()))
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    await client.submit(previewing_workflow(dark, 2), first)
    await client.submit(previewing_workflow(light, 3), second)
    waiting = asyncio.create_task(
        client.wait(second, deadline=time.monotonic() + 60, on_preview=on_preview)
    )
    await waiting
    # Three frames of the second prompt; none of the first's two, run on the same socket.
    assert [colour(image) for image in seen] == [(220, 230, 240)] * 3
