"""Whether a ComfyUI server can run a preset, from its ``/object_info``."""

from __future__ import annotations

from typing import Any

from comfygram.presets.loader import _MODEL_INPUTS, _MODEL_INPUTS_BY_CLASS, Preset


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
    photo_nodes = {slot.node for slot in preset.contract.photos}
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
            if name == "image" and node_id in photo_nodes:
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
