"""Preset loader: built-ins, model derivation, manifest validation, extra-dir overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfygram.presets import (
    BUILTIN_DIR,
    ModelFile,
    NodeInput,
    PresetError,
    PromptSlot,
    SeedMode,
    derive_models,
    load_preset,
    load_presets,
)

MODEL_FREE = ("bw", "sharpen", "upscale2x", "invert")
BUILTIN = ("bw", "sharpen", "upscale2x", "invert", "oil", "edit", "kontext")
# Built-ins that ship switched off (FLUX.1 Kontext [dev] is licensed for non-commercial use only).
DISABLED = {"kontext"}

# Input names of every node class the built-ins use, as ComfyUI 0.3.64 defines them
# (nodes.py, comfy_extras/nodes_post_processing.py, nodes_mask.py, nodes_flux.py,
# nodes_edit_model.py, nodes_qwen.py, nodes_model_advanced.py, nodes_cfg.py). Optional inputs
# count too. Catches typos that ComfyUI would only report at submit time.
NODE_INPUTS: dict[str, set[str]] = {
    "LoadImage": {"image"},
    "SaveImage": {"images", "filename_prefix"},
    "ImageInvert": {"image"},
    "ImageToMask": {"image", "channel"},
    "MaskToImage": {"mask"},
    "ImageBlend": {"image1", "image2", "blend_factor", "blend_mode"},
    "ImageSharpen": {"image", "sharpen_radius", "sigma", "alpha"},
    "ImageScaleBy": {"image", "upscale_method", "scale_by"},
    "ImageScaleToTotalPixels": {"image", "upscale_method", "megapixels"},
    "CheckpointLoaderSimple": {"ckpt_name"},
    "CLIPTextEncode": {"text", "clip"},
    "VAEEncode": {"pixels", "vae"},
    "VAEDecode": {"samples", "vae"},
    "KSampler": {
        "model",
        "seed",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "positive",
        "negative",
        "latent_image",
        "denoise",
    },
    "UNETLoader": {"unet_name", "weight_dtype"},
    "DualCLIPLoader": {"clip_name1", "clip_name2", "type", "device"},
    "VAELoader": {"vae_name"},
    "FluxKontextImageScale": {"image"},
    "ReferenceLatent": {"conditioning", "latent"},
    "FluxGuidance": {"conditioning", "guidance"},
    "ConditioningZeroOut": {"conditioning"},
    "CLIPLoader": {"clip_name", "type", "device"},
    "TextEncodeQwenImageEdit": {"clip", "prompt", "vae", "image"},
    "ModelSamplingAuraFlow": {"model", "shift"},
    "CFGNorm": {"model", "strength"},
}
# Nodes that ship with ComfyUI and need no model file.
MODEL_FREE_NODES = {
    "LoadImage",
    "SaveImage",
    "ImageInvert",
    "ImageToMask",
    "MaskToImage",
    "ImageBlend",
    "ImageSharpen",
    "ImageScaleBy",
}


def builtin(slug: str):
    return load_preset(BUILTIN_DIR / slug)


def test_every_builtin_loads() -> None:
    presets = load_presets()
    slugs = [p.slug for p in presets]
    assert slugs == sorted(slugs)
    assert set(BUILTIN) <= set(slugs)
    for p in presets:
        assert p.title["en"] and p.title["ru"]
        assert p.description["en"] and p.description["ru"]
        assert p.enabled is (p.slug not in DISABLED), p.slug
        assert p.contract.output.node in p.workflow


@pytest.mark.parametrize("slug", BUILTIN)
def test_builtin_nodes_use_real_input_names(slug: str) -> None:
    for node_id, node in builtin(slug).workflow.items():
        expected = NODE_INPUTS.get(node["class_type"])
        assert expected is not None, f"{slug}: unchecked class {node['class_type']}"
        assert set(node["inputs"]) == expected, f"{slug} node {node_id}"


@pytest.mark.parametrize("slug", MODEL_FREE)
def test_model_free_presets(slug: str) -> None:
    preset = builtin(slug)
    assert preset.models == ()
    assert {n["class_type"] for n in preset.workflow.values()} <= MODEL_FREE_NODES
    assert not preset.takes_prompt


def test_prices_and_documents() -> None:
    prices = {p.slug: p.price for p in load_presets()}
    assert prices["bw"] == 1 and prices["sharpen"] == 1 and prices["upscale2x"] == 2
    assert prices["oil"] == 5 and prices["edit"] == 10 and prices["kontext"] == 10
    assert builtin("upscale2x").send_document
    scale = builtin("upscale2x").workflow["2"]["inputs"]
    assert scale["upscale_method"] == "lanczos" and scale["scale_by"] == 2.0


def test_oil_models_and_seed() -> None:
    oil = builtin("oil")
    assert oil.models == (ModelFile(folder="checkpoints", name="v1-5-pruned-emaonly.safetensors"),)
    assert oil.seed_inputs == (NodeInput(node="3", input="seed"),)
    assert oil.seed_mode is SeedMode.RANDOM
    assert not oil.takes_prompt
    assert 0.4 <= oil.workflow["3"]["inputs"]["denoise"] <= 0.7


def test_edit_is_qwen_image_edit() -> None:
    edit = builtin("edit")
    assert edit.enabled
    assert edit.models == (
        ModelFile(folder="diffusion_models", name="qwen_image_edit_fp8_e4m3fn.safetensors"),
        ModelFile(folder="text_encoders", name="qwen_2.5_vl_7b_fp8_scaled.safetensors"),
        ModelFile(folder="vae", name="qwen_image_vae.safetensors"),
    )
    assert edit.takes_prompt
    assert edit.contract.prompt == PromptSlot(node="76", input="prompt")
    wf = edit.workflow
    sampler = wf["3"]["inputs"]
    assert wf["3"]["class_type"] == "KSampler"
    assert (sampler["steps"], sampler["cfg"], sampler["denoise"]) == (20, 2.5, 1.0)
    assert (sampler["sampler_name"], sampler["scheduler"]) == ("euler", "simple")
    assert edit.seed_inputs == (NodeInput(node="3", input="seed"),)
    assert edit.seed_mode is SeedMode.RANDOM

    # The prompt goes into the positive encoder; the negative one is the same encoder, empty.
    positive, negative = wf[sampler["positive"][0]], wf[sampler["negative"][0]]
    assert sampler["positive"] == ["76", 0]
    assert positive["class_type"] == negative["class_type"] == "TextEncodeQwenImageEdit"
    assert negative["inputs"]["prompt"] == ""
    # Both encoders see the scaled photo and the VAE (for the reference latent).
    scale = wf["93"]
    assert scale["class_type"] == "ImageScaleToTotalPixels"
    assert scale["inputs"]["image"] == [edit.contract.photos[0].node, 0]
    assert scale["inputs"]["megapixels"] == 1.0
    for encoder in (positive, negative):
        assert encoder["inputs"]["image"] == ["93", 0]
        assert encoder["inputs"]["vae"] == ["39", 0]
        assert encoder["inputs"]["clip"] == ["38", 0]
    latent = wf[sampler["latent_image"][0]]
    assert latent["class_type"] == "VAEEncode" and latent["inputs"]["pixels"] == ["93", 0]

    # UNETLoader -> ModelSamplingAuraFlow (shift 3) -> CFGNorm (strength 1) -> KSampler.
    cfg_norm = wf[sampler["model"][0]]
    assert cfg_norm["class_type"] == "CFGNorm" and cfg_norm["inputs"]["strength"] == 1.0
    aura = wf[cfg_norm["inputs"]["model"][0]]
    assert aura["class_type"] == "ModelSamplingAuraFlow" and aura["inputs"]["shift"] == 3.0
    assert wf[aura["inputs"]["model"][0]]["class_type"] == "UNETLoader"
    assert wf["38"]["class_type"] == "CLIPLoader" and wf["38"]["inputs"]["type"] == "qwen_image"
    assert not any(n["class_type"].startswith("Lora") for n in wf.values())


def test_kontext_is_disabled_flux_kontext() -> None:
    kontext = builtin("kontext")
    assert kontext.slug == "kontext"
    assert not kontext.enabled
    assert kontext.models == (
        ModelFile(folder="diffusion_models", name="flux1-dev-kontext_fp8_scaled.safetensors"),
        ModelFile(folder="text_encoders", name="clip_l.safetensors"),
        ModelFile(folder="text_encoders", name="t5xxl_fp8_e4m3fn_scaled.safetensors"),
        ModelFile(folder="vae", name="ae.safetensors"),
    )
    assert kontext.takes_prompt
    assert kontext.contract.prompt == PromptSlot(node="6", input="text")
    wf = kontext.workflow
    assert wf["6"]["class_type"] == "CLIPTextEncode"
    sampler = wf["31"]["inputs"]
    assert (sampler["cfg"], sampler["sampler_name"], sampler["scheduler"]) == (
        1.0,
        "euler",
        "simple",
    )
    assert (sampler["steps"], sampler["denoise"]) == (20, 1.0)
    assert wf[sampler["positive"][0]]["class_type"] == "FluxGuidance"
    assert wf[sampler["positive"][0]]["inputs"]["guidance"] == 2.5
    assert wf[sampler["negative"][0]]["class_type"] == "ConditioningZeroOut"
    assert wf[sampler["latent_image"][0]]["class_type"] == "VAEEncode"
    assert wf["38"]["inputs"]["type"] == "flux"
    assert kontext.seed_inputs == (NodeInput(node="31", input="seed"),)
    # The manifest says why it is off, so nobody flips it on without reading.
    manifest = (BUILTIN_DIR / "kontext" / "preset.toml").read_text(encoding="utf-8")
    assert "Non-Commercial" in manifest and "Black Forest Labs" in manifest


def test_enabling_kontext_needs_only_an_override(tmp_path: Path) -> None:
    folder = tmp_path / "extra" / "kontext"
    folder.mkdir(parents=True)
    source = BUILTIN_DIR / "kontext"
    toml = (source / "preset.toml").read_text(encoding="utf-8")
    assert toml.count("enabled = false") == 1
    (folder / "preset.toml").write_text(
        toml.replace("enabled = false", "enabled = true"), encoding="utf-8"
    )
    (folder / "workflow.json").write_bytes((source / "workflow.json").read_bytes())
    presets = {p.slug: p for p in load_presets(tmp_path / "extra")}
    assert presets["kontext"].enabled and presets["edit"].enabled


def test_derive_models_mapping() -> None:
    workflow = {
        "1": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vision.safetensors"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "t5.safetensors", "type": "sd3"}},
        "3": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x.pth"}},
        "4": {"class_type": "SomethingElse", "inputs": {"model_name": "not-a-file"}},
        "5": {
            "class_type": "LoraLoader",
            "inputs": {"lora_name": "a.safetensors", "model": ["6", 0]},
        },
        "6": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
        "7": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
        "8": {"class_type": "VAELoader", "inputs": {"vae_name": ["9", 0]}},
        "9": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "c.safetensors"}},
        "10": {"class_type": "StyleModelLoader", "inputs": {"style_model_name": "s.safetensors"}},
        "11": {"class_type": "QuadrupleCLIPLoader", "inputs": {"clip_name4": "q.safetensors"}},
    }
    assert derive_models(workflow) == (
        ModelFile(folder="checkpoints", name="x.safetensors"),
        ModelFile(folder="clip_vision", name="vision.safetensors"),
        ModelFile(folder="controlnet", name="c.safetensors"),
        ModelFile(folder="loras", name="a.safetensors"),
        ModelFile(folder="style_models", name="s.safetensors"),
        ModelFile(folder="text_encoders", name="q.safetensors"),
        ModelFile(folder="text_encoders", name="t5.safetensors"),
        ModelFile(folder="upscale_models", name="4x.pth"),
    )


def test_to_manifest_is_json() -> None:
    for preset in load_presets():
        manifest = preset.to_manifest()
        assert "workflow" not in manifest
        assert json.loads(json.dumps(manifest)) == manifest
    edit = builtin("edit").to_manifest()
    assert edit["enabled"] is True
    assert edit["contract"]["prompt"] == {"node": "76", "input": "prompt", "required": True}
    assert edit["seed_inputs"] == [{"node": "3", "input": "seed"}]
    assert edit["seed_mode"] == "random"
    assert {"folder": "vae", "name": "qwen_image_vae.safetensors"} in edit["models"]
    assert builtin("kontext").to_manifest()["enabled"] is False
    assert builtin("bw").to_manifest()["contract"]["prompt"] is None


# --- broken manifests -------------------------------------------------------------------

BASE_TOML = """\
slug = "neg"
price = 1
enabled = true
timeout_seconds = 60

