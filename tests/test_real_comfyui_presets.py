"""The built-in presets against a real ComfyUI 0.3.64: `comfygram presets check`, doctor, and
ComfyUI's own validation of each workflow as the worker builds it.

The model presets (animate, edit, kontext, oil, scene) have no weights here: without model files
they must be reported missing, by file name; with empty placeholder files of those names ComfyUI's
``POST /prompt`` validation passes (it only compares names). Such a prompt must not run, so a
blocker runs first and the prompt is deleted from the queue before ComfyUI reaches it. Every
choice of every option is validated, as each one changes the workflow. (The model-free rich
presets run for real in ``test_real_comfyui_rich_presets.py``.)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from comfygram import doctor
from comfygram.comfyui import ComfyUIClient, PromptRejected
from comfygram.presets import Preset, compatibility_problems, load_preset, load_presets
from comfygram.settings import Settings
from comfygram.worker import workflow
from tests import images
from tests.real_comfyui import (
    RealComfyUI,
    absent_models,
    blocker,
    model_placeholders,
    new_prompt_id,
    real_comfyui,
)

__all__ = ["real_comfyui"]  # the fixture, imported for pytest
pytestmark = pytest.mark.real_comfyui

PRESETS = {p.slug: p for p in load_presets()}
MODEL_FREE = ("bw", "fade", "invert", "pair", "sharpen", "upscale2x", "variants")
WITH_MODELS = ("animate", "edit", "kontext", "oil", "scene")
# what `presets check` covers: kontext ships disabled (see docs/presets.md, Licences)
ENABLED_WITH_MODELS = ("animate", "edit", "oil", "scene")
ALL_MODELS = sorted({m for p in PRESETS.values() for m in p.models}, key=str)


def test_the_builtin_presets_are_the_ones_this_tier_covers():
    assert set(PRESETS) == {*MODEL_FREE, *WITH_MODELS}
    assert all(not PRESETS[s].models for s in MODEL_FREE)
    assert all(PRESETS[s].models for s in WITH_MODELS)


@pytest.fixture
async def client(real_comfyui: RealComfyUI) -> AsyncIterator[ComfyUIClient]:
    async with ComfyUIClient(real_comfyui.url, f"presets-{uuid.uuid4().hex}", timeout=10) as c:
        yield c


def presets_check(url: str, presets_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`comfygram presets check` as an operator runs it (a process; settings from the env)."""
    env = {**os.environ, "API_TOKEN": "t" * 16, "COMFYUI_URL": url}
    env.pop("PRESETS_DIR", None)
    if presets_dir is not None:
        env["PRESETS_DIR"] = str(presets_dir)
    return subprocess.run(
        [sys.executable, "-m", "comfygram", "presets", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def rows(output: str) -> dict[str, tuple[str, str]]:
    """`preset <slug>` -> (status, detail) from the rendered check table."""
    found = {}
    for line in output.splitlines()[1:]:
        name, status, *detail = (part.strip() for part in line.split(" | "))
        if name.startswith("preset "):
            found[name.removeprefix("preset ")] = (status, " | ".join(detail))
    return found


async def test_presets_check_without_model_files_names_each_missing_file(
    real_comfyui: RealComfyUI,
):
    result = await asyncio.to_thread(presets_check, real_comfyui.url)
    checked = rows(result.stdout)
    for slug in MODEL_FREE:
        assert checked[slug] == ("OK", "runnable"), result.stdout
    assert "kontext" not in checked  # disabled: not a deploy gate's business
    absent = {slug: absent_models(PRESETS[slug].models) for slug in ENABLED_WITH_MODELS}
    if not any(absent.values()):
        pytest.skip("every model file the presets need is installed here")
    assert result.returncode == 1, result.stdout + result.stderr
    for slug, files in absent.items():
        status, detail = checked[slug]
        assert status == ("WARN" if files else "OK"), result.stdout
        for model in files:
            assert f"model file {model.folder}/{model.name}" in detail and "missing" in detail


async def test_presets_check_passes_with_placeholder_model_files(real_comfyui: RealComfyUI):
    with model_placeholders(ALL_MODELS):
        result = await asyncio.to_thread(presets_check, real_comfyui.url)
        everything = await doctor.check_comfyui(
            Settings(_env_file=None, comfyui_url=real_comfyui.url)
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert rows(result.stdout) == {
        slug: ("OK", "runnable") for slug in (*MODEL_FREE, *ENABLED_WITH_MODELS)
    }
    # doctor checks disabled presets too, so kontext is there as well
    by_name = {c.name: c for c in everything}
    assert by_name["comfyui"].status == doctor.OK and "0.3.64" in by_name["comfyui"].detail
    # The test server loads comfygram's extension, as deployed (frozen once a prompt ran).
    assert by_name["comfyui GC"].status == doctor.OK, by_name["comfyui GC"]
    assert by_name["comfyui GC"].detail.startswith("start-up objects frozen")
    # With the models in place, the presets that ask for previews can run, and this ComfyUI
    # (started without --preview-method) would not send them: doctor says so, presets check
    # does not fail on it.
    previews = by_name["comfyui previews"]
    assert previews.status == doctor.WARN
    assert "animate" in previews.detail and "scene" in previews.detail
    assert "previews" not in result.stdout
    for slug in PRESETS:
        assert (by_name[f"preset {slug}"].status, by_name[f"preset {slug}"].detail) == (
            doctor.OK,
            "runnable",
        )


async def test_doctor_reports_the_model_presets_missing_without_their_files(
    real_comfyui: RealComfyUI,
):
    checks = await doctor.check_comfyui(Settings(_env_file=None, comfyui_url=real_comfyui.url))
    by_name = {c.name: c for c in checks}
    for slug in MODEL_FREE:
        assert by_name[f"preset {slug}"].status == doctor.OK
    for slug in WITH_MODELS:
        files = absent_models(PRESETS[slug].models)
        check = by_name[f"preset {slug}"]
        assert check.status == (doctor.WARN if files else doctor.OK)
        for model in files:
            assert f"{model.folder}/{model.name}" in check.detail


def every_choice(preset: Preset) -> list[dict[str, str]]:
    """The default choices, then each other choice of each option once (with the defaults)."""
    found = [preset.contract.defaults()]
    for option in preset.contract.options:
        for choice in option.choices:
            if choice.id != option.default:
                found.append({**preset.contract.defaults(), option.id: choice.id})
    return found


async def submitted_prompt(
    client: ComfyUIClient, preset: Preset, prompt_id: str, chosen: dict[str, str] | None = None
) -> None:
    """Upload a photo per slot and submit the preset's workflow as the worker builds it for a
    job (photos, prompt, chosen options, seeds, output prefix)."""
    job_id = uuid.uuid4().hex
    names = [
        await client.upload_image(images.png(64, 64), workflow.input_name(job_id, 0, i, ".png"))
        for i in range(len(preset.contract.photos))
    ]
    built = workflow.build_workflow(
        preset,
        photos=names,
        prompt="make the sky stormy",
        chosen=preset.contract.defaults() if chosen is None else chosen,
        job_id=job_id,
        attempt=0,
    )
    await client.submit(built, prompt_id)


async def test_model_presets_pass_comfyuis_validation_with_placeholder_files(
    client: ComfyUIClient,
):
    busy = new_prompt_id()
    await client.submit(blocker(nodes=20), busy)
    queued = {
        (slug, json.dumps(chosen)): new_prompt_id()
        for slug in WITH_MODELS
        for chosen in every_choice(PRESETS[slug])
    }
    assert len(queued) > len(WITH_MODELS)  # animate's shape and length choices are in
    try:
        with model_placeholders(ALL_MODELS):
            for (slug, chosen), prompt_id in queued.items():
                # accepted: no raise
                await submitted_prompt(client, PRESETS[slug], prompt_id, json.loads(chosen))
        running, pending = await client.queue()
        assert running == [busy], "the blocker ended before the model prompts were removed"
        assert set(queued.values()) <= set(pending)
    finally:
        await client.delete_queued(list(queued.values()))
        await client.interrupt(busy)
    assert not set(queued.values()) & set((await client.queue())[1])
    deadline = time.monotonic() + 15
    while (await client.queue())[0] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for prompt_id in queued.values():
        assert await client.history(prompt_id) is None  # never ran


@pytest.mark.parametrize("slug", WITH_MODELS)
async def test_model_presets_are_rejected_without_their_files(client: ComfyUIClient, slug: str):
    files = absent_models(PRESETS[slug].models)
    if not files:
        pytest.skip(f"every model file {slug} needs is installed here")
    with pytest.raises(PromptRejected) as rejected:
        await submitted_prompt(client, PRESETS[slug], new_prompt_id())
    # ComfyUI names at least one of them; the preset check names them all (above).
    assert any(f"needs the model file '{m.name}'" in rejected.value.message for m in files)


def write_preset(folder: Path, slug: str, nodes: dict) -> Path:
    """A preset LoadImage -> <nodes> -> SaveImage; ``nodes`` ends in node "9" (an IMAGE)."""
    folder = folder / slug
    folder.mkdir(parents=True)
    (folder / "preset.toml").write_text(
        f'slug = "{slug}"\nprice = 1\n[title]\nen = "T"\nru = "T"\n'
        '[description]\nen = ""\nru = ""\n[image_input]\nnode = "1"\n[output]\nnode = "10"\n'
    )
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        **nodes,
        "10": {
            "class_type": "SaveImage",
            "inputs": {"images": ["9", 0], "filename_prefix": "comfygram/x"},
        },
    }
    (folder / "workflow.json").write_text(json.dumps(graph))
    return folder


async def test_newer_style_inputs_are_checked_against_object_info(
    client: ComfyUIClient, tmp_path: Path
):
    """UpscaleModelLoader and ImageScaleToTotalPixels list their choices as ["COMBO", {options}]
    and ComfyUI accepts any value there at POST /prompt; only the preset check can catch it."""
    missing = f"no-such-upscaler-{uuid.uuid4().hex[:8]}.pth"
    upscaler = load_preset(
        write_preset(
            tmp_path,
            "upscaler",
            {
                "8": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": missing}},
                "9": {
                    "class_type": "ImageUpscaleWithModel",
                    "inputs": {"upscale_model": ["8", 0], "image": ["1", 0]},
                },
            },
        )
    )
    scaler = load_preset(
        write_preset(
            tmp_path,
            "scaler",
            {
                "9": {
                    "class_type": "ImageScaleToTotalPixels",
                    "inputs": {"image": ["1", 0], "upscale_method": "lanczos3", "megapixels": 0.01},
                }
            },
        )
    )
    info = await client.object_info()
    [problem] = compatibility_problems(upscaler, info)
    assert f"model file upscale_models/{missing} (node 8, UpscaleModelLoader) is missing" in problem
    [problem] = compatibility_problems(scaler, info)
    assert "upscale_method value 'lanczos3' (node 9, ImageScaleToTotalPixels)" in problem
    assert "lanczos" in problem  # what the server offers instead
    assert compatibility_problems(PRESETS["upscale2x"], info) == []

    # ComfyUI itself takes both (they would fail only at run time): hence the check above.
    busy = new_prompt_id()
    await client.submit(blocker(nodes=10), busy)
    ids = [new_prompt_id(), new_prompt_id()]
    try:
        for preset, prompt_id in zip((upscaler, scaler), ids, strict=True):
            await submitted_prompt(client, preset, prompt_id)
    finally:
        await client.delete_queued(ids)
        await client.interrupt(busy)
    with model_placeholders([m for m in upscaler.models]):
        assert compatibility_problems(upscaler, await client.object_info()) == []
