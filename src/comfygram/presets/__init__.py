"""Presets: a `preset.toml` manifest plus a ComfyUI API-format `workflow.json`, checked together."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "BUILTIN_DIR",
    "ModelFile",
    "NodeInput",
    "Preset",
    "PresetError",
    "SeedMode",
    "derive_models",
    "load_preset",
    "load_presets",
]

BUILTIN_DIR: Path = Path(__file__).resolve().parent / "builtin"
MANIFEST = "preset.toml"
WORKFLOW = "workflow.json"

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_LANGUAGES = ("en", "ru")
_TOP_KEYS = frozenset(
    {
        "slug",
        "price",
        "enabled",
        "timeout_seconds",
        "send_document",
        "title",
        "description",
        "image_input",
        "prompt_input",
        "seed",
        "output",
    }
)

# Loader inputs whose value is a file name inside a ComfyUI models folder, whatever the node.
_MODEL_INPUTS = {
    "ckpt_name": "checkpoints",
    "unet_name": "diffusion_models",
    "vae_name": "vae",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "clip_name3": "text_encoders",
    "clip_name4": "text_encoders",
    "lora_name": "loras",
    "control_net_name": "controlnet",
    "style_model_name": "style_models",
    "gligen_name": "gligen",
    "hypernetwork_name": "hypernetworks",
    "photomaker_model_name": "photomaker",
}
# Inputs whose folder depends on the node class (the same name means something else elsewhere).
_MODEL_INPUTS_BY_CLASS = {
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
}


class PresetError(ValueError):
    """A preset folder is invalid; message names the file and the field."""


@dataclass(frozen=True)
class NodeInput:
    node: str
    input: str


@dataclass(frozen=True)
class ModelFile:
    folder: str  # ComfyUI models subfolder, e.g. "checkpoints"
    name: str


class SeedMode(StrEnum):
    RANDOM = "random"
    FIXED = "fixed"


@dataclass(frozen=True)
class Preset:
    slug: str
    title: dict[str, str]
    description: dict[str, str]
    price: int
    enabled: bool
    image_input: NodeInput
    prompt_input: NodeInput | None
    seed_inputs: tuple[NodeInput, ...]
    seed_mode: SeedMode
    output: NodeInput
    timeout_seconds: int
    send_document: bool
    workflow: dict
    models: tuple[ModelFile, ...]

    @property
    def takes_prompt(self) -> bool:
        return self.prompt_input is not None

    def to_manifest(self) -> dict:
        """Everything but the workflow, as plain JSON-serialisable values."""

        def ref(value: NodeInput | None) -> dict[str, str] | None:
            return None if value is None else {"node": value.node, "input": value.input}

        return {
            "slug": self.slug,
            "title": dict(self.title),
            "description": dict(self.description),
            "price": self.price,
            "enabled": self.enabled,
            "image_input": ref(self.image_input),
            "prompt_input": ref(self.prompt_input),
            "seed_inputs": [ref(s) for s in self.seed_inputs],
            "seed_mode": self.seed_mode.value,
            "output": ref(self.output),
            "timeout_seconds": self.timeout_seconds,
            "send_document": self.send_document,
            "models": [{"folder": m.folder, "name": m.name} for m in self.models],
        }


def derive_models(workflow: dict) -> tuple[ModelFile, ...]:
    """Model files the workflow's loader nodes name, sorted and unique."""
    found: set[ModelFile] = set()
    for node in workflow.values():
        cls = node.get("class_type")
        for name, value in node.get("inputs", {}).items():
            folder = _MODEL_INPUTS_BY_CLASS.get((cls, name)) or _MODEL_INPUTS.get(name)
            # Lists are links to another node's output, not file names.
            if folder and isinstance(value, str):
                found.add(ModelFile(folder, value))
    return tuple(sorted(found, key=lambda m: (m.folder, m.name)))


