"""Reading a preset folder: `preset.toml` and its API-format `workflow.json`, checked together."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Collection
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from comfygram.presets.contract import (
    MAX_CHOICES,
    MAX_OPTIONS,
    MAX_PHOTOS,
    OUTPUT_KINDS,
    Choice,
    Contract,
    Option,
    OutputSpec,
    PhotoSlot,
    PromptSlot,
    Setting,
)

BUILTIN_DIR: Path = Path(__file__).resolve().parent / "builtin"
MANIFEST = "preset.toml"
WORKFLOW = "workflow.json"

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# Slot, option and choice ids travel in Telegram's 64-byte callback data, so they stay short.
SHORT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,15}$")
_LANGUAGES = ("en", "ru")
_TOP_KEYS = frozenset(
    {
        "slug",
        "price",
        "enabled",
        "timeout_seconds",
        "send_document",
        "previews",
        "title",
        "description",
        "image_input",
        "inputs",
        "prompt_input",
        "options",
        "seed",
        "output",
    }
)
_MAX_MULTIPLIER = 100

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


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NodeInput(_Frozen):
    node: str
    input: str


class ModelFile(_Frozen):
    folder: str  # ComfyUI models subfolder, e.g. "checkpoints"
    name: str


class SeedMode(StrEnum):
    RANDOM = "random"
    FIXED = "fixed"


class Preset(_Frozen):
    slug: str
    title: dict[str, str]
    description: dict[str, str]
    price: int
    enabled: bool
    timeout_seconds: int
    send_document: bool
    seed_inputs: tuple[NodeInput, ...]
    seed_mode: SeedMode
    contract: Contract
    models: tuple[ModelFile, ...]
    workflow: dict[str, Any]

    @property
    def takes_prompt(self) -> bool:
        """Whether the bot asks for a text (required or not)."""
        return self.contract.prompt is not None

    def to_manifest(self) -> dict[str, Any]:
        """Everything but the workflow, as plain JSON values (stored as ``presets.manifest``)."""
        return self.model_dump(mode="json", exclude={"workflow"})

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], workflow: dict[str, Any]) -> Preset:
        """The Preset the backend serves as manifest + workflow (``GET /api/presets/{slug}``)."""
        return cls.model_validate({**manifest, "workflow": workflow})


def derive_models(workflow: dict) -> tuple[ModelFile, ...]:
    """Model files the workflow's loader nodes name, sorted and unique."""
    found: set[ModelFile] = set()
    for node in workflow.values():
        cls = node.get("class_type")
        for name, value in node.get("inputs", {}).items():
            folder = _MODEL_INPUTS_BY_CLASS.get((cls, name)) or _MODEL_INPUTS.get(name)
            # Lists are links to another node's output, not file names.
            if folder and isinstance(value, str):
                found.add(ModelFile(folder=folder, name=value))
    return tuple(sorted(found, key=lambda m: (m.folder, m.name)))


