"""What a preset asks of a user and gives back: photo slots, a prompt, options and the output.

Pure data and rules, no I/O: the backend checks and prices a request with it, the bot decides
what to ask next with it, and the worker fills the workflow with it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = [
    "MAX_CHOICES",
    "MAX_OPTIONS",
    "MAX_PHOTOS",
    "OUTPUT_KINDS",
    "Choice",
    "Contract",
    "MediaKind",
    "Option",
    "OutputSpec",
    "PhotoSlot",
    "PromptSlot",
    "RequestRefused",
    "Setting",
]

MAX_PHOTOS = 4
MAX_OPTIONS = 4
MAX_CHOICES = 8

Texts = dict[str, str]
Value = bool | int | float | str


class MediaKind(StrEnum):
    IMAGE = "image"
    ANIMATION = "animation"
    VIDEO = "video"


# The save node decides what a preset gives back; ComfyUI reports all of them under "images".
OUTPUT_KINDS: dict[str, MediaKind] = {
    "SaveImage": MediaKind.IMAGE,
    "SaveAnimatedWEBP": MediaKind.ANIMATION,
    "SaveAnimatedPNG": MediaKind.ANIMATION,
    "SaveVideo": MediaKind.VIDEO,
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PhotoSlot(_Frozen):
    """One photo the preset needs, loaded by a ``LoadImage`` node."""

    name: str
    node: str
    # What the bot asks with; None: its generic "send a photo".
    title: Texts | None = None


class PromptSlot(_Frozen):
    node: str
    input: str
    required: bool = True


class Setting(_Frozen):
    """One workflow input a choice sets."""

    node: str
    input: str
    value: Value


class Choice(_Frozen):
    id: str
    title: Texts
    sets: tuple[Setting, ...] = ()
    price_add: int = 0
    price_multiplier: int = 1


class Option(_Frozen):
    id: str
    title: Texts
    default: str
    choices: tuple[Choice, ...]

    def choice(self, choice_id: str) -> Choice | None:
        return next((c for c in self.choices if c.id == choice_id), None)


class OutputSpec(_Frozen):
    node: str
    kind: MediaKind


class RequestRefused(ValueError):
    """A request that does not fit the contract; ``code`` is the API's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class Contract(_Frozen):
    photos: tuple[PhotoSlot, ...]
    prompt: PromptSlot | None = None
    options: tuple[Option, ...] = ()
    output: OutputSpec
    previews: bool = False

    def option(self, option_id: str) -> Option | None:
        return next((o for o in self.options if o.id == option_id), None)

    def defaults(self) -> dict[str, str]:
        return {option.id: option.default for option in self.options}

    def resolve(
        self, *, photos: int, prompt: str | None, options: Mapping[str, str]
    ) -> dict[str, str]:
        """The chosen options with defaults filled in; RequestRefused names what does not fit."""
        wanted = len(self.photos)
        if photos < wanted:
            names = ", ".join(slot.name for slot in self.photos)
            raise RequestRefused(
                "photo_missing",
                f"This preset needs {_plural(wanted, 'photo')} ({names}); {photos} sent.",
            )
        if photos > wanted:
            raise RequestRefused(
                "too_many_photos",
                f"This preset takes {_plural(wanted, 'photo')}; {photos} sent.",
            )
        if self.prompt is None and prompt:
            raise RequestRefused("prompt_not_accepted", "This preset takes no text prompt.")
        if self.prompt is not None and self.prompt.required and not prompt:
            raise RequestRefused(
                "prompt_required", "This preset needs a text prompt: describe the edit."
            )
        chosen = self.defaults()
        for option_id, choice_id in options.items():
            option = self.option(option_id)
            if option is None:
                known = ", ".join(o.id for o in self.options) or "none"
                raise RequestRefused(
                    "unknown_option",
                    f"This preset has no option {option_id!r} (its options: {known}).",
                )
            if option.choice(choice_id) is None:
                known = ", ".join(c.id for c in option.choices)
                raise RequestRefused(
                    "unknown_choice",
                    f"Option {option_id!r} has no choice {choice_id!r} (its choices: {known}).",
                )
            chosen[option_id] = choice_id
        return chosen

    def _chosen(self, chosen: Mapping[str, str]) -> list[Choice]:
        picked = []
        for option in self.options:
            choice = option.choice(chosen.get(option.id, option.default))
            if choice is None:
                raise RequestRefused("unknown_choice", f"Option {option.id!r} has no such choice.")
            picked.append(choice)
        return picked

    def price(self, base: int, chosen: Mapping[str, str]) -> int:
        """(base + every chosen price_add) x every chosen price_multiplier."""
        picked = self._chosen(chosen)
        added = base + sum(c.price_add for c in picked)
        return added * math.prod(c.price_multiplier for c in picked)

    def apply(
        self,
        workflow: Mapping[str, Any],
        *,
        photos: Sequence[str],
        prompt: str | None,
        chosen: Mapping[str, str],
        output_prefix: str,
    ) -> dict[str, Any]:
        """A copy of ``workflow`` with the uploaded photo names, the prompt, the chosen
        options and this attempt's output prefix filled in."""
        if len(photos) != len(self.photos):
            raise ValueError(f"{len(self.photos)} photos expected, got {len(photos)}")
        filled = copy.deepcopy(dict(workflow))

        def put(node: str, name: str, value: Any) -> None:
            filled[node]["inputs"][name] = value

        for slot, name in zip(self.photos, photos, strict=True):
            put(slot.node, "image", name)
        if self.prompt is not None:
            put(self.prompt.node, self.prompt.input, prompt or "")
        for choice in self._chosen(chosen):
            for setting in choice.sets:
                put(setting.node, setting.input, setting.value)
        put(self.output.node, "filename_prefix", output_prefix)
        return filled