class _Reader:
    """Checks values from one file and raises PresetError naming that file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field: str, problem: str) -> PresetError:
        return PresetError(f"{self.path}: {field} {problem}")

    def table(self, data: dict, key: str, *, required: bool = True) -> dict | None:
        value = data.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table" if key in data else "is required")
        return value

    def check_keys(self, table: dict, allowed: set[str] | frozenset[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(f"{prefix}{key}", "is not a known key")

    def integer(self, data: dict, key: str, default: int | None, lo: int, hi: int | None) -> int:
        value = data.get(key, default)
        # bool is an int subclass; `price = true` is a typo, not a price.
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok or value < lo or (hi is not None and value > hi):
            bounds = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise self.fail(key, f"must be a whole number {bounds}")
        return value

    def boolean(self, data: dict, key: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def text(self, data: dict, key: str, field: str, *, non_empty: bool) -> str:
        value = data.get(key)
        if not isinstance(value, str) or (non_empty and not value.strip()):
            need = "a non-empty string" if non_empty else "a string"
            raise self.fail(field, f"is required and must be {need}")
        return value

    def texts(self, data: dict, key: str, *, non_empty: bool) -> dict[str, str]:
        table = self.table(data, key)
        assert table is not None
        self.check_keys(table, set(_LANGUAGES), f"{key}.")
        return {
            lang: self.text(table, lang, f"{key}.{lang}", non_empty=non_empty)
            for lang in _LANGUAGES
        }

    def node_input(self, table: dict, field: str, default_input: str | None = None) -> NodeInput:
        self.check_keys(table, {"node", "input"}, f"{field}.")
        node = table.get("node")
        if not isinstance(node, str) or not node:
            raise self.fail(f"{field}.node", 'must be a node id string, e.g. node = "3"')
        name = table.get("input", default_input)
        if not isinstance(name, str) or not name:
            raise self.fail(f"{field}.input", "must be an input name string")
        return NodeInput(node, name)


def _parse_file(
    path: Path, parse: Callable[[str], Any], error: type[Exception], kind: str
) -> tuple[_Reader, Any]:
    r = _Reader(path)
    try:
        return r, parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise r.fail("file", "is missing") from None
    except (error, UnicodeDecodeError) as exc:
        raise r.fail("file", f"is not valid {kind}: {exc}") from None


def _read_workflow(path: Path) -> dict:
    r, data = _parse_file(path, json.loads, json.JSONDecodeError, "JSON")
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        raise r.fail("file", 'is a UI workflow; export it with "Save (API)" instead')
    if not isinstance(data, dict) or not data:
        raise r.fail("file", "must be a JSON object mapping node ids to nodes")
    for node_id, node in data.items():
        field = f"node {node_id!r}"
        if not isinstance(node, dict):
            raise r.fail(field, "must be an object")
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise r.fail(f"{field} class_type", "must be a non-empty string")
        if not isinstance(node.get("inputs"), dict):
            raise r.fail(f"{field} inputs", "must be an object")
        for name, value in node["inputs"].items():
            # ComfyUI treats every list value as a link [source node id, output index].
            if not isinstance(value, list):
                continue
            if len(value) != 2 or not isinstance(value[0], str) or type(value[1]) is not int:
                raise r.fail(
                    f"{field} input {name!r}", 'must link as ["<node id>", <output index>]'
                )
            if value[0] not in data:
                raise r.fail(f"{field} input {name!r}", f"links to missing node {value[0]!r}")
    return data


def load_preset(folder: Path) -> Preset:
    """Read and validate one preset folder."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    r, data = _parse_file(manifest_path, tomllib.loads, tomllib.TOMLDecodeError, "TOML")

    r.check_keys(data, _TOP_KEYS, "")
    slug = data.get("slug")
    if not isinstance(slug, str) or not SLUG.fullmatch(slug):
        raise r.fail(
            "slug", "must be 1-32 characters of a-z, 0-9, _ and -, starting with a-z or 0-9"
        )
    title = r.texts(data, "title", non_empty=True)
    description = r.texts(data, "description", non_empty=False)
    price = r.integer(data, "price", None, 0, None)
    enabled = r.boolean(data, "enabled", True)
    timeout = r.integer(data, "timeout_seconds", 120, 1, 3600)
    send_document = r.boolean(data, "send_document", False)

    image_table = r.table(data, "image_input")
    assert image_table is not None
    image_input = r.node_input(image_table, "image_input", "image")
    prompt_table = r.table(data, "prompt_input", required=False)
    prompt_input = None if prompt_table is None else r.node_input(prompt_table, "prompt_input")

    seed_table = r.table(data, "seed", required=False) or {}
    r.check_keys(seed_table, {"mode", "inputs"}, "seed.")
    try:
        seed_mode = SeedMode(seed_table.get("mode", SeedMode.RANDOM))
    except ValueError:
        raise r.fail("seed.mode", 'must be "random" or "fixed"') from None
    raw_seeds = seed_table.get("inputs", [])
    if not isinstance(raw_seeds, list) or not all(isinstance(s, dict) for s in raw_seeds):
        raise r.fail("seed.inputs", 'must be a list like [{ node = "3", input = "seed" }]')
    seed_inputs = tuple(r.node_input(s, f"seed.inputs[{i}]") for i, s in enumerate(raw_seeds))

    output_table = r.table(data, "output")
    assert output_table is not None
    output = r.node_input(output_table, "output", "filename_prefix")
    if output.input != "filename_prefix":
        raise r.fail("output.input", 'must be "filename_prefix" (or left out)')

    workflow = _read_workflow(folder / WORKFLOW)

    def node_of(ref: NodeInput, field: str, class_type: str | None = None) -> Any:
        node = workflow.get(ref.node)
        if node is None:
            raise r.fail(f"{field}.node", f"{ref.node!r} is not a node in {WORKFLOW}")
        if class_type and node["class_type"] != class_type:
            found = node["class_type"]
            raise r.fail(f"{field}.node", f"{ref.node!r} must be a {class_type} node, not {found}")
        if ref.input not in node["inputs"]:
            raise r.fail(f"{field}.input", f"{ref.input!r} is not an input of node {ref.node!r}")
        return node["inputs"][ref.input]

    if image_input.input != "image":
        raise r.fail("image_input.input", 'must be "image"')
    node_of(image_input, "image_input", "LoadImage")
    node_of(output, "output", "SaveImage")
    # The runner overwrites these values, so a link there would be silently cut.
    if prompt_input is not None and not isinstance(node_of(prompt_input, "prompt_input"), str):
        raise r.fail("prompt_input.input", "must hold text in the workflow, not a link")
    for i, seed in enumerate(seed_inputs):
        value = node_of(seed, f"seed.inputs[{i}]")
        if not isinstance(value, int) or isinstance(value, bool):
            raise r.fail(f"seed.inputs[{i}].input", "must hold a whole number, not a link")

    return Preset(
        slug=slug,
        title=title,
        description=description,
        price=price,
        enabled=enabled,
        image_input=image_input,
        prompt_input=prompt_input,
        seed_inputs=seed_inputs,
        seed_mode=seed_mode,
        output=output,
        timeout_seconds=timeout,
        send_document=send_document,
        workflow=workflow,
        models=derive_models(workflow),
    )


