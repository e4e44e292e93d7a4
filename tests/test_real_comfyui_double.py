"""The ComfyUI double (tests/doubles/comfyui.py) against the real ComfyUI 0.3.64: the same
requests get the same answers. Where they differ, the real server is right and the double is
fixed. Values that differ by nature (timestamps, queue numbers, tracebacks, file lists) are
normalised away.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from PIL import Image

from comfygram.presets import BUILTIN_DIR, load_preset
from comfygram.worker import workflow
from tests import images
from tests.doubles.comfyui import MP4_STANDIN_MARKER, ComfyUIDouble, read_mp4_standin
from tests.real_comfyui import COMFYUI_HOME, RealComfyUI, real_comfyui

__all__ = ["real_comfyui"]  # the fixture, imported for pytest
pytestmark = pytest.mark.real_comfyui


@pytest.fixture
async def servers(
    real_comfyui: RealComfyUI, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """(real, double) HTTP clients."""
    async with (
        ComfyUIDouble(tmp_path / "double") as double,
        httpx.AsyncClient(base_url=real_comfyui.url, timeout=10) as real,
        httpx.AsyncClient(base_url=double.url, timeout=10) as fake,
    ):
        yield real, fake


async def upload(client: httpx.AsyncClient, name: str, data: bytes) -> httpx.Response:
    files = {"image": (name, data, "image/png")}
    return await client.post("/upload/image", files=files, data={"overwrite": "true"})


def invert(image: str, prefix: str = "parity/x") -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def without_file_lists(info: dict[str, Any]) -> dict[str, Any]:
    """object_info with the uploaded-image and model-file lists emptied (they differ by disk)."""
    info = json.loads(json.dumps(info))
    for node in info.values():
        for section in node["input"].values():
            for name, config in section.items():
                if (name == "image" or name.endswith("_name")) and isinstance(config[0], list):
                    config[0] = []
    return info


async def test_object_info_of_every_node_the_double_knows_matches(servers):
    real, fake = servers
    double_info = without_file_lists((await fake.get("/object_info")).json())
    real_info = without_file_lists((await real.get("/object_info")).json())
    assert set(double_info) <= set(real_info)
    if "VAELoader" in double_info:  # pixel_space is not a file: it stays on both sides
        for info in (double_info, real_info):
            info["VAELoader"]["input"]["required"]["vae_name"][0] = []
    for name, entry in double_info.items():
        assert entry == real_info[name], name
        assert list(entry) == list(real_info[name]), f"{name}: key order"


def normalised(body: Any) -> Any:
    """A JSON body with tracebacks (paths and line numbers of the real install) dropped, and a
    node's errors sorted: ComfyUI checks a node's inputs in set order, which changes with each
    process's hash seed."""
    if isinstance(body, list):
        return [normalised(v) for v in body]
    if not isinstance(body, dict):
        return body
    result = {}
    for key, value in body.items():
        if key == "traceback":
            value = "…"
        elif key == "errors" and isinstance(value, list):
            value = sorted(value, key=as_text)
        result[key] = normalised(value)
    return result


def as_text(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True)


BAD_PROMPTS: dict[str, dict[str, Any]] = {
    "missing image": invert("parity-missing.png"),
    "unknown node": {
        **invert("parity.png"),
        "2": {"class_type": "NoSuchNodeType", "inputs": {"image": ["1", 0]}},
    },
    "no outputs": {"1": {"class_type": "LoadImage", "inputs": {"image": "parity.png"}}},
    "value not in list and too big": {
        **invert("parity.png"),
        "2": {
            "class_type": "ImageScaleBy",
            "inputs": {"image": ["1", 0], "upscale_method": "sideways", "scale_by": 99},
        },
    },
    "required input missing": {
        **invert("parity.png"),
        "2": {"class_type": "ImageInvert", "inputs": {}},
    },
    "link to a missing slot": {
        **invert("parity.png"),
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 5]}},
    },
    "link to a missing node": {
        **invert("parity.png"),
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["7", 0]}},
    },
    "wrong link type": {
        **invert("parity.png"),
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 1]}},
    },
    "not a number": {
        **invert("parity.png"),
        "2": {
            "class_type": "ImageSharpen",
            "inputs": {"image": ["1", 0], "sharpen_radius": "abc", "sigma": 1.0, "alpha": 0.5},
        },
    },
    "missing model file": {
        **invert("parity.png"),
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "parity.ckpt"}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["4", 2]}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "p"}},
    },
}


