"""ComfyUIDouble: a loopback HTTP + WebSocket server that answers like ComfyUI 0.3.64.

Shapes, status codes and content types are copied from a recording of a real ComfyUI 0.3.64's
HTTP and WebSocket traffic (not kept in this repository: what it showed is hard-coded in this
file and pinned by tests/test_comfyui_double.py); what the recording lacks (loader nodes, the
OOM text) follows ComfyUI's nodes.py and execution.py of that release. It runs LoadImage,
ImageInvert, ImageScaleBy, ImageBlur, ImageSharpen, ImageToMask, MaskToImage, ImageBlend, SaveImage
and PreviewImage for real with Pillow, one prompt at a time, every IMAGE a batch (a list of
images); and the rich presets' nodes: ImageStitch, ImageFlip, ImageRotate, RepeatImageBatch,
ImageBatch, ImageFromBatch, EmptyImage, ImageScale, ImageScaleToMaxDimension,
ImageCompositeMasked, CreateVideo, SaveVideo, SaveAnimatedWEBP and SaveAnimatedPNG
(``/object_info`` copied from the real server, comfyui_rich_nodes.json), enough to run the
built-in pair, variants and fade presets end to end. Sizes, batch lengths and crops follow
ComfyUI's code (``common_upscale``, ``repeat_to_batch_size``, the composite's clipping);
ImageBlend uses ComfyUI's formula for each mode. The double keeps 8 bits between nodes where
ComfyUI keeps float32, and Pillow's bilinear/bicubic/area resampling antialiases where torch's
does not: colours stay within a few steps (lanczos is Pillow's on both). A batch SaveImage
writes one file per image
(``prefix_00001_.png``, ``prefix_00002_.png``...); SaveVideo and SaveAnimated* write one file and
add ``animated: [true]``, all under ``images`` as ComfyUI reports them; ``/view`` answers
image/png, image/webp or video/mp4. SaveVideo writes a real H.264 MP4 with PyAV as ComfyUI's
``VideoFromComponents.save_to`` does (yuv420p, the rate rounded to 1/1000); ``read_mp4_standin``
reads its facts back. It sends the recorded
WebSocket sequence (``progress_state`` included) to the socket whose clientId is the prompt's
client_id (``feature_flags`` only in answer to a client's own, as the real server).
ImageInvert rounds as ComfyUI does (float32, truncated on saving: 200 becomes 54, not 55).
tests/test_real_comfyui_double.py compares it with the real server; where they differ, the real one
is right. ``POST /prompt`` validates like ComfyUI: unknown nodes, missing or out-of-range inputs,
values not in a combo list (model files too), broken links.

Knobs (attributes and methods; all of them may change while the server runs):

- ``execution_delay`` seconds per node, reported as four ``progress`` steps.
- ``nodes_in_thread`` (default False): run each node's Pillow work in a thread, as ComfyUI runs
  prompts beside its server, so uploads and submits are answered while a prompt runs (else the
  double's event loop is busy for the node's whole CPU time).
- ``previews`` (also a constructor argument): as ComfyUI started with ``--preview-method``, every
  sampling-like node (any but LoadImage and the save nodes) reports four ``progress`` steps and
  sends a JPEG preview of its input (within 512 pixels) at steps 2 and 4 to the prompt's socket:
  a PREVIEW_IMAGE_WITH_METADATA frame (4, metadata length, JSON with prompt_id and node ids, JPEG)
  before the step's ``progress`` if the socket offered ``supports_preview_metadata`` in its
  ``feature_flags``, else a PREVIEW_IMAGE frame (1, image type 1, JPEG) after it (server.py
  ``send_image``/``send_image_with_metadata``, comfy_execution/progress.py, main.py's hook).
  ``previews_sent`` logs (client id, event type) of each frame.
- ``drop_websocket_messages``: the socket stays open but says nothing.
- ``history_write_delay``: gap between ``execution_success`` and the history write.
- ``http_delay``: seconds of silence before every HTTP answer (a slow ComfyUI).
- ``drop_http(times=1, paths=None)``: the next ``times`` HTTP requests (only those whose
  path is, or is under, one of ``paths``) get no answer: the TCP connection is aborted, so a
  client sees ``httpx.RemoteProtocolError``/``ReadError``. WebSocket upgrades are not dropped.
- ``fail_next_with(exception_type, message)``: the next executed prompt fails with an
  ``execution_error``; ``fail_times(n, exception_type, message)`` the next ``n`` prompts;
  ``fail_always(exception_type, message)`` every prompt until ``fail_always(None)``. Counted
  failures come first. ``message`` is sent verbatim as ``exception_message``. The failing node
  is the last non-output node that actually runs (the save node if every other is cached;
  a fully cached prompt re-runs its save node to fail there).
- ``out_of_memory_next()``: the next prompt fails the way ComfyUI reports a CUDA OOM
  (``torch.OutOfMemoryError``, ``OOM_MESSAGE``). ``POST /free`` bodies land in ``free_calls``.
- ``models``: folder -> file names (``{"checkpoints": ["v1-5-pruned-emaonly.safetensors"]}``),
  listed by the loader nodes in ``/object_info`` (CheckpointLoaderSimple, UNETLoader,
  VAELoader, CLIPLoader, DualCLIPLoader; ``unet``/``clip`` are merged into
  ``diffusion_models``/``text_encoders`` as ComfyUI does). A name not listed is refused with
  ``value_not_in_list``. VAEEncode and VAEDecode are there too, so that a loader can be
  linked to an image workflow and validated. These nodes are only listed and validated: a
  prompt that runs one fails at run time.
- ``hide_node(class_type)``: that node type is gone (a missing custom node); the names are in
  ``hidden_nodes``, which may be edited.
- ``cache_enabled`` (default True): ComfyUI's output cache. A node whose inputs (and, for
  LoadImage, the file's bytes) and ancestors match one from the most recent prompt is not run
  again: ``execution_cached`` lists it and a cached SaveImage repeats the earlier file names
  without writing a file. Like ComfyUI's default cache only the latest prompt's nodes are kept.
  Putting the job id into ``filename_prefix`` defeats it for the save node.
- ``pause()``/``resume()`` hold and release queued prompts; ``stop()``/``start()`` on the same
  port (ComfyUI down; a restart loses queue, history and cache as the real server does).

Logs: ``prompts_received`` (POST /prompt bodies as sent), ``queued_at`` (prompt id -> when it
was accepted), ``free_calls``,
``executed_prompt_ids`` (in the order they started), ``timeline`` (``(time.monotonic(),
"start" | "end", prompt_id, client_id)`` for every executed prompt) and ``dropped_requests``
(paths of the dropped HTTP requests). Logs survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import json
import math
import os
import socket
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import uvicorn
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

JSON = "application/json; charset=utf-8"
# What ``/view`` answers for each kind of file ComfyUI writes (checked on the real server).
CONTENT_TYPES = {
    ".png": "image/png",
    ".webp": "image/webp",
    ".mp4": "video/mp4",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
}
ANIMATED_NODES = {"SaveVideo", "SaveAnimatedWEBP", "SaveAnimatedPNG"}
OUTPUT_NODES = {"SaveImage", "PreviewImage", *ANIMATED_NODES}
PREVIEWLESS = {"LoadImage", *OUTPUT_NODES}
# The model-free nodes rich presets use, ``/object_info`` entries as ComfyUI 0.3.64 answers them
# (copied from the real server): ImageStitch, ImageFlip, ImageRotate, RepeatImageBatch,
# ImageBatch, ImageBlend, CreateVideo, SaveVideo, SaveAnimatedWEBP, SaveAnimatedPNG, EmptyImage,
# ImageCompositeMasked, ImageScaleToMaxDimension, ImageScale, ImageFromBatch.
RICH_NODE_INFO: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).with_name("comfyui_rich_nodes.json")).read_text()
)
# ComfyUI's binary WebSocket events (protocol.py) and its default --preview-size.
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
PREVIEW_SIZE = 512
# SaveVideo once wrote a stand-in holding this marker (there was no H.264 encoder then); it now
# writes a real MP4, which never holds it. Kept for the tests that tell the two apart.
MP4_STANDIN_MARKER = b"comfyui-double-mp4-standin"
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
MASK_CHANNELS = ["red", "green", "blue", "alpha"]
BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]
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
                    {
                        "default": "ComfyUI",
                        "tooltip": "The prefix for the file to save. This may include "
                        "formatting information such as %date:yyyy-MM-dd% or %Empty Latent "
                        "Image.width% to include values from nodes.",
                    },
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
        "input": {
            "required": {"images": ["IMAGE"]},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },
        "input_order": {"required": ["images"], "hidden": ["prompt", "extra_pnginfo"]},
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
    "ImageBlur": {
        "input": {
            "required": {
                "image": ["IMAGE", {}],
                "blur_radius": ["INT", {"default": 1, "min": 1, "max": 31, "step": 1}],
                "sigma": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}],
            }
        },
        "input_order": {"required": ["image", "blur_radius", "sigma"]},
        "output": ["IMAGE"],
        "output_is_list": [False],
        "output_name": ["IMAGE"],
        "output_tooltips": [None],
        "name": "ImageBlur",
        "display_name": None,  # a newer-style (V3) node: no display name in /object_info
        "description": "",
        "python_module": "comfy_extras.nodes_post_processing",
        "category": "image/postprocessing",
        "output_node": False,
        "deprecated": False,
        "experimental": False,
        "api_node": False,
    },
    "ImageSharpen": {
        "input": {
            "required": {
                "image": ["IMAGE", {}],
                "sharpen_radius": ["INT", {"default": 1, "min": 1, "max": 31, "step": 1}],
                "sigma": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.01}],
                "alpha": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.01}],
            }
        },
        "input_order": {"required": ["image", "sharpen_radius", "sigma", "alpha"]},
        "output": ["IMAGE"],
        "output_is_list": [False],
        "output_name": ["IMAGE"],
        "output_tooltips": [None],
        "name": "ImageSharpen",
        "display_name": None,  # a newer-style (V3) node: no display name in /object_info
        "description": "",
        "python_module": "comfy_extras.nodes_post_processing",
        "category": "image/postprocessing",
        "output_node": False,
        "deprecated": False,
        "experimental": False,
        "api_node": False,
    },
    # The black & white preset's nodes.
    "ImageToMask": {
        "input": {"required": {"image": ["IMAGE"], "channel": [MASK_CHANNELS]}},
        "input_order": {"required": ["image", "channel"]},
        "output": ["MASK"],
        "output_is_list": [False],
        "output_name": ["MASK"],
        "name": "ImageToMask",
        "display_name": "Convert Image to Mask",
        "description": "",
        "python_module": "comfy_extras.nodes_mask",
        "category": "mask",
        "output_node": False,
    },
    "MaskToImage": {
        "input": {"required": {"mask": ["MASK"]}},
        "input_order": {"required": ["mask"]},
        "output": ["IMAGE"],
        "output_is_list": [False],
        "output_name": ["IMAGE"],
        "name": "MaskToImage",
        "display_name": "Convert Mask to Image",
        "description": "",
        "python_module": "comfy_extras.nodes_mask",
        "category": "mask",
        "output_node": False,
    },
    "ImageBlend": {
        "input": {
            "required": {
                "image1": ["IMAGE", {}],
                "image2": ["IMAGE", {}],
                "blend_factor": [
                    "FLOAT",
                    {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01},
                ],
                # A newer-style combo: ComfyUI does not check its value at POST /prompt.
                "blend_mode": ["COMBO", {"multiselect": False, "options": BLEND_MODES}],
            }
        },
        "input_order": {"required": ["image1", "image2", "blend_factor", "blend_mode"]},
        "output": ["IMAGE"],
        "output_is_list": [False],
        "output_name": ["IMAGE"],
        "output_tooltips": [None],
        "name": "ImageBlend",
        "display_name": None,
        "description": "",
        "python_module": "comfy_extras.nodes_post_processing",
        "category": "image/postprocessing",
        "output_node": False,
        "deprecated": False,
        "experimental": False,
        "api_node": False,
    },
}
NODE_INFO.update(RICH_NODE_INFO)
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


FEATURE_FLAGS = {"supports_preview_metadata": True, "max_upload_size": 104857600}


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


# ComfyUI loads 8-bit pixels as float32 v / 255, inverts as 1 - x and saves int(255 * x)
# (truncating), all in float32: 159 of the 256 values come out one below 255 - v.
INVERT_TABLE = [int(_float32(255 * _float32(1 - _float32(v / 255)))) for v in range(256)]

# ComfyUI's execution.py appends these tips to str(torch.OutOfMemoryError); with its default
# cudaMallocAsync backend that str is "Allocation on device " (trailing space included).
OOM_TIPS = (
    "This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked "
    "before you might have accidentally set the batch_size to a large number."
)
OOM_MESSAGE = f"Allocation on device \n{OOM_TIPS}"
TRACEBACK = ["<traceback lines omitted>"]
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
CLIP_TYPES = [
    "stable_diffusion",
    "stable_cascade",
    "sd3",
    "stable_audio",
    "mochi",
    "ltxv",
    "pixart",
    "cosmos",
    "lumina2",
    "wan",
    "hidream",
    "chroma",
    "ace",
    "omnigen2",
    "qwen_image",
    "hunyuan_image",
]
DUAL_CLIP_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"]
CLIP_RECIPES = (
    "[Recipes]\n\nstable_diffusion: clip-l\nstable_cascade: clip-g\nsd3: t5 xxl/ clip-g / "
    "clip-l\nstable_audio: t5 base\nmochi: t5 xxl\ncosmos: old t5 xxl\nlumina2: gemma 2 2B\n"
    "wan: umt5 xxl\n hidream: llama-3.1 (Recommend) or t5\nomnigen2: qwen vl 2.5 3B"
)
DUAL_CLIP_RECIPES = (
    "[Recipes]\n\nsdxl: clip-l, clip-g\nsd3: clip-l, clip-g / clip-l, t5 / clip-g, t5\n"
    "flux: clip-l, t5\nhidream: at least one of t5 or llama, recommended t5 and llama\n"
    "hunyuan_image: qwen2.5vl 7b and byt5 small"
)


def _node(
    name: str,
    display_name: str,
    inputs: dict[str, dict[str, list[Any]]],
    output: list[str],
    category: str,
    description: str = "",
) -> dict[str, Any]:
    """A V1 ``/object_info`` entry, keys in ComfyUI's order."""
    return {
        "input": inputs,
        "input_order": {section: list(spec) for section, spec in inputs.items()},
        "output": output,
        "output_is_list": [False] * len(output),
        "output_name": output,
        "name": name,
        "display_name": display_name,
        "description": description,
        "python_module": "nodes",
        "category": category,
        "output_node": False,
    }