def _load_dir(directory: Path) -> dict[str, Preset]:
    presets: dict[str, Preset] = {}
    folders: dict[str, Path] = {}
    for folder in sorted(p for p in directory.iterdir() if (p / MANIFEST).is_file()):
        preset = load_preset(folder)
        if preset.slug in presets:
            other = folders[preset.slug] / MANIFEST
            raise PresetError(
                f"{folder / MANIFEST}: slug {preset.slug!r} is already used by {other}"
            )
        presets[preset.slug] = preset
        folders[preset.slug] = folder
    return presets


def load_presets(extra_dir: Path | None = None) -> list[Preset]:
    """Built-in presets, overridden or extended by `extra_dir`'s subfolders; sorted by slug."""
    presets = _load_dir(BUILTIN_DIR)
    if extra_dir is not None:
        extra_dir = Path(extra_dir)
        if not extra_dir.is_dir():
            raise PresetError(f"{extra_dir}: presets directory does not exist")
        presets.update(_load_dir(extra_dir))
    return sorted(presets.values(), key=lambda p: p.slug)


def preset_from_manifest(manifest: dict, workflow: dict) -> Preset:
    """The Preset the backend serves as manifest + workflow (``GET /api/presets/{slug}``)."""

    def ref(value: dict | None) -> NodeInput | None:
        return None if value is None else NodeInput(str(value["node"]), str(value["input"]))

    image_input, output = ref(manifest["image_input"]), ref(manifest["output"])
    assert image_input is not None and output is not None
    return Preset(
        slug=manifest["slug"],
        title=dict(manifest["title"]),
        description=dict(manifest["description"]),
        price=int(manifest["price"]),
        enabled=bool(manifest["enabled"]),
        image_input=image_input,
        prompt_input=ref(manifest.get("prompt_input")),
        seed_inputs=tuple(ref(s) for s in manifest.get("seed_inputs") or ()),  # type: ignore[misc]
        seed_mode=SeedMode(manifest.get("seed_mode", "random")),
        output=output,
        timeout_seconds=int(manifest["timeout_seconds"]),
        send_document=bool(manifest.get("send_document", False)),
        workflow=workflow,
        models=derive_models(workflow),
    )


