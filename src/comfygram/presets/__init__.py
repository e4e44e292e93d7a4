"""Presets: a `preset.toml` manifest plus a ComfyUI API-format `workflow.json`, checked together.

``contract`` says what a preset asks and gives back (pure rules), ``loader`` reads and checks a
preset folder, ``compat`` tells whether a ComfyUI server can run it.
"""

from comfygram.presets.compat import compatibility_problems
from comfygram.presets.contract import (
    Choice,
    Contract,
    MediaKind,
    Option,
    OutputSpec,
    PhotoSlot,
    PromptSlot,
    RequestRefused,
    Setting,
)
from comfygram.presets.loader import (
    BUILTIN_DIR,
    SHORT_ID,
    SLUG,
    ModelFile,
    NodeInput,
    Preset,
    PresetError,
    SeedMode,
    derive_models,
    load_preset,
    load_presets,
)

__all__ = [
    "BUILTIN_DIR",
    "SHORT_ID",
    "SLUG",
    "Choice",
    "Contract",
    "MediaKind",
    "ModelFile",
    "NodeInput",
    "Option",
    "OutputSpec",
    "PhotoSlot",
    "Preset",
    "PresetError",
    "PromptSlot",
    "RequestRefused",
    "SeedMode",
    "Setting",
    "compatibility_problems",
    "derive_models",
    "load_preset",
    "load_presets",
]
