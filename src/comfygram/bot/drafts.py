"""An order being put together in the chat, and what to ask next: pure rules, no I/O.

A preset's contract lists what it needs: its photo slots in order, then its options, then its
prompt (if any). The bot asks for them in that order, one question at a time; a preset with more
than the old "one photo, maybe a required prompt" also ends with one confirmation showing the
final price. The draft is kept in the FSM storage (Redis), so a restarted bot carries on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel

from comfygram.bot.sources import PhotoSource
from comfygram.presets.contract import Contract


class StepKind(StrEnum):
    PHOTO = "photo"
    OPTION = "option"
    PROMPT = "prompt"
    CONFIRM = "confirm"


@dataclass(frozen=True)
class Step:
    """One question: a photo slot or an option (``index`` into the contract's), the prompt,
    or the confirmation."""

    kind: StepKind
    index: int = 0


class Draft(BaseModel):
    """What the user has given so far for one preset."""

    preset: str
    photos: list[PhotoSource] = []
    # Photos that came with the preset choice (photo first): "Back" does not ask for them again.
    given: int = 0
    options: dict[str, str] = {}
    prompt: str | None = None
    prompt_done: bool = False
    # The message asking the current question: only its buttons act (an older one is stale).
    asked: int | None = None


def short_flow(contract: Contract) -> bool:
    """Today's presets (one photo, no options, no prompt or a required one) keep today's short
    conversation: no confirmation, the order is placed once the last part arrives."""
    prompt_as_today = contract.prompt is None or contract.prompt.required
    return len(contract.photos) == 1 and not contract.options and prompt_as_today


def steps(contract: Contract) -> list[Step]:
    """Every question for this preset, in the order they are asked."""
    order = [Step(StepKind.PHOTO, i) for i in range(len(contract.photos))]
    order += [Step(StepKind.OPTION, i) for i in range(len(contract.options))]
    if contract.prompt is not None:
        order.append(Step(StepKind.PROMPT))
    if not short_flow(contract):
        order.append(Step(StepKind.CONFIRM))
    return order


def answered(contract: Contract, draft: Draft, step: Step) -> bool:
    if step.kind is StepKind.PHOTO:
        return len(draft.photos) > step.index
    if step.kind is StepKind.OPTION:
        return contract.options[step.index].id in draft.options
    if step.kind is StepKind.PROMPT:
        return draft.prompt_done
    return False  # the confirmation is answered by placing the order


def next_step(contract: Contract, draft: Draft) -> Step | None:
    """The first question not answered yet; None when the order can be placed as it is."""
    return next((s for s in steps(contract) if not answered(contract, draft, s)), None)


def unanswer(contract: Contract, draft: Draft, step: Step) -> Draft:
    """The draft without the answer to ``step`` (and to every later one)."""
    if step.kind is StepKind.PHOTO:
        return draft.model_copy(
            update={
                "photos": draft.photos[: step.index],
                "options": {},
                "prompt": None,
                "prompt_done": False,
            }
        )
    if step.kind is StepKind.OPTION:
        keep = {o.id for o in contract.options[: step.index]}
        options = {k: v for k, v in draft.options.items() if k in keep}
        return draft.model_copy(update={"options": options, "prompt": None, "prompt_done": False})
    if step.kind is StepKind.PROMPT:
        return draft.model_copy(update={"prompt": None, "prompt_done": False})
    return draft


def back(contract: Contract, draft: Draft) -> Draft | None:
    """The draft one answer back, so the previous question is asked again; None when there is
    nothing before the current question but the choice of the preset."""
    order = steps(contract)
    current = next_step(contract, draft)
    position = order.index(current) if current is not None else len(order)
    if position == 0:
        return None
    previous = order[position - 1]
    if previous.kind is StepKind.PHOTO and previous.index < draft.given:
        return None  # that photo came with the preset choice: back to choosing a preset
    return unanswer(contract, draft, previous)


def add_photos(contract: Contract, draft: Draft, photos: list[PhotoSource]) -> tuple[Draft, int]:
    """The draft with ``photos`` filling the open slots in order, and how many were left over
    (an album with more photos than the preset still needs)."""
    room = max(0, len(contract.photos) - len(draft.photos))
    taken = photos[:room]
    return draft.model_copy(update={"photos": [*draft.photos, *taken]}), len(photos) - len(taken)


def choose(contract: Contract, draft: Draft, option_id: str, choice_id: str) -> Draft | None:
    """The draft with this choice made; None when the preset has no such option or choice."""
    option = contract.option(option_id)
    if option is None or option.choice(choice_id) is None:
        return None
    return draft.model_copy(update={"options": {**draft.options, option_id: choice_id}})


def price(contract: Contract, base: int, chosen: dict[str, str]) -> int:
    """The price with these choices (defaults for the options not chosen yet)."""
    return contract.price(base, {**contract.defaults(), **chosen})


def price_range(contract: Contract, base: int) -> tuple[int, int]:
    """The least and the most this preset can cost, whatever is chosen (at most 8^4
    combinations of choices)."""
    if not contract.options:
        return base, base
    ids = [option.id for option in contract.options]
    combos = itertools.product(*([c.id for c in o.choices] for o in contract.options))
    prices = [contract.price(base, dict(zip(ids, combo, strict=True))) for combo in combos]
    return min(prices), max(prices)


def cheapest(contract: Contract, base: int) -> int:
    """The least this preset can cost: what a balance must cover before anything is asked."""
    return price_range(contract, base)[0]


def choice_prices(contract: Contract, base: int, draft: Draft, option_index: int) -> list[int]:
    """The price each choice of this option would lead to, given the choices made so far."""
    option = contract.options[option_index]
    return [price(contract, base, {**draft.options, option.id: c.id}) for c in option.choices]


def digest(draft: Draft) -> str:
    """A short fingerprint of the order (photos, options, prompt) for its idempotency key."""
    photos = [p.file_unique_id or p.file_id or f"job:{p.job_id}:{p.index}" for p in draft.photos]
    body = json.dumps(
        [draft.preset, photos, sorted(draft.options.items()), draft.prompt], ensure_ascii=False
    )
    return hashlib.sha256(body.encode()).hexdigest()[:16]
