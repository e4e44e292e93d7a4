"""A stand-in for a GPU's share of a job, for bench/fast_path.py --gpu-ms (never deployed).

On a GPU server ComfyUI's prompt thread spends a sampler's time waiting on the device with the
GIL released, and the CPU is free for the rest of the system; on this CPU-only machine the
`invert` preset's whole execution is CPU work that competes with the backend, the worker and the
database for the same cores. `ComfygramBenchGpuWait` passes its image through after sleeping the
given milliseconds (which, like a CUDA wait, releases the GIL), so a workflow
LoadImage -> wait -> ImageInvert -> SaveImage keeps a real job's CPU parts (decode, encode) and
models its GPU part as time the CPU is free.
"""

from __future__ import annotations

import time
from typing import Any


class ComfygramBenchGpuWait:
    CATEGORY = "comfygram/bench"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "wait"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        milliseconds = ("INT", {"default": 50, "min": 0, "max": 60_000})
        return {"required": {"image": ("IMAGE",), "milliseconds": milliseconds}}

    def wait(self, image: Any, milliseconds: int) -> tuple[Any]:
        time.sleep(milliseconds / 1000)
        return (image,)


NODE_CLASS_MAPPINGS = {"ComfygramBenchGpuWait": ComfygramBenchGpuWait}
NODE_DISPLAY_NAME_MAPPINGS = {"ComfygramBenchGpuWait": "GPU stand-in (comfygram bench)"}
