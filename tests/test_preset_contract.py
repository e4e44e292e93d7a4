"""The rich preset contract: photo slots, options with prices, output kinds, previews.

Pure tables: what `preset.toml` may say (and the error naming the field when it may not), what a
request must carry (`Contract.resolve`), what it costs (`Contract.price`) and how it fills the
workflow (`Contract.apply`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfygram.presets import (
    Contract,
    MediaKind,
    PhotoSlot,
    Preset,
    PresetError,
    PromptSlot,
    RequestRefused,
    load_preset,
)

WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
    "2": {"class_type": "LoadImage", "inputs": {"image": "b.png"}},
    "3": {
        "class_type": "ImageStitch",
        "inputs": {
            "image1": ["1", 0],
            "image2": ["2", 0],
            "spacing_width": 0,
            "direction": "right",
        },
    },
    "4": {"class_type": "RepeatImageBatch", "inputs": {"image": ["3", 0], "amount": 2}},
    "5": {"class_type": "ImageBlend", "inputs": {"image1": ["4", 0], "blend_factor": 0.5}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 0]}},
    "7": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "x"}},
    "8": {"class_type": "SaveVideo", "inputs": {"video": ["5", 0], "filename_prefix": "v"}},
    "9": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["5", 0], "filename_prefix": "w"}},
    "10": {"class_type": "KSampler", "inputs": {"seed": 1, "denoise": 1.0, "flip": False}},
}

RICH_TOML = """\
slug = "rich"
price = 3
previews = true

[title]
en = "Rich"
ru = "Богатый"

[description]
en = ""
ru = ""

[[inputs]]
name = "person"
node = "1"
title = { en = "The person", ru = "Человек" }

[[inputs]]
name = "place"
node = "2"

[prompt_input]
node = "6"
input = "text"
required = false

[seed]
inputs = [{ node = "10", input = "seed" }]

[[options]]
id = "count"
title = { en = "How many", ru = "Сколько" }
default = "2"

  [[options.choices]]
  id = "2"
  title = { en = "Two", ru = "Два" }
  sets = [{ node = "4", input = "amount", value = 2 }]

  [[options.choices]]
  id = "4"
  title = { en = "Four", ru = "Четыре" }
  sets = [{ node = "4", input = "amount", value = 4 }]
  price_multiplier = 2

[[options]]
id = "mix"
title = { en = "Mix", ru = "Смесь" }
default = "soft"

  [[options.choices]]
  id = "soft"
  title = { en = "Soft", ru = "Мягко" }
  sets = [
    { node = "5", input = "blend_factor", value = 0.25 },
    { node = "3", input = "direction", value = "down" },
  ]

  [[options.choices]]
  id = "hard"
  title = { en = "Hard", ru = "Жёстко" }
  sets = [{ node = "5", input = "blend_factor", value = 1 }]
  price_add = 1

