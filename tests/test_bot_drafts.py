"""The order's questions as a preset's contract decides them (``bot.drafts``, pure): which
question comes next, what Back undoes, albums filling slots, prices of choices, the order's
fingerprint, the buttons with their prices, and callback data within Telegram's 64 bytes."""

from __future__ import annotations

from comfygram.api import Preset
from comfygram.bot import drafts, keyboards
from comfygram.bot.callbacks import OptionPick, OrderStep
from comfygram.bot.drafts import Draft, Step, StepKind
from comfygram.bot.sources import PhotoSource
from comfygram.presets.contract import (
    Choice,
    Contract,
    MediaKind,
    Option,
    OutputSpec,
    PhotoSlot,
    PromptSlot,
)


def contract(photos: int = 2, *, options: bool = True, prompt: bool | None = False) -> Contract:
    """``prompt``: None = no prompt, True = required, False = optional."""
    count = Option(
        id="count",
        title={"en": "How many", "ru": "Сколько"},
        default="2",
        choices=(
            Choice(id="2", title={"en": "2", "ru": "2"}),
            Choice(id="4", title={"en": "4", "ru": "4"}, price_multiplier=2),
        ),
    )
    style = Option(
        id="style",
        title={"en": "Style", "ru": "Стиль"},
        default="plain",
        choices=(
            Choice(id="plain", title={"en": "Plain", "ru": "Просто"}),
            Choice(id="gold", title={"en": "Gold", "ru": "Золото"}, price_add=3),
        ),
    )
    return Contract(
        photos=tuple(PhotoSlot(name=f"p{i}", node=str(i + 1)) for i in range(photos)),
        prompt=None if prompt is None else PromptSlot(node="9", input="text", required=prompt),
        options=(count, style) if options else (),
        output=OutputSpec(node="10", kind=MediaKind.IMAGE),
    )


def _photo(n: int) -> PhotoSource:
    return PhotoSource(file_id=f"f{n}", file_unique_id=f"u{n}")


def test_the_questions_follow_the_contract():
    rich = contract()
    assert drafts.steps(rich) == [
        Step(StepKind.PHOTO, 0),
        Step(StepKind.PHOTO, 1),
        Step(StepKind.OPTION, 0),
        Step(StepKind.OPTION, 1),
        Step(StepKind.PROMPT),
        Step(StepKind.CONFIRM),
    ]
    # Today's presets keep the short conversation: no confirmation.
    for short in (
        contract(1, options=False, prompt=None),
        contract(1, options=False, prompt=True),
    ):
        assert drafts.short_flow(short)
        assert drafts.steps(short)[-1].kind is not StepKind.CONFIRM
    assert not drafts.short_flow(contract(1, options=False, prompt=False))  # optional prompt
    assert not drafts.short_flow(contract(1, options=True, prompt=None))
    assert not drafts.short_flow(contract(2, options=False, prompt=None))

    draft = Draft(preset="x")
    assert drafts.next_step(rich, draft) == Step(StepKind.PHOTO, 0)
    draft, extra = drafts.add_photos(rich, draft, [_photo(1)])
    assert extra == 0 and drafts.next_step(rich, draft) == Step(StepKind.PHOTO, 1)
    # An album fills the open slots in order; what does not fit is counted.
    draft, extra = drafts.add_photos(rich, draft, [_photo(2), _photo(3)])
    assert extra == 1 and [p.file_id for p in draft.photos] == ["f1", "f2"]
    assert drafts.next_step(rich, draft) == Step(StepKind.OPTION, 0)
    assert drafts.choose(rich, draft, "count", "8") is None
    assert drafts.choose(rich, draft, "nope", "4") is None
    draft = drafts.choose(rich, draft, "count", "4")
    assert draft is not None and drafts.next_step(rich, draft) == Step(StepKind.OPTION, 1)
    draft = drafts.choose(rich, draft, "style", "gold")
    assert draft is not None and drafts.next_step(rich, draft) == Step(StepKind.PROMPT)
    draft = draft.model_copy(update={"prompt": None, "prompt_done": True})  # skipped
    assert drafts.next_step(rich, draft) == Step(StepKind.CONFIRM)
    assert drafts.price(rich, 5, draft.options) == (5 + 3) * 2

    short = contract(1, options=False, prompt=None)
    done, _ = drafts.add_photos(short, Draft(preset="x"), [_photo(1), _photo(2)])
    assert drafts.next_step(short, done) is None  # nothing left: the order is placed


