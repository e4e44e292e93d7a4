"""Turning a job and its preset into the ComfyUI prompt for one attempt."""

from __future__ import annotations

import random
import uuid
from typing import Any

from comfygram.comfyui import OutputImage
from comfygram.presets import Preset, SeedMode

# Prompt ids are uuid5(job id, attempt): after a crash the next worker finds the prompt again.
_PROMPT_NAMESPACE = uuid.UUID("6f1c9f64-8a4e-4d47-9a57-5d0cbe3bb8a1")
_MAX_SEED = 2**53 - 1  # what ComfyUI's seed widgets accept without rounding in the browser


def prompt_id_for(job_id: str, attempt: int) -> str:
    return str(uuid.uuid5(_PROMPT_NAMESPACE, f"{job_id}:{attempt}"))


def output_prefix(job_id: str, attempt: int) -> str:
    """The SaveImage prefix: unique per attempt, so ComfyUI's cache cannot return old files."""
    return f"comfygram/{job_id}-{attempt}"


def input_name(job_id: str, attempt: int, extension: str) -> str:
    return f"comfygram-{job_id}-{attempt}{extension}"


def build_workflow(
    preset: Preset,
    *,
    image: str,
    prompt: str | None,
    job_id: str,
    attempt: int,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """The preset's workflow with this job's image, text, seeds and output prefix."""
    workflow = preset.contract.apply(
        preset.workflow,
        photos=[image],
        prompt=prompt,
        chosen={},
        output_prefix=output_prefix(job_id, attempt),
    )
    if preset.seed_mode is SeedMode.RANDOM:
        rng = rng or random.SystemRandom()
        for seed in preset.seed_inputs:
            workflow[seed.node]["inputs"][seed.input] = rng.randint(0, _MAX_SEED)
    return workflow


def our_output(outputs: list[OutputImage], job_id: str, attempt: int) -> OutputImage | None:
    """The image this attempt saved, or None when ComfyUI handed back someone else's file."""
    folder, _, stem = output_prefix(job_id, attempt).rpartition("/")
    for image in outputs:
        if image.subfolder.strip("/") == folder and image.filename.startswith(f"{stem}_"):
            return image
    return None