def _listed_choices(config: Any) -> list | None:
    """The values a combo input allows, from its ``/object_info`` entry (None: not a combo).

    Older nodes list them first (``[["a", "b"], {...}]``); newer-style ones (ComfyUI's V3
    schema: ``UpscaleModelLoader``, ``ImageScaleToTotalPixels``, ...) as
    ``["COMBO", {"options": ["a", "b"]}]``, and ComfyUI does not check those values at
    ``POST /prompt``, so this is the only place a wrong one is caught before run time.
    """
    if not isinstance(config, list) or not config:
        return None
    if isinstance(config[0], list):
        return config[0]
    if config[0] == "COMBO" and len(config) > 1 and isinstance(config[1], dict):
        options = config[1].get("options")
        return options if isinstance(options, list) else None
    return None


def compatibility_problems(preset: Preset, object_info: dict) -> list[str]:
    """Why ``preset`` cannot run on a ComfyUI with this ``/object_info`` (empty: it can).

    Names every missing node type, and every model file (or other listed value) the
    workflow asks for that the server does not list, with what it does list.
    """
    problems: list[str] = []
    for node_id, node in preset.workflow.items():
        class_type = node.get("class_type")
        info = object_info.get(class_type)
        if info is None:
            problems.append(f"node type {class_type} (node {node_id}) is not installed")
            continue
        spec = {
            **(info.get("input", {}).get("required") or {}),
            **(info.get("input", {}).get("optional") or {}),
        }
        for name, value in (node.get("inputs") or {}).items():
            if (node_id, name) == (preset.image_input.node, preset.image_input.input):
                continue  # the user's photo is uploaded per job
            choices = _listed_choices(spec.get(name))
            if isinstance(value, str) and isinstance(choices, list) and value not in choices:
                folder = _MODEL_INPUTS_BY_CLASS.get((class_type, name)) or _MODEL_INPUTS.get(name)
                what = f"model file {folder}/{value}" if folder else f"{name} value {value!r}"
                listed = ", ".join(map(str, choices[:10])) or "nothing"
                more = f" and {len(choices) - 10} more" if len(choices) > 10 else ""
                problems.append(
                    f"{what} (node {node_id}, {class_type}) is missing; "
                    f"the server has: {listed}{more}"
                )
    return problems