class _Reader:
    """Checks values from one file and raises PresetError naming that file.

    ``at`` is the path of the table a key is read from (``options[0].``), so that errors name
    the field as the operator would find it in the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field: str, problem: str) -> PresetError:
        return PresetError(f"{self.path}: {field} {problem}")

    def table(self, data: dict, key: str, *, required: bool = True, at: str = "") -> dict | None:
        value = data.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, dict):
            raise self.fail(f"{at}{key}", "must be a table" if key in data else "is required")
        return value

    def tables(self, data: dict, key: str, example: str, at: str = "") -> list[dict]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise self.fail(f"{at}{key}", f"must be a list of tables, like {example}")
        return value

    def check_keys(self, table: dict, allowed: set[str] | frozenset[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(f"{prefix}{key}", "is not a known key")

    def integer(
        self, data: dict, key: str, default: int | None, lo: int, hi: int | None, at: str = ""
    ) -> int:
        value = data.get(key, default)
        # bool is an int subclass; `price = true` is a typo, not a price.
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok or value < lo or (hi is not None and value > hi):
            bounds = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise self.fail(f"{at}{key}", f"must be a whole number {bounds}")
        return value

    def boolean(self, data: dict, key: str, default: bool, at: str = "") -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{at}{key}", "must be true or false")
        return value

    def text(self, data: dict, key: str, field: str, *, non_empty: bool) -> str:
        value = data.get(key)
        if not isinstance(value, str) or (non_empty and not value.strip()):
            need = "a non-empty string" if non_empty else "a string"
            raise self.fail(field, f"is required and must be {need}")
        return value

    def short_id(self, data: dict, key: str, at: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not SHORT_ID.fullmatch(value):
            raise self.fail(
                f"{at}{key}",
                "must be 1-16 characters of a-z, 0-9, _ and -, starting with a-z or 0-9",
            )
        return value

    def texts(
        self, data: dict, key: str, *, non_empty: bool, required: bool = True, at: str = ""
    ) -> dict[str, str] | None:
        table = self.table(data, key, required=required, at=at)
        if table is None:
            return None
        self.check_keys(table, set(_LANGUAGES), f"{at}{key}.")
        return {
            lang: self.text(table, lang, f"{at}{key}.{lang}", non_empty=non_empty)
            for lang in _LANGUAGES
        }

    def node_input(self, table: dict, field: str, default_input: str | None = None) -> NodeInput:
        self.check_keys(table, {"node", "input"}, f"{field}.")
        return self.node_ref(table, field, default_input)

    def node_ref(self, table: dict, field: str, default_input: str | None = None) -> NodeInput:
        node = table.get("node")
        if not isinstance(node, str) or not node:
            raise self.fail(f"{field}.node", 'must be a node id string, e.g. node = "3"')
        name = table.get("input", default_input)
        if not isinstance(name, str) or not name:
            raise self.fail(f"{field}.input", "must be an input name string")
        return NodeInput(node=node, input=name)


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


class _Workflow:
    """The workflow a manifest points into, and which of its inputs are already spoken for."""

    def __init__(self, r: _Reader, workflow: dict) -> None:
        self.r = r
        self.nodes = workflow
        self.filled: dict[tuple[str, str], str] = {}  # (node, input) -> the field that fills it

    def value(self, ref: NodeInput, field: str, class_types: Collection[str] = ()) -> Any:
        node = self.nodes.get(ref.node)
        if node is None:
            raise self.r.fail(f"{field}.node", f"{ref.node!r} is not a node in {WORKFLOW}")
        if class_types and node["class_type"] not in class_types:
            need = " or ".join(sorted(class_types))
            raise self.r.fail(
                f"{field}.node", f"{ref.node!r} must be a {need} node, not {node['class_type']}"
            )
        if ref.input not in node["inputs"]:
            problem = f"{ref.input!r} is not an input of node {ref.node!r}"
            raise self.r.fail(f"{field}.input", problem)
        return node["inputs"][ref.input]

    def fill(self, ref: NodeInput, field: str, *, by_option: str | None = None) -> None:
        """Claim an input the runner overwrites; two claims on one input would fight."""
        other = self.filled.get((ref.node, ref.input))
        if other is not None and other != by_option:
            problem = f"sets node {ref.node!r} input {ref.input!r}, which {other} fills"
            raise self.r.fail(field, problem)
        # The runner overwrites the value, so a link there would be silently cut.
        if isinstance(self.value(ref, field), list):
            raise self.r.fail(f"{field}.input", "must hold a value in the workflow, not a link")
        self.filled[(ref.node, ref.input)] = by_option or field


def _read_photos(r: _Reader, data: dict, w: _Workflow) -> tuple[PhotoSlot, ...]:
    if "image_input" in data and "inputs" in data:
        raise r.fail("image_input", "and [[inputs]] cannot both be given; use [[inputs]]")
    if "image_input" in data:
        table = r.table(data, "image_input")
        assert table is not None
        ref = r.node_input(table, "image_input", "image")
        if ref.input != "image":
            raise r.fail("image_input.input", 'must be "image"')
        w.value(ref, "image_input", {"LoadImage"})
        w.fill(ref, "image_input")
        return (PhotoSlot(name="photo", node=ref.node),)
    tables = r.tables(data, "inputs", '[[inputs]] name = "photo" node = "1"')
    if not 1 <= len(tables) <= MAX_PHOTOS:
        raise r.fail("inputs", f"must list 1 to {MAX_PHOTOS} photo slots ([[inputs]] tables)")
    slots: list[PhotoSlot] = []
    for i, table in enumerate(tables):
        at = f"inputs[{i}]."
        r.check_keys(table, {"name", "node", "title"}, at)
        name = r.short_id(table, "name", at)
        if any(slot.name == name for slot in slots):
            raise r.fail(f"{at}name", f"{name!r} is already the name of another slot")
        ref = r.node_ref(table, f"inputs[{i}]", "image")
        w.value(ref, f"inputs[{i}]", {"LoadImage"})
        w.fill(ref, f"inputs[{i}]")
        title = r.texts(table, "title", non_empty=True, required=False, at=at)
        slots.append(PhotoSlot(name=name, node=ref.node, title=title))
    return tuple(slots)


def _read_prompt(r: _Reader, data: dict, w: _Workflow) -> PromptSlot | None:
    table = r.table(data, "prompt_input", required=False)
    if table is None:
        return None
    r.check_keys(table, {"node", "input", "required"}, "prompt_input.")
    ref = r.node_ref(table, "prompt_input")
    if not isinstance(w.value(ref, "prompt_input"), str):
        raise r.fail("prompt_input.input", "must hold text in the workflow, not a link")
    w.fill(ref, "prompt_input")
    required = r.boolean(table, "required", True, at="prompt_input.")
    return PromptSlot(node=ref.node, input=ref.input, required=required)


def _read_seeds(r: _Reader, data: dict, w: _Workflow) -> tuple[SeedMode, tuple[NodeInput, ...]]:
    seed_table = r.table(data, "seed", required=False) or {}
    r.check_keys(seed_table, {"mode", "inputs"}, "seed.")
    try:
        seed_mode = SeedMode(seed_table.get("mode", SeedMode.RANDOM))
    except ValueError:
        raise r.fail("seed.mode", 'must be "random" or "fixed"') from None
    raw = r.tables(seed_table, "inputs", '[{ node = "3", input = "seed" }]', at="seed.")
    seeds = tuple(r.node_input(s, f"seed.inputs[{i}]") for i, s in enumerate(raw))
    for i, seed in enumerate(seeds):
        value = w.value(seed, f"seed.inputs[{i}]")
        if not isinstance(value, int) or isinstance(value, bool):
            raise r.fail(f"seed.inputs[{i}].input", "must hold a whole number, not a link")
        w.fill(seed, f"seed.inputs[{i}]")
    return seed_mode, seeds


def _read_output(r: _Reader, data: dict, w: _Workflow) -> OutputSpec:
    table = r.table(data, "output")
    assert table is not None
    ref = r.node_input(table, "output", "filename_prefix")
    if ref.input != "filename_prefix":
        raise r.fail("output.input", 'must be "filename_prefix" (or left out)')
    w.value(ref, "output", OUTPUT_KINDS)
    w.fill(ref, "output")
    return OutputSpec(node=ref.node, kind=OUTPUT_KINDS[w.nodes[ref.node]["class_type"]])


def _same_type(value: Any, current: Any) -> bool:
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    if isinstance(current, float):
        return isinstance(value, int | float)
    return type(value) is type(current)


def _read_choice(r: _Reader, table: dict, at: str, w: _Workflow, option_id: str) -> Choice:
    r.check_keys(table, {"id", "title", "sets", "price_add", "price_multiplier"}, at)
    settings: list[Setting] = []
    example = '[{ node = "5", input = "amount", value = 2 }]'
    for j, item in enumerate(r.tables(table, "sets", example, at=at)):
        field = f"{at}sets[{j}]"
        r.check_keys(item, {"node", "input", "value"}, f"{field}.")
        ref = r.node_ref(item, field)
        value = item.get("value")
        if not isinstance(value, bool | int | float | str):
            raise r.fail(f"{field}.value", "is required: a string, a number or true/false")
        w.fill(ref, field, by_option=f"option {option_id!r}")
        current = w.value(ref, field)
        if not _same_type(value, current):
            kind = type(current).__name__
            raise r.fail(f"{field}.value", f"must be of the workflow value's type ({kind})")
        settings.append(Setting(node=ref.node, input=ref.input, value=value))
    return Choice(
        id=r.short_id(table, "id", at),
        title=r.texts(table, "title", non_empty=True, at=at) or {},
        sets=tuple(settings),
        price_add=r.integer(table, "price_add", 0, 0, None, at=at),
        price_multiplier=r.integer(table, "price_multiplier", 1, 1, _MAX_MULTIPLIER, at=at),
    )


def _read_options(r: _Reader, data: dict, w: _Workflow) -> tuple[Option, ...]:
    tables = r.tables(data, "options", '[[options]] id = "count"')
    if len(tables) > MAX_OPTIONS:
        raise r.fail("options", f"can list at most {MAX_OPTIONS} options")
    options: list[Option] = []
    for i, table in enumerate(tables):
        at = f"options[{i}]."
        r.check_keys(table, {"id", "title", "default", "choices"}, at)
        option_id = r.short_id(table, "id", at)
        if any(o.id == option_id for o in options):
            raise r.fail(f"{at}id", f"{option_id!r} is already the id of another option")
        raw = r.tables(table, "choices", '[[options.choices]] id = "2"', at=at)
        if not 2 <= len(raw) <= MAX_CHOICES:
            raise r.fail(f"{at}choices", f"must list 2 to {MAX_CHOICES} choices")
        choices: list[Choice] = []
        for j, item in enumerate(raw):
            choice = _read_choice(r, item, f"{at}choices[{j}].", w, option_id)
            if any(c.id == choice.id for c in choices):
                raise r.fail(f"{at}choices[{j}].id", f"{choice.id!r} is already used")
            choices.append(choice)
        default = table.get("default")
        if not any(c.id == default for c in choices):
            raise r.fail(f"{at}default", "must be the id of one of its choices")
        options.append(
            Option(
                id=option_id,
                title=r.texts(table, "title", non_empty=True, at=at) or {},
                default=default,
                choices=tuple(choices),
            )
        )
    return tuple(options)


def load_preset(folder: Path) -> Preset:
    """Read and validate one preset folder."""
    folder = Path(folder)
    r, data = _parse_file(folder / MANIFEST, tomllib.loads, tomllib.TOMLDecodeError, "TOML")

    r.check_keys(data, _TOP_KEYS, "")
    slug = data.get("slug")
    if not isinstance(slug, str) or not SLUG.fullmatch(slug):
        raise r.fail(
            "slug", "must be 1-32 characters of a-z, 0-9, _ and -, starting with a-z or 0-9"
        )
    title = r.texts(data, "title", non_empty=True)
    description = r.texts(data, "description", non_empty=False)
    assert title is not None and description is not None
    price = r.integer(data, "price", None, 0, None)
    enabled = r.boolean(data, "enabled", True)
    timeout = r.integer(data, "timeout_seconds", 120, 1, 3600)
    send_document = r.boolean(data, "send_document", False)
    previews = r.boolean(data, "previews", False)

    workflow = _read_workflow(folder / WORKFLOW)
    w = _Workflow(r, workflow)
    photos = _read_photos(r, data, w)
    prompt = _read_prompt(r, data, w)
    seed_mode, seed_inputs = _read_seeds(r, data, w)
    output = _read_output(r, data, w)
    options = _read_options(r, data, w)

    return Preset(
        slug=slug,
        title=title,
        description=description,
        price=price,
        enabled=enabled,
        timeout_seconds=timeout,
        send_document=send_document,
        seed_inputs=seed_inputs,
        seed_mode=seed_mode,
        contract=Contract(
            photos=photos, prompt=prompt, options=options, output=output, previews=previews
        ),
        models=derive_models(workflow),
        workflow=workflow,
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
