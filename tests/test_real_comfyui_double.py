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

import av
import httpx
import pytest
import websockets
from PIL import Image, ImageChops, ImageStat

from comfygram.presets import BUILTIN_DIR, load_preset
from comfygram.worker import workflow
from tests import images
from tests.doubles.comfyui import MP4_STANDIN_MARKER, ComfyUIDouble, read_mp4_standin
from tests.real_comfyui import COMFYUI_HOME, RealComfyUI, real_comfyui
from tests.test_comfyui_double import (
    SCALING_AND_COMPOSITING_PIXELS,
    colourful_photo,
    scaling_and_compositing,
    stripes_png,
)

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


async def run_over_socket(
    client: httpx.AsyncClient, workflow: dict, timeout: float = 15
) -> tuple[list, dict]:
    """Submit on a fresh socket; (messages of the prompt as (type, node), history entry)."""
    client_id, prompt_id = uuid.uuid4().hex, str(uuid.uuid4())
    url = str(client.base_url).replace("http://", "ws://") + f"/ws?clientId={client_id}"
    async with websockets.connect(url) as ws:
        first = json.loads(await ws.recv())
        assert first["type"] == "status" and first["data"]["sid"] == client_id
        body = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
        assert (await client.post("/prompt", json=body)).status_code == 200
        seen: list[tuple[str, Any]] = []
        async with asyncio.timeout(timeout):
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


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel value, 0..255."""
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


async def served_files(client: httpx.AsyncClient, entry: dict) -> dict[str, list[Any]]:
    """Each output node's files from /view: (content type, picture) for an image, (content
    type, the decoded frames) for a video."""
    served: dict[str, list[Any]] = {}
    for node_id, output in entry["outputs"].items():
        for file in output["images"]:
            view = await client.get("/view", params=file)
            assert view.status_code == 200
            content_type = view.headers["content-type"]
            if content_type == "video/mp4":
                with av.open(io.BytesIO(view.content)) as container:
                    content = [frame.to_image() for frame in container.decode(video=0)]
            else:
                with Image.open(io.BytesIO(view.content)) as image:
                    content = image.convert("RGB")
            served.setdefault(node_id, []).append((content_type, content))
    return served


def comparable(seen: list, entry: dict) -> tuple[list, dict]:
    """The messages (ComfyUI runs independent nodes in an order of its own) and the history
    entry's shape, with every file name (they are the same on both)."""
    shape = history_shape(entry)
    shape["prompt"][3] = sorted(shape["prompt"][3])  # output nodes, from a set on the real one
    shape["outputs"] = entry["outputs"]
    shape["meta"] = dict(sorted(entry["meta"].items()))
    return sorted(seen, key=str), shape


async def test_scaling_batch_and_composite_nodes_give_the_same_pictures(servers):
    """ImageScale, ImageScaleToMaxDimension, EmptyImage, ImageFromBatch, ImageCompositeMasked
    and ImageBlend's difference and soft light: the same files, sizes and batch lengths, the
    pixels the fast test pins within a step, and whole pictures alike (except where ComfyUI
    shrinks with torch's bilinear, which does not antialias as Pillow does)."""
    name, prefix = f"nodes-{uuid.uuid4().hex}.png", f"nodes/{uuid.uuid4()}"
    results = []
    for client in servers:
        await upload(client, name, stripes_png())
        seen, entry = await run_over_socket(client, scaling_and_compositing(name, prefix))
        results.append((comparable(seen, entry), await served_files(client, entry)))
    (real_run, real), (fake_run, fake) = results
    assert fake_run == real_run
    assert {n: [(t, p.size) for t, p in files] for n, files in fake.items()} == {
        n: [(t, p.size) for t, p in files] for n, files in real.items()
    }
    for (node_id, index, xy), colour in SCALING_AND_COMPOSITING_PIXELS.items():
        for files in (real, fake):
            got = files[f"save_{node_id}"][index][1].getpixel(xy)
            assert all(abs(a - b) <= 1 for a, b in zip(got, colour, strict=True)), (node_id, xy)
    for node_id, files in real.items():
        bound = 8 if node_id in ("save_resized", "save_max_wide") else 1
        for (_, a), (_, b) in zip(files, fake[node_id], strict=True):
            assert mean_difference(a, b) <= bound, node_id


RICH_PRESET_RUNS = [
    ("pair", ["red", "blue"], {}),
    ("variants", ["colourful"], {"count": "2"}),
    ("variants", ["colourful"], {"count": "4"}),
    ("fade", ["red"], {"length": "2s"}),
    ("fade", ["red"], {"length": "4s"}),
]


async def test_the_rich_presets_give_the_same_outputs(servers):
    """pair, variants (2 and 4) and fade (2 s and 4 s) filled through their contracts: the same
    messages and history (cached nodes included: the runs follow each other), the same content
    types, sizes, image counts and frame counts, and pictures within a few steps (the double
    works in 8 bits between nodes, ComfyUI in float32; H.264 adds its own)."""
    tag = uuid.uuid4().hex
    photos = {
        "red": images.png(300, 200, (220, 40, 30)),
        "blue": images.png(200, 400, (30, 60, 210)),
        "colourful": colourful_photo(640, 480),
    }
    results = []
    for client in servers:
        for key, data in photos.items():
            await upload(client, f"rich-{key}-{tag}.png", data)
        # a prompt of other nodes first, so that ComfyUI's cache holds nothing of the presets
        await run_over_socket(client, invert(f"rich-red-{tag}.png", f"rich/{tag}-reset"))
        runs = []
        for slug, slots, options in RICH_PRESET_RUNS:
            preset = load_preset(BUILTIN_DIR / slug)
            built = preset.contract.apply(
                preset.workflow,
                photos=[f"rich-{key}-{tag}.png" for key in slots],
                prompt=None,
                chosen=preset.contract.resolve(photos=len(slots), prompt=None, options=options),
                output_prefix=f"rich/{tag}-{slug}-{len(runs)}",
            )
            seen, entry = await run_over_socket(client, built, timeout=preset.timeout_seconds)
            runs.append((comparable(seen, entry), await served_files(client, entry)))
        results.append(runs)
    for (slug, _, options), (real_run, real), (fake_run, fake) in zip(
        RICH_PRESET_RUNS, *results, strict=True
    ):
        case = (slug, options)
        assert fake_run == real_run, case
        [(node_id, real_files)] = real.items()
        fake_files = fake[node_id]
        assert [t for t, _ in fake_files] == [t for t, _ in real_files], case
        if slug == "fade":
            [(_, real_frames)], [(_, fake_frames)] = real_files, fake_files
            assert len(fake_frames) == len(real_frames) == {"2s": 48, "4s": 96}[options["length"]]
            for k, (a, b) in enumerate(zip(real_frames, fake_frames, strict=True)):
                assert a.size == b.size == (512, 342)
                real_mean, fake_mean = ImageStat.Stat(a).mean, ImageStat.Stat(b).mean
                assert all(abs(x - y) <= 5 for x, y in zip(real_mean, fake_mean, strict=True)), (
                    case,
                    k,
                )
        else:
            assert [p.size for _, p in fake_files] == [p.size for _, p in real_files], case
            for (_, a), (_, b) in zip(real_files, fake_files, strict=True):
                assert mean_difference(a, b) <= 1.5, case
    # one picture, an album of 2 and of 4, two videos (on the real server)
    assert [len(next(iter(served.values()))) for _, served in results[0]] == [1, 2, 4, 1, 1]