@pytest.mark.parametrize("case", sorted(BAD_PROMPTS))
async def test_a_rejected_prompt_gets_the_same_answer(servers, case: str):
    answers = []
    for client in servers:
        assert (await upload(client, "parity.png", images.png(8, 8))).status_code == 200
        body = {"prompt": BAD_PROMPTS[case], "client_id": "parity", "prompt_id": str(uuid.uuid4())}
        response = await client.post("/prompt", json=body)
        answers.append((response.status_code, normalised(response.json())))
    real, fake = answers
    assert real[0] == 400
    assert as_text(fake) == as_text(real)  # text: pytest shows the differing lines


async def test_upload_view_queue_and_the_small_endpoints_answer_alike(servers):
    answers = []
    for client in servers:
        uploaded = await upload(client, "parity.png", images.png(8, 8))
        view = await client.get(
            "/view", params={"filename": "parity.png", "type": "input", "subfolder": ""}
        )
        answers.append(
            [
                (uploaded.status_code, uploaded.headers["content-type"], uploaded.json()),
                (view.status_code, view.headers["content-type"], view.content),
                view.headers["content-disposition"],
                (await client.get("/view", params={"filename": "nope.png"})).status_code,
                (await client.get("/queue")).json(),
                (await client.get("/prompt")).json(),
                (await client.get("/object_info/NoSuchNodeType")).json(),
                (await client.post("/interrupt", json={"prompt_id": "x"})).status_code,
                (await client.post("/queue", json={"delete": ["x"]})).status_code,
                (await client.post("/free", json={"unload_models": True})).status_code,
                (await client.get(f"/history/{uuid.uuid4()}")).json(),
            ]
        )
    real, fake = answers
    assert fake == real


async def run_over_socket(client: httpx.AsyncClient, workflow: dict) -> tuple[list, dict]:
    """Submit on a fresh socket; (messages of the prompt as (type, node), history entry)."""
    client_id, prompt_id = uuid.uuid4().hex, str(uuid.uuid4())
    url = str(client.base_url).replace("http://", "ws://") + f"/ws?clientId={client_id}"
    async with websockets.connect(url) as ws:
        first = json.loads(await ws.recv())
        assert first["type"] == "status" and first["data"]["sid"] == client_id
        body = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
        assert (await client.post("/prompt", json=body)).status_code == 200
        seen: list[tuple[str, Any]] = []
        async with asyncio.timeout(15):
            while ("executing", None) not in seen:
                message = json.loads(await ws.recv())
                data = message["data"]
                if message["type"] != "status" and data.get("prompt_id") == prompt_id:
                    seen.append((message["type"], data.get("node", "-")))
    entry = (await client.get(f"/history/{prompt_id}")).json()[prompt_id]
    return seen, entry


def history_shape(entry: dict) -> dict:
    """The entry with its numbers, ids, names and timestamps replaced by placeholders."""
    number, _id, prompt, extra, outputs = entry["prompt"]
    messages = [
        [kind, sorted(k for k in data if k != "timestamp")]
        for kind, data in entry["status"]["messages"]
    ]
    files = [
        {k: ("…" if k == "filename" else v) for k, v in image.items()}
        for output in entry["outputs"].values()
        for image in output["images"]
    ]
    return {
        "keys": list(entry),
        "prompt": [type(number).__name__, prompt, sorted(extra), outputs],
        "outputs": {k: list(v) for k, v in entry["outputs"].items()},
        "files": files,
        "status": {k: v for k, v in entry["status"].items() if k != "messages"},
        "messages": messages,
        "meta": entry["meta"],
    }


async def test_a_prompt_sends_the_same_messages_and_leaves_the_same_history(servers):
    results = []
    photo, prefix = images.png(8, 8, (uuid.uuid4().int % 256, 1, 2)), f"parity/{uuid.uuid4()}"
    for client in servers:
        await upload(client, "parity.png", photo)
        seen, entry = await run_over_socket(client, invert("parity.png", prefix))
        results.append((seen, history_shape(entry)))
    real, fake = results
    assert fake[0] == real[0]
    assert fake[1] == real[1]