[output]
node = "7"
"""


def write(folder: Path, toml: str = RICH_TOML, workflow: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preset.toml").write_text(toml, encoding="utf-8")
    (folder / "workflow.json").write_text(json.dumps(workflow or WORKFLOW), encoding="utf-8")
    return folder


@pytest.fixture
def rich(tmp_path: Path) -> Preset:
    return load_preset(write(tmp_path / "rich"))


def test_a_rich_preset_reads_into_its_contract(rich: Preset) -> None:
    contract = rich.contract
    assert contract.photos == (
        PhotoSlot(name="person", node="1", title={"en": "The person", "ru": "Человек"}),
        PhotoSlot(name="place", node="2", title=None),
    )
    assert contract.prompt == PromptSlot(node="6", input="text", required=False)
    assert [o.id for o in contract.options] == ["count", "mix"]
    assert contract.defaults() == {"count": "2", "mix": "soft"}
    assert contract.output.kind is MediaKind.IMAGE
    assert contract.previews is True
    assert rich.takes_prompt


def test_the_contract_survives_the_manifest_round_trip(rich: Preset) -> None:
    manifest = json.loads(json.dumps(rich.to_manifest()))
    assert Preset.from_manifest(manifest, rich.workflow) == rich
    assert Contract.model_validate(manifest["contract"]) == rich.contract


@pytest.mark.parametrize(
    ("node", "kind"),
    [("7", MediaKind.IMAGE), ("8", MediaKind.VIDEO), ("9", MediaKind.ANIMATION)],
)
def test_the_save_node_decides_the_output_kind(tmp_path: Path, node: str, kind: MediaKind) -> None:
    toml = RICH_TOML.replace('[output]\nnode = "7"', f'[output]\nnode = "{node}"')
    assert load_preset(write(tmp_path / "p", toml)).contract.output.kind is kind


# --- prices -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chosen", "price"),
    [
        ({}, 3),  # every default: the preset's price
        ({"count": "4"}, 6),
        ({"mix": "hard"}, 4),
        ({"count": "4", "mix": "hard"}, 8),  # (3 + 1) x 2: additions first, then multipliers
    ],
)
def test_price_follows_the_chosen_options(rich: Preset, chosen: dict, price: int) -> None:
    assert rich.contract.price(rich.price, chosen) == price


def test_an_operator_price_is_the_base_the_options_apply_to(rich: Preset) -> None:
    assert rich.contract.price(10, {"count": "4"}) == 20
    assert rich.contract.price(0, {"count": "4", "mix": "hard"}) == 2


# --- requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("photos", "prompt", "options", "code", "names"),
    [
        (1, None, {}, "photo_missing", "2 photos (person, place); 1 sent"),
        (0, None, {}, "photo_missing", "0 sent"),
        (3, None, {}, "too_many_photos", "takes 2 photos; 3 sent"),
        (2, None, {"colour": "red"}, "unknown_option", "'colour' (its options: count, mix)"),
        (
            2,
            None,
            {"count": "3"},
            "unknown_choice",
            "'count' has no choice '3' (its choices: 2, 4)",
        ),
    ],
)
def test_a_request_that_does_not_fit_is_refused_naming_what_is_wrong(
    rich: Preset, photos: int, prompt: str | None, options: dict, code: str, names: str
) -> None:
    with pytest.raises(RequestRefused) as info:
        rich.contract.resolve(photos=photos, prompt=prompt, options=options)
    assert info.value.code == code
    assert names in info.value.message


def test_prompt_rules(rich: Preset, tmp_path: Path) -> None:
    # Optional here: with or without a text.
    assert rich.contract.resolve(photos=2, prompt=None, options={}) == {"count": "2", "mix": "soft"}
    assert rich.contract.resolve(photos=2, prompt="hi", options={"mix": "hard"}) == {
        "count": "2",
        "mix": "hard",
    }
    required = load_preset(write(tmp_path / "r", RICH_TOML.replace("required = false\n", "")))
    with pytest.raises(RequestRefused) as info:
        required.contract.resolve(photos=2, prompt=None, options={})
    assert info.value.code == "prompt_required"
    no_prompt = RICH_TOML.replace(
        '[prompt_input]\nnode = "6"\ninput = "text"\nrequired = false\n', ""
    )
    none = load_preset(write(tmp_path / "n", no_prompt))
    with pytest.raises(RequestRefused) as info:
        none.contract.resolve(photos=2, prompt="hi", options={})
    assert info.value.code == "prompt_not_accepted"


# --- filling the workflow ---------------------------------------------------------------


def test_apply_fills_photos_prompt_options_and_the_prefix_and_leaves_the_preset_alone(
    rich: Preset,
) -> None:
    filled = rich.contract.apply(
        rich.workflow,
        photos=["in-0.png", "in-1.png"],
        prompt="at dusk",
        chosen={"count": "4", "mix": "soft"},
        output_prefix="comfygram/j-1",
    )
    assert filled["1"]["inputs"]["image"] == "in-0.png"
    assert filled["2"]["inputs"]["image"] == "in-1.png"
    assert filled["6"]["inputs"]["text"] == "at dusk"
    assert filled["4"]["inputs"]["amount"] == 4
    assert filled["5"]["inputs"]["blend_factor"] == 0.25
    assert filled["3"]["inputs"]["direction"] == "down"
    assert filled["7"]["inputs"]["filename_prefix"] == "comfygram/j-1"
    assert rich.workflow["4"]["inputs"]["amount"] == 2  # the preset's own copy is untouched
    assert rich.workflow["7"]["inputs"]["filename_prefix"] == "x"


def test_apply_uses_the_defaults_for_options_not_chosen(rich: Preset) -> None:
    filled = rich.contract.apply(
        rich.workflow, photos=["a", "b"], prompt=None, chosen={}, output_prefix="p"
    )
    assert filled["4"]["inputs"]["amount"] == 2
    assert filled["6"]["inputs"]["text"] == ""


def test_apply_needs_one_name_per_slot(rich: Preset) -> None:
    with pytest.raises(ValueError, match="2 photos expected, got 1"):
        rich.contract.apply(rich.workflow, photos=["a"], prompt=None, chosen={}, output_prefix="p")


# --- broken files -----------------------------------------------------------------------


def _with(old: str, new: str) -> str:
    assert old in RICH_TOML, old  # a stale replacement would make the case test nothing
    return RICH_TOML.replace(old, new)


SLOT_2 = '[[inputs]]\nname = "place"\nnode = "2"\n'
BROKEN = [
    ("both-image-forms", "image_input", RICH_TOML + '[image_input]\nnode = "1"\n'),
    ("slot-not-loadimage", "inputs[1].node", _with(SLOT_2, SLOT_2.replace('"2"', '"3"'))),
    ("slot-same-name", "inputs[1].name", _with('name = "place"', 'name = "person"')),
    ("slot-bad-name", "inputs[1].name", _with('name = "place"', 'name = "The Place"')),
    ("slot-same-node", "inputs[1]", _with(SLOT_2, SLOT_2.replace('"2"', '"1"'))),
    ("slot-unknown-key", "inputs[1].kind", _with(SLOT_2, SLOT_2 + 'kind = "video"\n')),
    ("slot-title-missing-ru", "inputs[0].title.ru", _with(', ru = "Человек"', "")),
    (
        "five-slots",
        "inputs",
        _with(SLOT_2, SLOT_2 * 4).replace('name = "place"', 'name = "p"'),
    ),
    ("prompt-required-not-bool", "prompt_input.required", _with("= false", '= "no"')),
    (
        "option-one-choice",
        "options[1].choices",
        _with(
            RICH_TOML[
                RICH_TOML.index('  [[options.choices]]\n  id = "hard"') : RICH_TOML.index(
                    "[output]"
                )
            ],
            "",
        ),
    ),
    ("option-default-unknown", "options[0].default", _with('default = "2"', 'default = "3"')),
    ("option-same-id", "options[1].id", _with('id = "mix"', 'id = "count"')),
    ("choice-same-id", "options[0].choices[1].id", _with('id = "4"', 'id = "2"')),
    ("choice-long-id", "options[1].choices[1].id", _with('id = "hard"', 'id = "' + "h" * 17 + '"')),
    (
        "choice-title-missing",
        "options[1].choices[1].title",
        _with('title = { en = "Hard", ru = "Жёстко" }\n', ""),
    ),
    (
        "sets-missing-node",
        "options[0].choices[0].sets[0].node",
        _with(
            '{ node = "4", input = "amount", value = 2 }',
            '{ node = "40", input = "amount", value = 2 }',
        ),
    ),
    (
        "sets-missing-input",
        "options[0].choices[0].sets[0].input",
        _with(
            '{ node = "4", input = "amount", value = 2 }',
            '{ node = "4", input = "count", value = 2 }',
        ),
    ),
    (
        "sets-a-link",
        "options[0].choices[0].sets[0].input",
        _with(
            '{ node = "4", input = "amount", value = 2 }',
            '{ node = "4", input = "image", value = 2 }',
        ),
    ),
    (
        "sets-wrong-type",
        "options[0].choices[0].sets[0].value",
        _with(
            '{ node = "4", input = "amount", value = 2 }',
            '{ node = "4", input = "amount", value = "2" }',
        ),
    ),
    (
        "sets-float-in-int",
        "options[0].choices[0].sets[0].value",
        _with(
            '{ node = "4", input = "amount", value = 2 }',
            '{ node = "4", input = "amount", value = 2.5 }',
        ),
    ),
    (
        "sets-no-value",
        "options[0].choices[0].sets[0].value",
        _with('{ node = "4", input = "amount", value = 2 }', '{ node = "4", input = "amount" }'),
    ),
    (
        "sets-the-photo",
        "options[0].choices[0].sets[0]",
        _with(
            '{ node = "4", input = "amount", value = 2 }',
            '{ node = "1", input = "image", value = "x.png" }',
        ),
    ),
    (
        "sets-the-seed",
        "options[0].choices[0].sets[0]",
        _with(
            '{ node = "4", input = "amount", value = 2 }',
            '{ node = "10", input = "seed", value = 3 }',
        ),
    ),
    (
        "sets-the-prefix",
        "options[0].choices[0].sets[0]",
        _with(
            '{ node = "4", input = "amount", value = 2 }',
            '{ node = "7", input = "filename_prefix", value = "y" }',
        ),
    ),
    (
        "two-options-one-input",
        "options[1].choices[1].sets[0]",
        _with(
            '{ node = "5", input = "blend_factor", value = 1 }',
            '{ node = "4", input = "amount", value = 3 }',
        ),
    ),
    (
        "multiplier-zero",
        "options[0].choices[1].price_multiplier",
        _with("price_multiplier = 2", "price_multiplier = 0"),
    ),
    (
        "multiplier-float",
        "options[0].choices[1].price_multiplier",
        _with("price_multiplier = 2", "price_multiplier = 1.5"),
    ),
    (
        "price-add-negative",
        "options[1].choices[1].price_add",
        _with("price_add = 1", "price_add = -1"),
    ),
    (
        "output-not-a-save-node",
        "output.node",
        _with('[output]\nnode = "7"', '[output]\nnode = "5"'),
    ),
    ("previews-not-bool", "previews", _with("previews = true", "previews = 1")),
    (
        "five-options",
        "options",
        RICH_TOML
        + "".join(
            RICH_TOML[
                RICH_TOML.index('[[options]]\nid = "mix"') : RICH_TOML.index("[output]")
            ].replace('id = "mix"', f'id = "m{i}"')
            for i in range(3)
        ),
    ),
]


@pytest.mark.parametrize(("case", "field", "toml"), BROKEN, ids=[case for case, _, _ in BROKEN])
def test_a_broken_rich_manifest_names_the_file_and_field(
    tmp_path: Path, case: str, field: str, toml: str
) -> None:
    folder = write(tmp_path / "p", toml)
    with pytest.raises(PresetError) as info:
        load_preset(folder)
    message = str(info.value)
    assert message.startswith(f"{folder / 'preset.toml'}: {field} "), message
