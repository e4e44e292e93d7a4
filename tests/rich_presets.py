"""Presets written for the backend's rich-job tests (the built-in ones may change): `duo` takes
two photos, an optional prompt and two options that change the price; `clip` makes a video and
`loop` an animation from one photo."""

from __future__ import annotations

import json
from pathlib import Path

_TEXTS = '[title]\nen = "{0}"\nru = "{0}"\n[description]\nen = "{0}."\nru = "{0}."\n'

DUO = (
    'slug = "duo"\nprice = 2\n'
    + _TEXTS.format("Duo")
    + """
[[inputs]]
name = "person"
node = "1"
title = { en = "Send the person", ru = "Пришлите человека" }

[[inputs]]
name = "place"
node = "2"

[prompt_input]
node = "5"
input = "value"
required = false

[[options]]
id = "count"
title = { en = "How many", ru = "Сколько" }
default = "2"
  [[options.choices]]
  id = "2"
  title = { en = "2", ru = "2" }
  sets = [{ node = "4", input = "amount", value = 2 }]
  [[options.choices]]
  id = "4"
  title = { en = "4", ru = "4" }
  sets = [{ node = "4", input = "amount", value = 4 }]
  price_multiplier = 2

[[options]]
id = "frame"
title = { en = "Frame", ru = "Рамка" }
default = "none"
  [[options.choices]]
  id = "none"
  title = { en = "None", ru = "Нет" }
  [[options.choices]]
  id = "gold"
  title = { en = "Gold", ru = "Золото" }
  price_add = 1

[output]
node = "9"
"""
)
DUO_WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
    "2": {"class_type": "LoadImage", "inputs": {"image": "b.png"}},
    "3": {
        "class_type": "ImageStitch",
        "inputs": {
            "image1": ["1", 0],
            "image2": ["2", 0],
            "direction": "right",
            "match_image_size": True,
            "spacing_width": 0,
            "spacing_color": "white",
        },
    },
    "4": {"class_type": "RepeatImageBatch", "inputs": {"image": ["3", 0], "amount": 2}},
    "5": {"class_type": "PrimitiveString", "inputs": {"value": ""}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "duo"}},
}


def _one_photo(slug: str, save: dict) -> tuple[str, dict]:
    manifest = (
        f'slug = "{slug}"\nprice = 1\n'
        + _TEXTS.format(slug.title())
        + '[image_input]\nnode = "1"\n[output]\nnode = "9"\n'
    )
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 4}},
        "9": save,
    }
    return manifest, workflow


CLIP = _one_photo(
    "clip",
    {
        "class_type": "SaveVideo",
        "inputs": {
            "video": ["3", 0],
            "filename_prefix": "clip",
            "format": "mp4",
            "codec": "h264",
        },
    },
)
CLIP[1]["3"] = {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": 8.0}}
LOOP = _one_photo(
    "loop",
    {
        "class_type": "SaveAnimatedWEBP",
        "inputs": {
            "images": ["2", 0],
            "filename_prefix": "loop",
            "fps": 6.0,
            "lossless": False,
            "quality": 80,
            "method": "default",
        },
    },
)


def write_rich_presets(folder: Path) -> Path:
    """The three presets as preset folders under `folder`; returns it (for PRESETS_DIR)."""
    for slug, (manifest, workflow) in {
        "duo": (DUO, DUO_WORKFLOW),
        "clip": CLIP,
        "loop": LOOP,
    }.items():
        (folder / slug).mkdir(parents=True, exist_ok=True)
        (folder / slug / "preset.toml").write_text(manifest, encoding="utf-8")
        (folder / slug / "workflow.json").write_text(json.dumps(workflow), encoding="utf-8")
    return folder