async def test_feature_flags_are_sent_only_when_the_client_offers_its_own(servers):
    for client in servers:
        url = str(client.base_url).replace("http://", "ws://") + "/ws?clientId=flags"
        async with websockets.connect(url) as ws:
            assert json.loads(await ws.recv())["type"] == "status"
            with pytest.raises(TimeoutError):  # nothing unasked
                async with asyncio.timeout(0.5):
                    await ws.recv()
            await ws.send(json.dumps({"type": "feature_flags", "data": {"supports_x": True}}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply == {
            "type": "feature_flags",
            "data": {"supports_preview_metadata": True, "max_upload_size": 104857600},
        }, client.base_url


async def test_inverted_pixels_are_the_same_for_every_value(servers):
    """ComfyUI inverts in float32 and truncates when saving: 159 of 256 values come out one
    lower than 255 - v."""
    ramp = Image.new("RGB", (256, 1))
    ramp.putdata([(v, 255 - v, v // 2) for v in range(256)])
    buffer = io.BytesIO()
    ramp.save(buffer, "PNG")
    outputs = []
    for client in servers:
        await upload(client, "ramp.png", buffer.getvalue())
        _, entry = await run_over_socket(client, invert("ramp.png", f"parity/{uuid.uuid4()}"))
        [image] = entry["outputs"]["3"]["images"]
        view = await client.get("/view", params=image)
        with Image.open(io.BytesIO(view.content)) as result:
            outputs.append(result.convert("RGB").tobytes())
    real, fake = outputs
    assert fake == real


async def test_the_black_and_white_preset_gives_the_same_picture(servers):
    """Its mask and blend nodes: the double works in 8 bits between nodes, ComfyUI in float32,
    so a channel may differ by a step or two; every pixel is grey on both."""
    preset = load_preset(BUILTIN_DIR / "bw")
    photo = Image.new("RGB", (32, 16), (200, 80, 40))
    photo.paste((30, 160, 90), (16, 0, 32, 16))
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    outputs = []
    for client in servers:
        await upload(client, "bw.png", buffer.getvalue())
        built = workflow.build_workflow(
            preset, photos=["bw.png"], prompt=None, chosen={}, job_id=uuid.uuid4().hex, attempt=0
        )
        _, entry = await run_over_socket(client, built)
        [image] = next(iter(entry["outputs"].values()))["images"]
        view = await client.get("/view", params=image)
        with Image.open(io.BytesIO(view.content)) as result:
            outputs.append(result.convert("RGB"))
    real, fake = outputs
    assert fake.size == real.size == photo.size
    for xy in ((2, 2), (30, 14)):
        r, g, b = real.getpixel(xy)
        assert r == g == b and fake.getpixel(xy) == (fake.getpixel(xy)[0],) * 3
        assert abs(fake.getpixel(xy)[0] - r) <= 2, (xy, real.getpixel(xy), fake.getpixel(xy))


def rich_outputs(photo: str, prefix: str) -> dict[str, Any]:
    """The recorded album/animation/video prompt (reference/comfyui-0.3.64-history-video-
    album.json) plus SaveAnimatedPNG and a stitched, flipped, turned pair."""

    def node(kind: str, **inputs: Any) -> dict[str, Any]:
        return {"class_type": kind, "inputs": inputs}

    return {
        "1": node("LoadImage", image=photo),
        "2": node("ImageInvert", image=["1", 0]),
        "3": node(
            "ImageBlend", image1=["1", 0], image2=["2", 0], blend_factor=0.5, blend_mode="normal"
        ),
        "4": node("ImageBatch", image1=["1", 0], image2=["3", 0]),
        "5": node("ImageBatch", image1=["4", 0], image2=["2", 0]),
        "6": node("RepeatImageBatch", image=["5", 0], amount=4),
        "7": node("CreateVideo", images=["6", 0], fps=6.0),
        "8": node(
            "SaveVideo", video=["7", 0], filename_prefix=f"{prefix}/vid", format="mp4", codec="h264"
        ),
        "9": node(
            "SaveAnimatedWEBP",
            images=["6", 0],
            filename_prefix=f"{prefix}/anim",
            fps=6.0,
            lossless=False,
            quality=80,
            method="default",
        ),
        "10": node("SaveImage", images=["5", 0], filename_prefix=f"{prefix}/batch"),
        "11": node(
            "SaveAnimatedPNG",
            images=["6", 0],
            filename_prefix=f"{prefix}/apng",
            fps=6.0,
            compress_level=4,
        ),
        "12": node(
            "ImageStitch",
            image1=["1", 0],
            image2=["2", 0],
            direction="right",
            match_image_size=True,
            spacing_width=0,
            spacing_color="white",
        ),
        "13": node("ImageFlip", image=["12", 0], flip_method="y-axis: horizontally"),
        "14": node("ImageRotate", image=["13", 0], rotation="90 degrees"),
        "15": node("SaveImage", images=["14", 0], filename_prefix=f"{prefix}/stitch"),
    }


def real_mp4_facts(data: bytes) -> dict[str, Any]:
    """Frames, rate, size and codec of a real MP4, read with the PyAV of ComfyUI's own venv
    (comfygram's has no video library)."""
    script = (
        "import av, io, json, sys\n"
        "c = av.open(io.BytesIO(sys.stdin.buffer.read())); s = c.streams.video[0]\n"
        "print(json.dumps({'frames': s.frames, 'fps': float(s.average_rate), 'width': s.width,"
        " 'height': s.height, 'codec': s.codec_context.name, 'duration': c.duration / 1e6}))"
    )
    python = COMFYUI_HOME / "venv" / "bin" / "python"
    done = subprocess.run([str(python), "-c", script], input=data, capture_output=True, check=True)
    return json.loads(done.stdout)


def file_facts(content_type: str, data: bytes) -> dict[str, Any]:
    """What a client may rely on in a served file (never its bytes)."""
    if content_type == "video/mp4":
        return real_mp4_facts(data) if MP4_STANDIN_MARKER not in data else read_mp4_standin(data)
    with Image.open(io.BytesIO(data)) as image:
        frames = getattr(image, "n_frames", 1)
        image.seek(min(frames, 3) - 1)
        image.load()
        return {
            "format": image.format,
            "size": image.size,
            "frames": frames,
            "duration": image.info.get("duration"),
        }


async def test_batch_animation_and_video_outputs_are_reported_and_served_alike(servers):
    """The rich presets' outputs: /history lists each file under ``images`` with the same names
    (``animated: [true]`` for the video and the animations), and /view serves each with the
    same content type, size, frame count and frame duration (not the same bytes)."""
    photo, prefix = images.png(64, 48, (200, 30, uuid.uuid4().int % 256)), f"rich/{uuid.uuid4()}"
    results = []
    for client in servers:
        await upload(client, "rich.png", photo)
        seen, entry = await run_over_socket(client, rich_outputs("rich.png", prefix))
        served = {}
        for output in entry["outputs"].values():
            for file in output["images"]:
                view = await client.get("/view", params=file)
                assert view.status_code == 200
                content_type = view.headers["content-type"]
                served[file["filename"]] = (content_type, file_facts(content_type, view.content))
        shape = history_shape(entry)
        # ComfyUI lists the output nodes to run from a set: their order changes per process.
        shape["prompt"][3] = sorted(shape["prompt"][3])
        shape["outputs"] = entry["outputs"]  # every file name, as a dict (order aside)
        shape["meta"] = dict(sorted(entry["meta"].items()))
        results.append((sorted(seen, key=str), shape, served))
    real, fake = results
    assert fake[0] == real[0]
    assert fake[1] == real[1]
    assert real[1]["outputs"]["8"]["animated"] == [True]
    assert [f["filename"] for f in real[1]["outputs"]["10"]["images"]] == [
        f"batch_0000{n}_.png" for n in (1, 2, 3)
    ]
    assert set(fake[2]) == set(real[2])
    for name, (content_type, facts) in real[2].items():
        fake_type, fake_facts = fake[2][name]
        assert fake_type == content_type, name
        if content_type == "video/mp4":
            assert facts["codec"] == fake_facts["codec"] == "h264"
            keys = ("frames", "fps", "width", "height", "duration")
            assert {k: fake_facts[k] for k in keys} == {k: facts[k] for k in keys}
            assert facts["frames"] == 12 and facts["duration"] == 2.0
        else:
            assert fake_facts == facts, name