[title]
en = "Negative"
ru = "Негатив"

[description]
en = "Inverts colours."
ru = "Инвертирует цвета."

[image_input]
node = "1"
input = "image"

[seed]
mode = "fixed"
inputs = [{ node = "2", input = "seed" }]

[output]
node = "3"
"""

BASE_WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0], "seed": 5}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
}


def write_preset(folder: Path, toml: str = BASE_TOML, workflow: object = BASE_WORKFLOW) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preset.toml").write_text(toml, encoding="utf-8")
    text = workflow if isinstance(workflow, str) else json.dumps(workflow)
    (folder / "workflow.json").write_text(text, encoding="utf-8")
    return folder


def test_base_fixture_is_valid(tmp_path: Path) -> None:
    preset = load_preset(write_preset(tmp_path / "neg"))
    assert preset.slug == "neg"
    assert preset.seed_mode is SeedMode.FIXED
    assert preset.send_document is False
    assert preset.models == ()


def _wf(**changes: dict) -> dict:
    workflow = json.loads(json.dumps(BASE_WORKFLOW))
    workflow.update(changes)
    return workflow


def _toml(old: str, new: str) -> str:
    assert old in BASE_TOML, old  # a stale replacement would make the case test nothing
    return BASE_TOML.replace(old, new)


def bad(case_id: str, field: str, toml: str = BASE_TOML, workflow: object = None) -> object:
    """One broken preset: the error must name `preset.toml` (or `workflow.json`) and `field`."""
    file = "preset.toml" if workflow is None else "workflow.json"
    return pytest.param(toml, workflow, file, field, id=case_id)


TITLE_TABLE = '[title]\nen = "Negative"\nru = "Негатив"\n'
PROMPT = '\n[prompt_input]\nnode = "{}"\ninput = "text"\n'
BROKEN = [
    bad("missing-title-ru", "title.ru", _toml('ru = "Негатив"\n', "")),
    bad("title-not-table", "title", 'title = "Negative"\n' + _toml(TITLE_TABLE, "")),
    bad("negative-price", "price", _toml("price = 1", "price = -1")),
    bad("string-price", "price", _toml("price = 1", 'price = "5"')),
    bad("bool-price", "price", _toml("price = 1", "price = true")),
    bad("unknown-key", "colour", 'colour = "red"\n' + BASE_TOML),
    bad("unknown-subkey", "output.format", _toml('node = "3"', 'node = "3"\nformat = "png"')),
    bad("image-not-loadimage", "image_input.node", _toml('node = "1"', 'node = "2"')),
    bad("integer-node-id", "image_input.node", _toml('node = "1"', "node = 1")),
    bad("output-missing", "output.node", _toml('node = "3"', 'node = "42"')),
    bad("output-not-save", "output.node", _toml('[output]\nnode = "3"', '[output]\nnode = "2"')),
    bad("prompt-node-missing", "prompt_input.node", BASE_TOML + PROMPT.format("99")),
    bad("prompt-input-missing", "prompt_input.input", BASE_TOML + PROMPT.format("2")),
    bad("seed-input-missing", "seed.inputs[0]", _toml('input = "seed"', 'input = "noise"')),
    bad("seed-bad-mode", "seed.mode", _toml('mode = "fixed"', 'mode = "sometimes"')),
    bad("bad-slug", "slug", _toml('slug = "neg"', 'slug = "Bad Slug!"')),
    bad("slug-newline", "slug", _toml('slug = "neg"', 'slug = "neg\\n"')),
    bad("timeout-zero", "timeout_seconds", _toml("= 60", "= 0")),
    bad("timeout-too-long", "timeout_seconds", _toml("= 60", "= 3601")),
    bad("enabled-not-bool", "enabled", _toml("enabled = true", 'enabled = "yes"')),
    bad("malformed-toml", "TOML", _toml("price = 1", "price = = 1")),
    bad("malformed-json", "JSON", workflow='{"1": {"class_type": '),
    bad("workflow-not-object", "JSON object", workflow="[]"),
    bad("ui-workflow", "Save (API)", workflow={"nodes": [], "links": []}),
    bad("node-without-class", "'2' class_type", workflow=_wf(**{"2": {"inputs": {}}})),
    bad(
        "inputs-not-object", "'2' inputs", workflow=_wf(**{"2": {"class_type": "X", "inputs": []}})
    ),
    bad(
        "dangling-link",
        "node '2' input 'image'",
        workflow=_wf(**{"2": {"class_type": "ImageInvert", "inputs": {"image": ["9", 0]}}}),
    ),
]


@pytest.mark.parametrize(("toml", "workflow", "file", "field"), BROKEN)
def test_broken_manifest(
    tmp_path: Path, toml: str, workflow: object, file: str, field: str
) -> None:
    folder = write_preset(tmp_path / "p", toml, BASE_WORKFLOW if workflow is None else workflow)
    with pytest.raises(PresetError) as info:
        load_preset(folder)
    message = str(info.value)
    assert message.startswith(f"{folder / file}: "), message
    assert field in message, message


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(PresetError, match=r"preset\.toml: file is missing"):
        load_preset(tmp_path)
    (tmp_path / "preset.toml").write_text(BASE_TOML, encoding="utf-8")
    with pytest.raises(PresetError, match=r"workflow\.json: file is missing"):
        load_preset(tmp_path)


# --- extra presets directory ------------------------------------------------------------


def test_extra_dir_overrides_builtin_and_adds(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    override = BASE_TOML.replace('slug = "neg"', 'slug = "bw"').replace("price = 1", "price = 7")
    write_preset(extra / "my-bw", override)
    write_preset(extra / "neg")
    (extra / "notes").mkdir()  # a folder without preset.toml is not a preset
    (extra / "README.md").write_text("hello", encoding="utf-8")

    presets = {p.slug: p for p in load_presets(extra)}
    assert presets["bw"].price == 7
    assert presets["neg"].price == 1
    assert {"sharpen", "upscale2x", "oil", "edit", "kontext"} <= set(presets)
    assert [p.slug for p in load_presets(extra)] == sorted(presets)


def test_duplicate_slug_in_extra_dir(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    write_preset(extra / "a")
    write_preset(extra / "b")
    with pytest.raises(PresetError) as info:
        load_presets(extra)
    message = str(info.value)
    assert str(extra / "b" / "preset.toml") in message
    assert "slug" in message and str(extra / "a" / "preset.toml") in message


def test_missing_extra_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(PresetError, match="nope"):
        load_presets(missing)


def test_broken_extra_preset_propagates(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    write_preset(extra / "bad", BASE_TOML.replace("price = 1", "price = -3"))
    with pytest.raises(PresetError, match="price"):
        load_presets(extra)
