"""The job state machine from docs/architecture.md."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"
    BLOCKED = "blocked"


ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.PROCESSING})
FINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

_ALLOWED = {
    JobStatus.QUEUED: {JobStatus.PROCESSING, JobStatus.CANCELLED},
    JobStatus.PROCESSING: {JobStatus.SUCCEEDED, JobStatus.QUEUED, JobStatus.FAILED},
}

# Leaving a job in these states gives the user their credits back.
REFUNDED_ON = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


class TransitionError(Exception):
    def __init__(self, current: JobStatus, target: JobStatus) -> None:
        super().__init__(f"a {current.value} job cannot become {target.value}")
        self.current = current
        self.target = target


def check_transition(current: JobStatus, target: JobStatus) -> None:
    """Raise TransitionError unless docs/architecture.md allows current -> target."""
    if target not in _ALLOWED.get(current, ()):
        raise TransitionError(current, target)


def counts_attempt(current: JobStatus, target: JobStatus) -> bool:
    """A run that ended in a retry or a failure used up one attempt."""
    return current is JobStatus.PROCESSING and target in (JobStatus.QUEUED, JobStatus.FAILED)


def delivery_refusal(
    status: JobStatus, delivery: DeliveryStatus, report: DeliveryStatus
) -> str | None:
    """Why a report on the job's final message is refused (``job_active``: nothing to deliver
    yet; ``delivery_claimed``: someone has claimed it; ``not_releasable``: only a processing
    job's claim is given back), or None when it is taken.

    The message is claimed (``sending``) once: by the worker finishing a processing job (a
    still's photo leaves while its result is stored) or an ended one. Its outcome is recorded
    once the job has ended, or once it is claimed. A processing job's claim may be given back
    (``pending``) by its worker before anything was sent: the result could not be rendered."""
    claimed = delivery is not DeliveryStatus.PENDING
    if report is DeliveryStatus.PENDING:
        releasable = status is JobStatus.PROCESSING and delivery is DeliveryStatus.SENDING
        return None if releasable else "not_releasable"
    early = status is JobStatus.PROCESSING and (report is DeliveryStatus.SENDING or claimed)
    if status not in FINAL and not early:
        return "job_active"
    if report is DeliveryStatus.SENDING and claimed:
        return "delivery_claimed"
    return None