def test_back_undoes_the_last_answer_only():
    rich = contract()
    full = Draft(
        preset="x",
        photos=[_photo(1), _photo(2)],
        options={"count": "4", "style": "gold"},
        prompt="snow",
        prompt_done=True,
    )
    # At the confirmation: back to the prompt, which is asked again.
    at_prompt = drafts.back(rich, full)
    assert at_prompt is not None and drafts.next_step(rich, at_prompt) == Step(StepKind.PROMPT)
    assert at_prompt.prompt is None and at_prompt.options == full.options
    at_style = drafts.back(rich, at_prompt)
    assert at_style is not None and at_style.options == {"count": "4"}
    at_count = drafts.back(rich, at_style)
    assert at_count is not None and at_count.options == {}
    at_photo = drafts.back(rich, at_count)  # from the options back to the last photo
    assert at_photo is not None and [p.file_id for p in at_photo.photos] == ["f1"]
    at_first = drafts.back(rich, at_photo)
    assert at_first is not None and at_first.photos == []
    assert drafts.back(rich, at_first) is None  # before that: choosing the preset
    # A photo that came with the preset choice (photo first) is not asked for again.
    given = Draft(preset="x", photos=[_photo(1)], given=1)
    assert drafts.back(rich, given) is None


def test_prices_of_choices_and_the_cheapest():
    rich = contract()
    assert drafts.price_range(rich, 5) == (5, 16)
    assert drafts.cheapest(contract(options=False), 7) == 7
    draft = Draft(preset="x", options={"count": "4"})
    assert drafts.choice_prices(rich, 5, Draft(preset="x"), 0) == [5, 10]
    assert drafts.choice_prices(rich, 5, draft, 1) == [10, 16]


def test_the_order_digest_covers_photos_options_and_prompt():
    base = Draft(preset="x", photos=[_photo(1), _photo(2)], options={"count": "2"}, prompt="a")
    same = base.model_copy(update={"asked": 77})  # which message asked does not matter
    assert drafts.digest(base) == drafts.digest(same)
    for changed in (
        base.model_copy(update={"photos": [_photo(2), _photo(1)]}),
        base.model_copy(update={"options": {"count": "4"}}),
        base.model_copy(update={"prompt": "b"}),
        base.model_copy(update={"preset": "y"}),
    ):
        assert drafts.digest(changed) != drafts.digest(base)


def test_order_buttons_fit_telegram_callback_data():
    longest = OptionPick(option="o" * 16, choice="c" * 16).pack()
    assert longest == f"opt:{'o' * 16}:{'c' * 16}" and len(longest.encode()) <= 64
    for action in ("back", "cancel", "skip", "go"):
        assert OrderStep.unpack(OrderStep(action=action).pack()).action == action


def _preset(slug: str, price: int, rules: Contract) -> Preset:
    return Preset(
        slug=slug,
        title={"en": "Duo", "ru": "Дуэт"},
        description={"en": "", "ru": ""},
        price=price,
        takes_prompt=rules.prompt is not None,
        contract=rules,
        kind=rules.output.kind,
    )


def _buttons(markup) -> list[list[tuple[str, str]]]:
    return [[(b.text, b.callback_data) for b in row] for row in markup.inline_keyboard]


def test_option_buttons_show_their_prices_and_a_preset_the_least():
    preset = _preset("duo", 5, contract())
    assert _buttons(keyboards.presets([preset], "en")) == [[("Duo · from 5 💎", "ps:duo")]]
    assert _buttons(keyboards.presets([preset], "ru")) == [[("Дуэт · от 5 💎", "ps:duo")]]
    count = _buttons(keyboards.option_choices(preset, Draft(preset="duo"), 0, "en"))
    assert count == [
        [("2 · 5 💎", "opt:count:2")],
        [("4 · 10 💎", "opt:count:4")],
        [("◀️ Back", "ord:back"), ("✖️ Cancel", "ord:cancel")],
    ]
    # The prices follow the choices made so far.
    draft = Draft(preset="duo", options={"count": "4"})
    style = _buttons(keyboards.option_choices(preset, draft, 1, "ru"))
    assert style == [
        [("Просто · 10 💎", "opt:style:plain")],
        [("Золото · 16 💎", "opt:style:gold")],
        [("◀️ Назад", "ord:back"), ("✖️ Отмена", "ord:cancel")],
    ]
    # Choices that all cost the same show no price.
    flat = Option(
        id="look",
        title={"en": "Look"},
        default="a",
        choices=(Choice(id="a", title={"en": "A"}), Choice(id="b", title={"en": "B"})),
    )
    same = _preset("flat", 5, contract(options=False).model_copy(update={"options": (flat,)}))
    assert _buttons(keyboards.presets([same], "en")) == [[("Duo · 5 💎", "ps:flat")]]
    plain = _buttons(keyboards.option_choices(same, Draft(preset="flat"), 0, "en"))
    assert plain[:2] == [[("A", "opt:look:a")], [("B", "opt:look:b")]]
    assert _buttons(keyboards.confirmation("en", 6))[0] == [("✅ Start · 6 💎", "ord:go")]
    assert _buttons(keyboards.confirmation("en", 0))[0] == [("✅ Start · free", "ord:go")]
    assert _buttons(keyboards.question("en", skip=True)) == [
        [("⏭ Skip", "ord:skip")],
        [("◀️ Back", "ord:back"), ("✖️ Cancel", "ord:cancel")],
    ]
