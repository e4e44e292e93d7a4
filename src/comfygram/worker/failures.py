"""What went wrong with a run, and what to do about it. Pure rules, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from comfygram.api import BackendError
from comfygram.comfyui import (
    ComfyUIUnavailable,
    ExecutionFailed,
    PromptRejected,
    PromptTimeout,
)

MAX_BACKOFF_SECONDS = 600.0


class FailureKind(StrEnum):
    UNAVAILABLE = "unavailable"  # ComfyUI unreachable: wait, the job is not at fault
    VALIDATION = "validation"  # bad workflow, missing node or model: no retry helps
    INPUT = "input"  # the user's photo is gone or unreadable: no retry helps
    OUT_OF_MEMORY = "out_of_memory"  # free VRAM and retry once
    TIMEOUT = "timeout"
    EXECUTION = "execution"
    REFUSED = "refused"  # the backend refused the result (too large, a type it does not take)
    CRASHED = "comfyui_crash"  # ComfyUI died twice while running this job: never again
    TOO_LARGE = "too_large"  # over Telegram's upload limit even encoded smaller: no retry helps


# ComfyUI dying this many times while running the same job fails it: a poison job (one that
# exhausts memory and kills ComfyUI) must not take the GPU down again and again.
MAX_COMFYUI_CRASHES = 2


class StaleOutput(Exception):
    """ComfyUI answered with a file this attempt did not write (its cache, or a mix-up)."""


class Action(StrEnum):
    WAIT = "wait"  # hold the job until ComfyUI is back; no attempt used
    RETRY = "retry"  # back to the queue after `delay`; one attempt used
    FAIL = "fail"  # failed for good, refunded


@dataclass(frozen=True)
class Decision:
    action: Action
    delay: float = 0.0
    free_memory: bool = False


def classify(exc: BaseException) -> FailureKind:
    if isinstance(exc, ComfyUIUnavailable):
        return FailureKind.UNAVAILABLE
    if isinstance(exc, BackendError):
        return FailureKind.REFUSED
    if isinstance(exc, PromptRejected):
        return FailureKind.VALIDATION
    if isinstance(exc, PromptTimeout):
        return FailureKind.TIMEOUT
    if isinstance(exc, ExecutionFailed) and exc.out_of_memory:
        return FailureKind.OUT_OF_MEMORY
    return FailureKind.EXECUTION


def backoff(attempts_used: int, base: float) -> float:
    """Seconds before the next run: base, 2×base, 4×base… capped."""
    return min(MAX_BACKOFF_SECONDS, base * 2 ** max(0, attempts_used))


def decide(
    kind: FailureKind,
    *,
    attempts_used: int,
    max_attempts: int,
    backoff_base: float,
    previous_error: str | None = None,
) -> Decision:
    """``attempts_used`` counts earlier runs that ended in a retry or failure (not this one)."""
    if kind is FailureKind.UNAVAILABLE:
        return Decision(Action.WAIT)
    if kind in (
        FailureKind.VALIDATION,
        FailureKind.INPUT,
        FailureKind.REFUSED,
        FailureKind.CRASHED,
        FailureKind.TOO_LARGE,
    ):
        return Decision(Action.FAIL)
    if attempts_used + 1 >= max_attempts:
        return Decision(Action.FAIL, free_memory=kind is FailureKind.OUT_OF_MEMORY)
    if kind is FailureKind.OUT_OF_MEMORY:
        if error_kind(previous_error) is FailureKind.OUT_OF_MEMORY:
            return Decision(Action.FAIL, free_memory=True)  # one retry after freeing, no more
        return Decision(Action.RETRY, delay=0.0, free_memory=True)
    return Decision(Action.RETRY, delay=backoff(attempts_used, backoff_base))


def describe(kind: FailureKind, message: str) -> str:
    """The job's stored error: kind first, so it can be read back by error_kind()."""
    return f"{kind.value}: {message}"


def error_kind(error: str | None) -> FailureKind | None:
    if not error:
        return None
    head = error.split(":", 1)[0]
    return FailureKind(head) if head in FailureKind._value2member_map_ else None
