"""Turning a job and its preset into the ComfyUI prompt for one attempt, and finding what that
attempt saved."""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from comfygram.comfyui import OutputImage
from comfygram.presets import Preset, SeedMode

# Prompt ids are uuid5(job id, attempt): after a crash the next worker finds the prompt again.
_PROMPT_NAMESPACE = uuid.UUID("6f1c9f64-8a4e-4d47-9a57-5d0cbe3bb8a1")
_MAX_SEED = 2**53 - 1  # what ComfyUI's seed widgets accept without rounding in the browser


def prompt_id_for(job_id: str, attempt: int) -> str:
    return str(uuid.uuid5(_PROMPT_NAMESPACE, f"{job_id}:{attempt}"))


def output_prefix(job_id: str, attempt: int) -> str:
    """The save node's prefix: unique per attempt, so ComfyUI's cache cannot return old files."""
    return f"comfygram/{job_id}-{attempt}"


def input_name(job_id: str, attempt: int, index: int, extension: str) -> str:
    """The uploaded name of the job's photo for slot ``index`` (0 keeps the one-photo name)."""
    slot = "" if index == 0 else f"-{index}"
    return f"comfygram-{job_id}-{attempt}{slot}{extension}"


def build_workflow(
    preset: Preset,
    *,
    photos: Sequence[str],
    prompt: str | None,
    chosen: Mapping[str, str],
    job_id: str,
    attempt: int,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """The preset's workflow with this job's photos (uploaded names, in slot order), text,
    chosen options, seeds and output prefix."""
    workflow = preset.contract.apply(
        preset.workflow,
        photos=photos,
        prompt=prompt,
        chosen=chosen,
        output_prefix=output_prefix(job_id, attempt),
    )
    if preset.seed_mode is SeedMode.RANDOM:
        rng = rng or random.SystemRandom()
        for seed in preset.seed_inputs:
            workflow[seed.node]["inputs"][seed.input] = rng.randint(0, _MAX_SEED)
    return workflow


def our_outputs(
    outputs: Sequence[OutputImage], job_id: str, attempt: int, node: str
) -> list[OutputImage]:
    """Every file this attempt's prefix saved from the preset's output node, in ComfyUI's order
    (a batch as ``prefix_00001_``, ``prefix_00002_``...). Empty when ComfyUI handed back only
    other files: its cache, an earlier attempt, or another node."""
    folder, _, stem = output_prefix(job_id, attempt).rpartition("/")
    return [
        image
        for image in outputs
        if (not image.node or image.node == node)
        and image.subfolder.strip("/") == folder
        and image.filename.startswith(f"{stem}_")
    ]