def _model_nodes(models: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """ComfyUI 0.3.64's model loaders (listing the files in ``models``) and VAE nodes."""

    def files(*folders: str) -> list[str]:
        return sorted({name for folder in folders for name in models.get(folder, [])})

    approx = files("vae_approx")
    vaes = files("vae")
    for kind in ("taesd", "taesdxl", "taesd3", "taef1"):
        prefixes = (f"{kind}_encoder.", f"{kind}_decoder.")
        if all(any(a.startswith(p) for a in approx) for p in prefixes):
            vaes.append(kind)
    vaes.append("pixel_space")
    encoders = files("text_encoders", "clip")
    device = ["default", "cpu"], {"advanced": True}
    checkpoint = _node(
        "CheckpointLoaderSimple",
        "Load Checkpoint",
        {
            "required": {
                "ckpt_name": [
                    files("checkpoints"),
                    {"tooltip": "The name of the checkpoint (model) to load."},
                ]
            }
        },
        ["MODEL", "CLIP", "VAE"],
        "loaders",
        "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
    )
    checkpoint["output_tooltips"] = [
        "The model used for denoising latents.",
        "The CLIP model used for encoding text prompts.",
        "The VAE model used for encoding and decoding images to and from latent space.",
    ]
    decode = _node(
        "VAEDecode",
        "VAE Decode",
        {
            "required": {
                "samples": ["LATENT", {"tooltip": "The latent to be decoded."}],
                "vae": ["VAE", {"tooltip": "The VAE model used for decoding the latent."}],
            }
        },
        ["IMAGE"],
        "latent",
        "Decodes latent images back into pixel space images.",
    )
    decode["output_tooltips"] = ["The decoded image."]
    return {
        "CheckpointLoaderSimple": checkpoint,
        "UNETLoader": _node(
            "UNETLoader",
            "Load Diffusion Model",
            {
                "required": {
                    "unet_name": [files("diffusion_models", "unet")],
                    "weight_dtype": [WEIGHT_DTYPES],
                }
            },
            ["MODEL"],
            "advanced/loaders",
        ),
        "VAELoader": _node(
            "VAELoader", "Load VAE", {"required": {"vae_name": [vaes]}}, ["VAE"], "loaders"
        ),
        "CLIPLoader": _node(
            "CLIPLoader",
            "Load CLIP",
            {
                "required": {"clip_name": [encoders], "type": [CLIP_TYPES]},
                "optional": {"device": list(device)},
            },
            ["CLIP"],
            "advanced/loaders",
            CLIP_RECIPES,
        ),
        "DualCLIPLoader": _node(
            "DualCLIPLoader",
            "DualCLIPLoader",
            {
                "required": {
                    "clip_name1": [encoders],
                    "clip_name2": [encoders],
                    "type": [DUAL_CLIP_TYPES],
                },
                "optional": {"device": list(device)},
            },
            ["CLIP"],
            "advanced/loaders",
            DUAL_CLIP_RECIPES,
        ),
        "VAEEncode": _node(
            "VAEEncode",
            "VAE Encode",
            {"required": {"pixels": ["IMAGE"], "vae": ["VAE"]}},
            ["LATENT"],
            "latent",
        ),
        "VAEDecode": decode,
    }


def _blend_mode(a: float, b: float, mode: str) -> float:
    """``Blend.blend_mode`` of ComfyUI 0.3.64 (comfy_extras/nodes_post_processing.py) for one
    channel value, both in 0..1 (``difference`` is signed there: ``a - b``, clamped later)."""
    if mode == "normal":
        return b
    if mode == "multiply":
        return a * b
    if mode == "screen":
        return 1 - (1 - a) * (1 - b)
    if mode == "overlay":
        return 2 * a * b if a <= 0.5 else 1 - 2 * (1 - a) * (1 - b)
    if mode == "soft_light":
        if b <= 0.5:
            return a - (1 - 2 * b) * a * (1 - a)
        g = ((16 * a - 12) * a + 4) * a if a <= 0.25 else math.sqrt(a)
        return a + (2 * b - 1) * (g - a)
    return a - b  # difference


@functools.lru_cache(maxsize=64)
def _blend_table(mode: str, factor: float) -> bytes:
    """ImageBlend for every pair of 8-bit values: entry ``a << 8 | b`` is
    ``clamp(a * (1 - factor) + mode(a, b) * factor)``, rounded to 8 bits."""
    table = bytearray(65536)
    for a in range(256):
        for b in range(256):
            x = a / 255
            value = x * (1 - factor) + _blend_mode(x, b / 255, mode) * factor
            table[a << 8 | b] = round(min(1.0, max(0.0, value)) * 255)
    return bytes(table)


def _constant(image: Image.Image) -> tuple[int, ...] | None:
    """The colour of a one-colour image, else None."""
    extrema = image.getextrema()
    if all(low == high for low, high in extrema):
        return tuple(low for low, _ in extrema)
    return None


def _blend(first: Image.Image, second: Image.Image, factor: float, mode: str) -> Image.Image:
    """``ImageBlend``: ``first * (1 - factor) + mode(first, second) * factor``, clamped, with
    ComfyUI's formula for each mode (within a step of its float32 result per node). ``second``
    of another size is scaled to ``first``'s (bicubic, centre crop) first, as ComfyUI does."""
    if mode not in BLEND_MODES:  # unchecked at POST /prompt: ComfyUI fails when it runs
        raise _NodeFailed("ValueError", f"Unsupported blend mode: {mode}\n")
    if second.size != first.size:
        second = _upscale(second, first.size, "bicubic", "center")
    table = _blend_table(mode, factor)
    colour = _constant(second)
    if colour is not None:  # one lookup table per channel (an EmptyImage colour, a mask)
        return first.point([table[a << 8 | b] for b in colour for a in range(256)])
    mixed = bytes(
        [table[a << 8 | b] for a, b in zip(first.tobytes(), second.tobytes(), strict=True)]
    )
    return Image.frombytes("RGB", first.size, mixed)


def _jpeg(image: Image.Image) -> bytes:
    """A preview as ComfyUI encodes it: within ``PREVIEW_SIZE`` pixels, JPEG quality 95."""
    image = ImageOps.contain(image, (PREVIEW_SIZE, PREVIEW_SIZE), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def preview_frame(image: Image.Image) -> bytes:
    """ComfyUI's ``send_image``: event PREVIEW_IMAGE (1), image type 1 (JPEG), JPEG bytes (each
    number a big-endian uint32); for a client without ``supports_preview_metadata``."""
    return struct.pack(">II", PREVIEW_IMAGE, 1) + _jpeg(image)


def preview_with_metadata(image: Image.Image, metadata: dict[str, Any]) -> bytes:
    """ComfyUI's ``send_image_with_metadata``: event PREVIEW_IMAGE_WITH_METADATA (4), the length of
    the JSON metadata (``image_type`` added last), the metadata, then the JPEG bytes."""
    text = json.dumps({**metadata, "image_type": "image/jpeg"}).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(text)) + text + _jpeg(image)


class _Video:
    """``CreateVideo``'s VIDEO: frames and a rate."""

    def __init__(self, frames: list[Image.Image], fps: float) -> None:
        self.frames = frames
        self.fps = fps


def _mp4(video: _Video) -> bytes:
    """The MP4 ComfyUI 0.3.64's SaveVideo writes for CreateVideo's frames: H.264, yuv420p, the
    rate as a fraction of 1/1000 (comfy_api/latest/_input_impl/video_types.py, save_to)."""
    width, height = video.frames[0].size
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as output:
        stream = output.add_stream("h264", rate=Fraction(round(video.fps * 1000), 1000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for image in video.frames:
            frame = av.VideoFrame.from_image(image.convert("RGB")).reformat(format="yuv420p")
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def read_mp4_standin(data: bytes) -> dict[str, Any]:
    """The facts of a SaveVideo file (format, codec, frames, fps, width, height, duration),
    probed with PyAV."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return {
            "format": "mp4",
            "codec": stream.codec_context.name,
            "frames": stream.frames,
            "fps": float(stream.average_rate),
            "width": stream.width,
            "height": stream.height,
            "duration": container.duration / av.time_base,
        }


# Pillow's nearest resampling is ComfyUI's nearest-exact; ``area`` (adaptive average pooling)
# is a box filter. Pixels of the torch methods differ a little (no antialiasing there), sizes
# never; lanczos is Pillow's in ComfyUI too (comfy.utils.lanczos).
RESAMPLING = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "bislerp": Image.Resampling.BILINEAR,
}


def _upscale(image: Image.Image, size: tuple[int, int], method: str, crop: str) -> Image.Image:
    """``comfy.utils.common_upscale``: with ``crop == "center"`` the middle of ``image`` with
    the new aspect ratio is cut out first (ComfyUI's rounding), then it is resized to ``size``."""
    width, height = size
    if crop == "center":
        old_aspect, new_aspect = image.width / image.height, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((image.width - image.width * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((image.height - image.height * (old_aspect / new_aspect)) / 2)
        image = image.crop((x, y, image.width - x, image.height - y))
    if image.size == size:
        return image
    return image.resize(size, RESAMPLING.get(method, Image.Resampling.BILINEAR))


def _scale(image: Image.Image, width: int, height: int, method: str, crop: str) -> Image.Image:
    """``ImageScale``: 0 for one side keeps the aspect ratio; 0 for both changes nothing."""
    if width == 0 and height == 0:
        return image
    if width == 0:
        width = max(1, round(image.width * height / image.height))
    elif height == 0:
        height = max(1, round(image.height * width / image.width))
    return _upscale(image, (width, height), method, crop)


def _max_dimension(image: Image.Image, largest: int) -> tuple[int, int]:
    """``ImageScaleToMaxDimension``'s new size: the longest side ``largest``, the other rounded."""
    width, height = image.size
    if height > width:
        return round(width / height * largest), largest
    if width > height:
        return largest, round(height / width * largest)
    return largest, largest


def _repeat_to(batch: list[Any], length: int) -> list[Any]:
    """``comfy.utils.repeat_to_batch_size``: cut to ``length`` or repeated until it is."""
    return [batch[i % len(batch)] for i in range(length)]


def _composite(
    destinations: list[Image.Image],
    sources: list[Image.Image],
    x: int,
    y: int,
    resize_source: bool,
    masks: list[Image.Image] | None,
) -> list[Image.Image]:
    """``ImageCompositeMasked`` (comfy_extras/nodes_mask.py ``composite``): each source pasted
    at (x, y) on its destination, weighted by its mask (scaled to the source, bilinear); the
    sources and masks are repeated or cut to the destination batch, which gives the length."""
    size = destinations[0].size
    if resize_source:
        sources = [image.resize(size, Image.Resampling.BILINEAR) for image in sources]
    sources = _repeat_to(sources, len(destinations))
    source_size = sources[0].size
    if masks is None:
        masks = [Image.new("L", source_size, 255)]
    masks = [_fit(mask, source_size) for mask in masks]
    masks = _repeat_to(masks, len(sources))
    x, y = min(x, size[0]), min(y, size[1])  # x, y >= 0 (their minimum)
    visible = (min(source_size[0], size[0] - x), min(source_size[1], size[1] - y))
    box = (x, y, x + visible[0], y + visible[1])
    result = []
    for destination, source, mask in zip(destinations, sources, masks, strict=True):
        out = destination.copy()
        if visible[0] > 0 and visible[1] > 0:
            part = (0, 0, *visible)
            out.paste(Image.composite(source.crop(part), out.crop(box), mask.crop(part)), box[:2])
        result.append(out)
    return result


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)


def _pad_to(batch: list[Image.Image], length: int) -> list[Image.Image]:
    """A batch lengthened to ``length`` by repeating its last image (ImageStitch's rule)."""
    return batch + [batch[-1]] * (length - len(batch))


def _stitch(
    first: Image.Image, second: Image.Image, direction: str, match: bool, spacing: int, color: str
) -> Image.Image:
    """``ImageStitch`` for one pair: ``second`` placed ``direction`` of ``first``."""
    horizontal = direction in ("left", "right")
    if match:
        if horizontal:
            size = (int(first.height * second.width / second.height), first.height)
        else:
            size = (first.width, int(first.width / (second.width / second.height)))
        second = second.resize(size, Image.Resampling.LANCZOS)
    fill = SPACING_COLORS[color]
    a, b = (second, first) if direction in ("left", "up") else (first, second)
    if horizontal:
        size = (a.width + spacing + b.width, max(a.height, b.height))
    else:
        size = (max(a.width, b.width), a.height + spacing + b.height)
    # ComfyUI pads the shorter side with the spacing grey (black for a coloured spacing).
    pad = fill if len(set(fill)) == 1 else (0, 0, 0)
    out = Image.new("RGB", size, pad)
    if horizontal:
        out.paste(Image.new("RGB", (spacing, size[1]), fill), (a.width, 0))
        out.paste(a, (0, (size[1] - a.height) // 2))
        out.paste(b, (a.width + spacing, (size[1] - b.height) // 2))
    else:
        out.paste(Image.new("RGB", (size[0], spacing), fill), (0, a.height))
        out.paste(a, ((size[0] - a.width) // 2, 0))
        out.paste(b, ((size[0] - b.width) // 2, a.height + spacing))
    return out


SPACING_COLORS = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
}
# ImageRotate: ComfyUI turns clockwise; Pillow's transposes turn counter-clockwise.
ROTATIONS = {
    "90 degrees": Image.Transpose.ROTATE_270,
    "180 degrees": Image.Transpose.ROTATE_180,
    "270 degrees": Image.Transpose.ROTATE_90,
}
FLIPS = {
    "x-axis: vertically": Image.Transpose.FLIP_TOP_BOTTOM,
    "y-axis: horizontally": Image.Transpose.FLIP_LEFT_RIGHT,
}
WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}


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


def _type_name(exc: BaseException) -> str:
    """``execution.full_type_name``: builtins go bare, others with their module."""
    kind = type(exc)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _types_match(received: Any, expected: Any) -> bool:
    """``execution.validate_node_input`` (non-strict) for a link into an input."""
    if isinstance(expected, list):  # a combo fed by a link
        return received in ("COMBO", "*")
    if received == expected or "*" in (received, expected):
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return bool(got & want)


def _matches(path: str, prefixes: set[str] | None) -> bool:
    if prefixes is None:
        return True
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


class _NodeFailed(Exception):
    def __init__(self, exception_type: str, message: str) -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.message = message


class _Interrupted(Exception):
    pass


Emit = Callable[..., Awaitable[None]]
Progress = Callable[[str, float, float, str], Awaitable[None]]


class ComfyUIDouble:
    """A fake ComfyUI on 127.0.0.1; ``url`` is valid after ``start()``."""

    def __init__(
        self, root: Path, *, port: int = 0, previews: bool = False, gc_extension: bool = False
    ) -> None:
        self.root = Path(root)
        self.dirs = {kind: self.root / kind for kind in ("input", "output", "temp")}
        for path in self.dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.execution_delay = 0.0
        self.nodes_in_thread = False
        self.previews = previews
        # comfygram's ComfyUI extension (GET /comfygram/gc); stock ComfyUI answers 404.
        self.gc_extension = gc_extension
        self.previews_sent: list[tuple[str, int]] = []  # (client_id, binary event type)
        self.drop_websocket_messages = False
        self.history_write_delay = 0.0
        self.http_delay = 0.0
        self.cache_enabled = True
        self.models: dict[str, list[str]] = {}
        self.hidden_nodes: set[str] = set()
        self.free_calls: list[dict[str, Any]] = []
        self.prompts_received: list[dict[str, Any]] = []
        self.queued_at: dict[str, float] = {}  # prompt id -> time.monotonic() it was accepted
        self.interrupts: list[str | None] = []  # prompt_id of each POST /interrupt (None: any)
        self.executed_prompt_ids: list[str] = []
        self.timeline: list[tuple[float, str, str, str | None]] = []
        self.dropped_requests: list[str] = []
        self._failures: list[tuple[str, str]] = []
        self._fail_always: tuple[str, str] | None = None
        self._drops_left = 0
        self._drop_paths: set[str] | None = None
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
        self._client_flags: dict[str, dict[str, Any]] = {}  # clientId -> its feature_flags
        # Each socket's Sec-WebSocket-Extensions offer (None: none), as the client sent it.
        self.socket_extension_offers: list[str | None] = []
        self._socket_changed = asyncio.Event()
        # cache key -> (node's value (a batch of images, a video) or None, its UI output or None)
        self._cache: dict[str, tuple[Any, dict[str, Any] | None]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- knobs --------------------------------------------------------------------------------

    def fail_next_with(self, exception_type: str, message: str) -> None:
        """Make the next executed prompt fail with an ``execution_error``."""
        self.fail_times(1, exception_type, message)

    def fail_times(self, n: int, exception_type: str, message: str) -> None:
        """Make the next ``n`` executed prompts fail (replaces pending counted failures)."""
        self._failures = [(exception_type, message)] * n

    def fail_always(self, exception_type: str | None, message: str = "") -> None:
        """Make every executed prompt fail; ``fail_always(None)`` stops it."""
        self._fail_always = None if exception_type is None else (exception_type, message)

    def out_of_memory_next(self) -> None:
        """Make the next executed prompt fail with ComfyUI's CUDA out-of-memory error."""
        self.fail_times(1, "torch.OutOfMemoryError", OOM_MESSAGE)

    def drop_http(self, times: int = 1, paths: Iterable[str] | None = None) -> None:
        """Abort the connection of the next ``times`` HTTP requests (under ``paths``, if given)."""
        self._drops_left = times
        self._drop_paths = None if paths is None else set(paths)

    def hide_node(self, class_type: str) -> None:
        """Remove a node type from ``/object_info`` and from what ``POST /prompt`` accepts."""
        self.hidden_nodes.add(class_type)

    def pause(self) -> None:
        """Hold queued prompts (the running one finishes); ``resume()`` lets them run."""
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    def has_socket(self, client_id: str) -> bool:
        return client_id in self._sockets

    async def socket_connected(self, client_id: str) -> None:
        """Return once a WebSocket with ``client_id`` is connected."""
        while client_id not in self._sockets:
            await self._socket_changed.wait()
            self._socket_changed.clear()

    def _take_failure(self) -> tuple[str, str] | None:
        if self._failures:
            return self._failures.pop(0)
        return self._fail_always

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        # IPPROTO_TCP, so asyncio sets TCP_NODELAY on each connection (no 40 ms Nagle stalls)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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
        """Shut the server down (connections refused); a restart forgets queue and history.

        HTTP goes first: while it winds down the running prompt is still reported running,
        never gone from a live server.
        """
        if self._server is not None and self._server_task is not None:
            self._server.should_exit = True
            await self._server_task
            self._server = self._server_task = None
        if self._executor_task is not None:
            self._executor_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._executor_task
            self._executor_task = None
        if lose_state:
            self._reset_state()

    async def __aenter__(self) -> ComfyUIDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- app ----------------------------------------------------------------------------------

    def _app(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        app = Starlette(
            routes=[
                Route("/system_stats", self._system_stats),
                Route("/comfygram/gc", self._gc_state),
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

        async def faults(scope: Scope, receive: Receive, send: Send) -> None:
            """HTTP faults in front of the routes: a delay, or no answer at all."""
            if scope["type"] == "http":
                if self.http_delay > 0:
                    await asyncio.sleep(self.http_delay)
                if self._drops_left > 0 and _matches(scope["path"], self._drop_paths):
                    self._drops_left -= 1
                    self.dropped_requests.append(scope["path"])
                    await self._abort_connection(receive)
                    return
            await app(scope, receive, send)

        return faults

    @staticmethod
    async def _abort_connection(receive: Receive) -> None:
        """Close the TCP connection without a byte of answer.

        uvicorn answers 500 to an app that returns without a response, unless the client is
        gone; so reach the connection's transport (the receive callable belongs to uvicorn's
        request cycle), abort it and let uvicorn notice the disconnect.
        """
        cycle = getattr(receive, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if transport is None:
            raise RuntimeError("drop_http: cannot reach the connection's transport")
        transport.abort()
        for _ in range(10):
            if getattr(cycle, "disconnected", True):
                break
            await asyncio.sleep(0)

    async def _system_stats(self, request: Request) -> Response:
        if not self.previews:
            return _json(SYSTEM_STATS)
        system = {**SYSTEM_STATS["system"]}
        system["argv"] = [*system["argv"], "--preview-method", "auto"]
        return _json({**SYSTEM_STATS, "system": system})

    async def _gc_state(self, request: Request) -> Response:
        """As the extension answers: nothing frozen until the first prompt (figures of 0.3.64)."""
        if not self.gc_extension:
            return Response("404: Not Found", status_code=404, media_type="text/plain")
        if not self.prompts_received:
            return _json(
                {
                    "frozen": 0,
                    "tracked": 536577,
                    "full_collection_before_freeze_ms": None,
                    "full_collections_ms": [],
                }
            )
        return _json(
            {
                "frozen": 586852,
                "tracked": 2977,
                "full_collection_before_freeze_ms": 301.2,
                "full_collections_ms": [0.9, 1.1],
            }
        )

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
        info.update(_model_nodes(self.models))
        for name in self.hidden_nodes:
            info.pop(name, None)
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
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            return Response(
                "500 Internal Server Error\n\nServer got itself in trouble",
                status_code=500,
                media_type="text/plain; charset=utf-8",
            )
        self.prompts_received.append(json.loads(raw))  # as sent: validation converts values
        if not isinstance(body, dict) or "prompt" not in body:
            return _rejection("no_prompt", "No prompt provided", "No prompt provided")
        prompt = body["prompt"]
        if not isinstance(prompt, dict):
            return _rejection("prompt_no_outputs", "Prompt has no outputs")
        checked = self._validate(prompt)
        if isinstance(checked, Response):
            return checked
        outputs, node_errors = checked
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        number = body["number"] if isinstance(body.get("number"), int | float) else self._number
        self._number = max(self._number, int(number)) + 1
        extra = dict(body.get("extra_data") or {})
        if body.get("client_id"):
            extra["client_id"] = body["client_id"]
        self.pending.append([number, prompt_id, prompt, extra, outputs])
        self.queued_at[prompt_id] = time.monotonic()
        self._wakeup.set()
        await self._broadcast_status()
        return _json({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    def _validate(self, prompt: dict[str, Any]) -> Response | tuple[list[str], dict[str, Any]]:
        """``execution.validate_prompt``: a 400 answer, or (outputs to run, node_errors)."""
        info = self._node_info()
        for node_id, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return _rejection(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                )
            if node["class_type"] not in info:
                return _rejection(
                    "invalid_prompt",
                    f"Cannot execute because node {node['class_type']} does not exist.",
                    f"Node ID '#{node_id}'",
                )
        outputs = [k for k, v in prompt.items() if info[v["class_type"]]["output_node"]]
        if not outputs:
            return _rejection("prompt_no_outputs", "Prompt has no outputs")
        validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
        node_errors: dict[str, Any] = {}
        good: list[str] = []
        output_reasons: list[dict[str, Any]] = []
        for output in outputs:
            try:
                valid, reasons = self._validate_node(prompt, output, validated, info)
            except Exception as exc:
                valid, reasons = (
                    False,
                    [
                        {
                            "type": "exception_during_validation",
                            "message": "Exception when validating node",
                            "details": str(exc),
                            "extra_info": {
                                "exception_type": _type_name(exc),
                                "traceback": TRACEBACK,
                            },
                        }
                    ],
                )
                validated[output] = (False, reasons)
            if valid:
                good.append(output)
                continue
            output_reasons += reasons
            for node_id, (ok, why) in validated.items():
                if not ok and why:
                    entry = node_errors.setdefault(
                        node_id,
                        {
                            "errors": why,
                            "dependent_outputs": [],
                            "class_type": prompt[node_id]["class_type"],
                        },
                    )
                    if output not in entry["dependent_outputs"]:
                        entry["dependent_outputs"].append(output)
        if not good:
            details = "\n".join(f"{r['message']}: {r['details']}" for r in output_reasons)
            return _rejection(
                "prompt_outputs_failed_validation",
                "Prompt outputs failed validation",
                details,
                node_errors,
            )
        return good, node_errors

    def _validate_node(
        self,
        prompt: dict[str, Any],
        node_id: str,
        validated: dict[str, tuple[bool, list[dict[str, Any]]]],
        info: dict[str, Any],
    ) -> tuple[bool, list[dict[str, Any]]]:
        """``execution.validate_inputs`` for one node and, through its links, its ancestors.

        A link to a missing node (KeyError) or output slot (IndexError) raises, as in ComfyUI,
        and is reported by the node that linked to this one.
        """
        if node_id in validated:
            return validated[node_id]
        validated[node_id] = (True, [])  # a cycle ends here
        node = prompt[node_id]
        kind = node["class_type"]
        inputs = node.get("inputs") or {}
        sections = info[kind]["input"]
        errors: list[dict[str, Any]] = []
        valid = True
        for category in ("required", "optional"):
            for name, spec in (sections.get(category) or {}).items():
                input_type = spec[0]
                extra = spec[1] if len(spec) > 1 else {}
                config = [input_type, extra]
                if name not in inputs:
                    if category == "required":
                        errors.append(
                            {
                                "type": "required_input_missing",
                                "message": "Required input is missing",
                                "details": name,
                                "extra_info": {"input_name": name},
                            }
                        )
                    continue
                value = inputs[name]
                if isinstance(value, list):
                    error = self._check_link(prompt, name, value, config, validated, info)
                    if error == "invalid":
                        valid = False
                    elif error is not None:
                        errors.append(error)
                    continue
                if kind == "LoadImage" and name == "image":
                    continue  # LoadImage.VALIDATE_INPUTS replaces the list check, below
                error, value = self._check_value(name, value, config)
                if error is not None:
                    errors.append(error)
                else:
                    inputs[name] = value
        if kind == "LoadImage" and isinstance(inputs.get("image"), str):
            image = inputs["image"]
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
        result = (valid and not errors, errors)
        validated[node_id] = result
        return result

    def _check_link(
        self,
        prompt: dict[str, Any],
        name: str,
        link: list[Any],
        config: list[Any],
        validated: dict[str, tuple[bool, list[dict[str, Any]]]],
        info: dict[str, Any],
    ) -> dict[str, Any] | str | None:
        """None if the linked input is fine, "invalid" if its source is, else the error."""
        if len(link) != 2:
            return {
                "type": "bad_linked_input",
                "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                "details": name,
                "extra_info": {"input_name": name, "input_config": config, "received_value": link},
            }
        source_id, slot = link
        returns = info[prompt[source_id]["class_type"]]["output"]
        if not isinstance(slot, int) or not 0 <= slot < len(returns):
            raise IndexError("tuple index out of range")
        received = returns[slot]
        if not _types_match(received, config[0]):
            return {
                "type": "return_type_mismatch",
                "message": "Return type mismatch between linked nodes",
                "details": f"{name}, received_type({received}) mismatch input_type({config[0]})",
                "extra_info": {
                    "input_name": name,
                    "input_config": config,
                    "received_type": received,
                    "linked_node": link,
                },
            }
        try:
            valid, _ = self._validate_node(prompt, source_id, validated, info)
        except Exception as exc:
            validated[source_id] = (
                False,
                [
                    {
                        "type": "exception_during_inner_validation",
                        "message": "Exception when validating inner node",
                        "details": str(exc),
                        "extra_info": {
                            "input_name": name,
                            "input_config": config,
                            "exception_message": str(exc),
                            "exception_type": _type_name(exc),
                            "traceback": TRACEBACK,
                            "linked_node": link,
                        },
                    }
                ],
            )
            return "invalid"
        return None if valid else "invalid"

    @staticmethod
    def _check_value(name: str, value: Any, config: list[Any]) -> tuple[dict[str, Any] | None, Any]:
        """Convert and range- or list-check a widget value: (error or None, converted value)."""
        input_type, extra = config
        converters: dict[str, Callable[[Any], Any]] = {
            "INT": int,
            "FLOAT": float,
            "STRING": str,
            "BOOLEAN": bool,
        }
        convert = converters.get(input_type) if isinstance(input_type, str) else None
        if convert is not None:
            try:
                value = convert(value)
            except Exception as exc:
                return {
                    "type": "invalid_input_type",
                    "message": f"Failed to convert an input value to a {input_type} value",
                    "details": f"{name}, {value}, {exc}",
                    "extra_info": {
                        "input_name": name,
                        "input_config": config,
                        "received_value": value,
                        "exception_message": str(exc),
                    },
                }, value
        limit = None
        if "min" in extra and value < extra["min"]:
            limit = ("value_smaller_than_min", f"Value {value} smaller than min of {extra['min']}")
        elif "max" in extra and value > extra["max"]:
            limit = ("value_bigger_than_max", f"Value {value} bigger than max of {extra['max']}")
        if limit is not None:
            return {
                "type": limit[0],
                "message": limit[1],
                "details": name,
                "extra_info": {"input_name": name, "input_config": config, "received_value": value},
            }, value
        if isinstance(input_type, list) and value not in input_type:
            # ComfyUI does not send back long lists (lots of scanned model files).
            long = len(input_type) > 20
            listed = f"(list of length {len(input_type)})" if long else str(input_type)
            return {
                "type": "value_not_in_list",
                "message": "Value not in list",
                "details": f"{name}: '{value}' not in {listed}",
                "extra_info": {
                    "input_name": name,
                    "input_config": None if long else config,
                    "received_value": value,
                },
            }, value
        return None, value

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
        self.interrupts.append(target)
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
            media_type=CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream"),
            headers={"Content-Disposition": f'filename="{path.name}"'},
        )

    async def _ws(self, ws: WebSocket) -> None:
        client_id = ws.query_params.get("clientId") or uuid.uuid4().hex
        self.socket_extension_offers.append(ws.headers.get("sec-websocket-extensions"))
        await ws.accept()
        self._sockets[client_id] = ws  # a newer socket with the same id replaces the older
        self._socket_changed.set()
        status = {"status": {"exec_info": {"queue_remaining": self._remaining()}}, "sid": client_id}
        await self._send(ws, "status", status)
        try:
            first = True
            while True:
                text = await ws.receive_text()
                # ComfyUI answers with its own feature flags only if the client's first
                # message offers the client's.
                with contextlib.suppress(ValueError, AttributeError):
                    message = json.loads(text)
                    if first and message.get("type") == "feature_flags":
                        flags = message.get("data")
                        self._client_flags[client_id] = flags if isinstance(flags, dict) else {}
                        await self._send(ws, "feature_flags", FEATURE_FLAGS)
                first = False
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if self._sockets.get(client_id) is ws:
                del self._sockets[client_id]
                self._client_flags.pop(client_id, None)

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
                await self._broadcast_status()  # ComfyUI's queue reports when a prompt is taken
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
        self.executed_prompt_ids.append(prompt_id)
        self.timeline.append((time.monotonic(), "start", prompt_id, client))
        try:
            await self._run_prompt(number, prompt_id, prompt, extra, outputs)
        finally:
            self.timeline.append((time.monotonic(), "end", prompt_id, client))

    async def _run_prompt(
        self,
        number: Any,
        prompt_id: str,
        prompt: dict[str, Any],
        extra: dict[str, Any],
        outputs: list[str],
    ) -> None:
        client = extra.get("client_id")
        messages: list[list[Any]] = []
        states: dict[str, dict[str, Any]] = {}

        async def emit(kind: str, data: dict[str, Any], keep: bool = False) -> None:
            if keep:
                messages.append([kind, data])
            if client is None and kind == "execution_interrupted":  # ComfyUI broadcasts it
                for ws in list(self._sockets.values()):
                    await self._send(ws, kind, data)
                return
            await self._to_client(client, kind, data)

        async def progress(node_id: str, value: float, maximum: float, state: str) -> None:
            states[node_id] = {
                "value": value,
                "max": maximum,
                "state": state,
                "node_id": node_id,
                "prompt_id": prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            await emit("progress_state", {"prompt_id": prompt_id, "nodes": states})

        await emit("execution_start", {"prompt_id": prompt_id, "timestamp": _now_ms()}, True)
        keys = self._cache_keys(prompt)
        if self.cache_enabled:  # like ComfyUI's classic cache: keep only this prompt's nodes
            live = set(keys.values())
            self._cache = {k: v for k, v in self._cache.items() if k in live}
        else:
            self._cache.clear()
        cached = {n for n in prompt if keys[n] in self._cache}
        fail = self._take_failure()
        fail_at: str | None = None
        if fail is not None:
            runs = [n for n in self._order(prompt, outputs, cached) if n not in cached]
            if not runs:  # all cached: the save node runs again, to fail
                cached -= set(outputs)
                runs = self._order(prompt, outputs, cached)
            fail_at = next(
                (n for n in reversed(runs) if prompt[n]["class_type"] not in OUTPUT_NODES), runs[0]
            )
        order = self._order(prompt, outputs, cached)
        await emit(
            "execution_cached",
            {
                "nodes": [n for n in prompt if n in cached],
                "prompt_id": prompt_id,
                "timestamp": _now_ms(),
            },
            True,
        )
        values: dict[str, Any] = {}
        for n in cached:
            value = self._cache[keys[n]][0]
            if value is not None:
                values[n] = value
        results: dict[str, Any] = {}
        executed: list[str] = []
        node_id = order[0]
        status_str = "success"
        try:
            for node_id in order:
                if node_id in cached:  # only output nodes get here when cached
                    output = self._cache[keys[node_id]][1]
                    await emit(
                        "executed",
                        {
                            "node": node_id,
                            "display_node": node_id,
                            "output": output,
                            "prompt_id": prompt_id,
                        },
                    )
                    if output is not None:
                        results[node_id] = output
                    await progress(node_id, 1, 1, "finished")
                    continue
                await progress(node_id, 0.0, 1.0, "running")
                await emit(
                    "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}
                )
                if self._interrupt:
                    raise _Interrupted
                # Previews come from sampling-like steps: not loaders, not save nodes.
                sampling = self.previews and prompt[node_id]["class_type"] not in PREVIEWLESS
                await self._delay(progress, emit, prompt_id, node_id, values, prompt, sampling)
                if fail is not None and node_id == fail_at:
                    raise _NodeFailed(*fail)
                if self.nodes_in_thread:
                    output = await asyncio.to_thread(
                        self._run_node, prompt[node_id], values, node_id
                    )
                else:
                    output = self._run_node(prompt[node_id], values, node_id)
                executed.append(node_id)
                if self.cache_enabled:
                    self._cache[keys[node_id]] = (values.get(node_id), output)
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
                done = states[node_id]["max"]
                await progress(node_id, done, done, "finished")
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
                "traceback": TRACEBACK,
                "current_inputs": self._current_inputs(prompt[node_id]),
                "current_outputs": list(prompt),
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

    async def _delay(
        self,
        progress: Progress,
        emit: Emit,
        prompt_id: str,
        node_id: str,
        values: dict[str, Any] | None = None,
        prompt: dict[str, Any] | None = None,
        sampling: bool = False,
    ) -> None:
        """Four ``progress`` steps over ``execution_delay``; a sampling-like step (``previews``
        on) always takes them and sends a preview frame at steps 2 and 4, in ComfyUI's order:
        ``progress_state`` and the metadata frame, ``progress``, then the legacy frame."""
        if self.execution_delay <= 0 and not sampling:
            return
        steps = 4
        for step in range(1, steps + 1):
            await asyncio.sleep(self.execution_delay / steps)
            await progress(node_id, step, steps, "running")
            preview = None
            if sampling and step % 2 == 0 and prompt is not None:
                preview = self._preview_image(prompt[node_id], values or {})
            client = self._running_client()
            with_metadata = bool(
                self._client_flags.get(client or "", {}).get("supports_preview_metadata")
            )
            if preview is not None and with_metadata:
                metadata = {
                    "node_id": node_id,
                    "prompt_id": prompt_id,
                    "display_node_id": node_id,
                    "parent_node_id": None,
                    "real_node_id": node_id,
                }
                await self._send_preview(client, preview_with_metadata(preview, metadata))
            await emit(
                "progress", {"value": step, "max": steps, "prompt_id": prompt_id, "node": node_id}
            )
            if preview is not None and not with_metadata:
                await self._send_preview(client, preview_frame(preview))
            if self._interrupt:
                raise _Interrupted

    def _running_client(self) -> str | None:
        running = self.running
        return running[3].get("client_id") if running else None

    async def _send_preview(self, client: str | None, frame: bytes) -> None:
        """A binary frame to the prompt's socket only (ComfyUI's ``send_bytes`` with its sid)."""
        ws = self._sockets.get(client) if client else None
        if ws is None or self.drop_websocket_messages:
            return
        self.previews_sent.append((client or "", struct.unpack(">I", frame[:4])[0]))
        with contextlib.suppress(Exception):
            await ws.send_bytes(frame)

    @staticmethod
    def _preview_image(node: dict[str, Any], values: dict[str, Any]) -> Image.Image:
        """What a sampler would preview: the node's first linked image, else mid grey."""
        for value in (node.get("inputs") or {}).values():
            if isinstance(value, list) and len(value) == 2:
                batch = values.get(str(value[0]))
                if isinstance(batch, list) and batch:
                    return batch[0].convert("RGB")
        return Image.new("RGB", (64, 64), (128, 128, 128))

    @staticmethod
    def _current_inputs(node: dict[str, Any]) -> dict[str, list[Any]]:
        """The failing node's inputs as ComfyUI formats them (a linked image is a tensor)."""
        return {
            name: ["tensor(<image omitted>)"] if isinstance(value, list) else [value]
            for name, value in (node.get("inputs") or {}).items()
        }

    def _cache_keys(self, prompt: dict[str, Any]) -> dict[str, str]:
        """Each node's cache key: its class, its inputs and its ancestors' keys.

        LoadImage's key includes the file's hash (its IS_CHANGED); node ids are not part of it.
        """
        keys: dict[str, str] = {}

        def key(node_id: str, path: frozenset[str]) -> str:
            if node_id in keys:
                return keys[node_id]
            node = prompt[node_id]
            parts: list[Any] = []
            for name, value in sorted((node.get("inputs") or {}).items()):
                if (
                    isinstance(value, list)
                    and len(value) == 2
                    and str(value[0]) in prompt
                    and str(value[0]) not in path
                ):
                    parts.append([name, key(str(value[0]), path | {node_id}), value[1]])
                else:
                    parts.append([name, value])
            changed = self._file_hash(node) if node["class_type"] == "LoadImage" else None
            text = json.dumps([node["class_type"], changed, parts], sort_keys=True, default=str)
            keys[node_id] = hashlib.sha256(text.encode()).hexdigest()
            return keys[node_id]

        for node_id in prompt:
            key(node_id, frozenset())
        return keys

    def _file_hash(self, node: dict[str, Any]) -> str:
        path = _safe_join(self.dirs["input"], str((node.get("inputs") or {}).get("image", "")))
        if path is None or not path.is_file():
            return ""
        return hashlib.sha256(path.read_bytes()).hexdigest()

    @staticmethod
    def _order(
        prompt: dict[str, Any], outputs: list[str], cached: set[str] | None = None
    ) -> list[str]:
        """Nodes to visit, inputs first; a cached node's inputs are not needed."""
        cached = cached or set()
        order: list[str] = []
        visiting: set[str] = set()

        def visit(node_id: str) -> None:
            if node_id in order or node_id in visiting:
                return
            visiting.add(node_id)
            if node_id not in cached:
                for value in (prompt[node_id].get("inputs") or {}).values():
                    if isinstance(value, list) and len(value) == 2:
                        source = str(value[0])
                        if source in prompt and source not in cached:
                            visit(source)
            order.append(node_id)

        for node_id in outputs:
            visit(node_id)
        return order

    def _run_node(
        self, node: dict[str, Any], values: dict[str, Any], node_id: str
    ) -> dict[str, Any] | None:
        """Run one node; an IMAGE or MASK value is a batch (a list of Pillow images)."""
        inputs = node.get("inputs") or {}

        def linked(name: str) -> Any:
            return values[str(inputs[name][0])]

        def each(name: str, change: Callable[[Image.Image], Image.Image]) -> list[Image.Image]:
            return [change(image) for image in linked(name)]

        kind = node["class_type"]
        if kind == "LoadImage":
            path = self.dirs["input"] / str(inputs["image"])
            try:
                with Image.open(path) as image:
                    values[node_id] = [image.convert("RGB")]
            except UnidentifiedImageError as exc:
                raise _NodeFailed(
                    "PIL.UnidentifiedImageError", f"cannot identify image file '{path}'\n"
                ) from exc
        elif kind == "ImageInvert":
            values[node_id] = each("image", lambda image: image.point(INVERT_TABLE * 3))
        elif kind == "ImageScaleBy":
            scale = float(inputs["scale_by"])

            def scaled(image: Image.Image) -> Image.Image:
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                return _upscale(image, size, str(inputs["upscale_method"]), "disabled")

            values[node_id] = each("image", scaled)
        elif kind == "ImageBlur":
            blur = ImageFilter.GaussianBlur(radius=int(inputs["blur_radius"]))
            values[node_id] = each("image", lambda image: image.filter(blur))
        elif kind == "ImageSharpen":
            # ComfyUI: x + 10 * alpha * (x - gaussian(x)), the Gaussian's sigma being
            # sigma * sharpen_radius pixels; UnsharpMask's percent is that factor.
            sharpen = ImageFilter.UnsharpMask(
                radius=int(inputs["sharpen_radius"]) * float(inputs["sigma"]),
                percent=round(float(inputs["alpha"]) * 1000),
                threshold=0,
            )
            values[node_id] = each("image", lambda image: image.filter(sharpen))
        elif kind == "ImageToMask":
            channel = MASK_CHANNELS.index(str(inputs["channel"]))
            if channel >= 3:  # LoadImage gives three channels
                raise _NodeFailed(
                    "IndexError",
                    f"index {channel} is out of bounds for dimension 3 with size 3\n",
                )
            values[node_id] = each("image", lambda image: image.getchannel(channel))
        elif kind == "MaskToImage":
            values[node_id] = each("mask", lambda mask: Image.merge("RGB", (mask, mask, mask)))
        elif kind == "ImageBlend":
            first, second = linked("image1"), linked("image2")
            length = max(len(first), len(second))
            values[node_id] = [
                _blend(
                    first[i % len(first)],
                    second[i % len(second)],
                    float(inputs["blend_factor"]),
                    str(inputs["blend_mode"]),
                )
                for i in range(length)
            ]
        elif kind == "ImageFlip":
            flip = FLIPS[str(inputs["flip_method"])]
            values[node_id] = each("image", lambda image: image.transpose(flip))
        elif kind == "ImageRotate":
            turn = ROTATIONS.get(str(inputs["rotation"]))
            values[node_id] = each("image", lambda image: image.transpose(turn) if turn else image)
        elif kind == "RepeatImageBatch":
            values[node_id] = list(linked("image")) * int(inputs["amount"])
        elif kind == "ImageBatch":
            first, second = linked("image1"), linked("image2")
            size = first[0].size  # ComfyUI scales the second batch to the first's size
            values[node_id] = list(first) + [
                _upscale(image, size, "bilinear", "center") for image in second
            ]
        elif kind == "ImageFromBatch":
            batch = linked("image")
            start = min(len(batch) - 1, int(inputs["batch_index"]))
            values[node_id] = list(batch[start : start + int(inputs["length"])])
        elif kind == "EmptyImage":
            color = int(inputs["color"])
            size = (int(inputs["width"]), int(inputs["height"]))
            fill = (color >> 16 & 0xFF, color >> 8 & 0xFF, color & 0xFF)
            values[node_id] = [Image.new("RGB", size, fill)] * int(inputs["batch_size"])
        elif kind == "ImageScale":
            values[node_id] = each(
                "image",
                lambda image: _scale(
                    image,
                    int(inputs["width"]),
                    int(inputs["height"]),
                    str(inputs["upscale_method"]),
                    str(inputs["crop"]),
                ),
            )
        elif kind == "ImageScaleToMaxDimension":
            largest, method = int(inputs["largest_size"]), str(inputs["upscale_method"])
            values[node_id] = each(
                "image",
                lambda image: _upscale(image, _max_dimension(image, largest), method, "disabled"),
            )
        elif kind == "ImageCompositeMasked":
            values[node_id] = _composite(
                linked("destination"),
                linked("source"),
                int(inputs["x"]),
                int(inputs["y"]),
                bool(inputs["resize_source"]),
                linked("mask") if "mask" in inputs else None,
            )
        elif kind == "ImageStitch":
            first = linked("image1")
            if "image2" not in inputs:
                values[node_id] = first
            else:
                second = linked("image2")
                length = max(len(first), len(second))
                values[node_id] = [
                    _stitch(
                        a,
                        b,
                        str(inputs["direction"]),
                        bool(inputs["match_image_size"]),
                        int(inputs["spacing_width"]),
                        str(inputs["spacing_color"]),
                    )
                    for a, b in zip(_pad_to(first, length), _pad_to(second, length), strict=True)
                ]
        elif kind == "CreateVideo":
            values[node_id] = _Video(list(linked("images")), float(inputs["fps"]))
        elif kind in OUTPUT_NODES:
            return self._save(kind, inputs, linked("video" if kind == "SaveVideo" else "images"))
        else:  # model loaders and VAE nodes are listed and validated only
            raise _NodeFailed("RuntimeError", f"ComfyUIDouble does not run {kind}\n")
        return None

    def _save(self, kind: str, inputs: dict[str, Any], value: Any) -> dict[str, Any]:
        """An output node's files and its UI output, shaped as ComfyUI reports them: every kind
        under ``images``; a video or an animation is one file with ``animated: [true]``."""
        kind_dir = "temp" if kind == "PreviewImage" else "output"
        default = "video/ComfyUI" if kind == "SaveVideo" else "ComfyUI"
        prefix = (
            "ComfyUI_temp"
            if kind == "PreviewImage"
            else str(inputs.get("filename_prefix", default))
        )
        subfolder, _, stem = prefix.rpartition("/")
        folder = _safe_join(self.dirs[kind_dir], subfolder)
        if folder is None:
            raise _NodeFailed(
                "Exception",
                "**** ERROR: Saving image outside the output folder is not allowed.\n",
            )
        folder.mkdir(parents=True, exist_ok=True)
        suffix = {"SaveVideo": "mp4", "SaveAnimatedWEBP": "webp"}.get(kind, "png")

        def next_name() -> str:
            counter = 1
            while (folder / f"{stem}_{counter:05}_.{suffix}").exists():
                counter += 1
            return f"{stem}_{counter:05}_.{suffix}"

        def entry(name: str) -> dict[str, Any]:
            return {"filename": name, "subfolder": subfolder, "type": kind_dir}

        if kind in ("SaveImage", "PreviewImage"):  # one file per image of the batch
            files = []
            for image in value:
                name = next_name()
                buffer = io.BytesIO()
                image.save(buffer, "PNG")
                (folder / name).write_bytes(buffer.getvalue())
                files.append(entry(name))
            return {"images": files}
        name = next_name()
        if kind == "SaveVideo":
            data = _mp4(value)
        else:
            frames = [image.convert("RGB") for image in value]
            duration = int(1000.0 / float(inputs["fps"]))
            buffer = io.BytesIO()
            if kind == "SaveAnimatedWEBP":
                options = {
                    "lossless": bool(inputs["lossless"]),
                    "quality": int(inputs["quality"]),
                    "method": WEBP_METHODS[str(inputs["method"])],
                }
                frames[0].save(
                    buffer,
                    "WEBP",
                    save_all=True,
                    append_images=frames[1:],
                    duration=duration,
                    **options,
                )
            else:
                frames[0].save(
                    buffer,
                    "PNG",
                    save_all=True,
                    append_images=frames[1:],
                    duration=duration,
                    compress_level=int(inputs["compress_level"]),
                )
            data = buffer.getvalue()
        (folder / name).write_bytes(data)
        return {"images": [entry(name)], "animated": [True]}
