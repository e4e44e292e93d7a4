"""The job state machine on its own."""

import itertools

import pytest

from comfygram.domain.jobs import (
    REFUNDED_ON,
    DeliveryStatus,
    JobStatus,
    TransitionError,
    check_transition,
    counts_attempt,
    delivery_refusal,
)

ALLOWED = {
    (JobStatus.QUEUED, JobStatus.PROCESSING),
    (JobStatus.QUEUED, JobStatus.CANCELLED),
    (JobStatus.PROCESSING, JobStatus.SUCCEEDED),
    (JobStatus.PROCESSING, JobStatus.QUEUED),
    (JobStatus.PROCESSING, JobStatus.FAILED),
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(JobStatus, JobStatus)))
def test_only_the_designed_transitions_are_allowed(current, target):
    if (current, target) in ALLOWED:
        check_transition(current, target)
    else:
        with pytest.raises(TransitionError):
            check_transition(current, target)


def test_final_states_lead_nowhere():
    for final in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
        for target in JobStatus:
            with pytest.raises(TransitionError):
                check_transition(final, target)


def test_attempts_count_runs_that_did_not_succeed():
    assert counts_attempt(JobStatus.PROCESSING, JobStatus.QUEUED)
    assert counts_attempt(JobStatus.PROCESSING, JobStatus.FAILED)
    assert not counts_attempt(JobStatus.PROCESSING, JobStatus.SUCCEEDED)
    assert not counts_attempt(JobStatus.QUEUED, JobStatus.PROCESSING)


def test_failure_and_cancellation_refund():
    assert REFUNDED_ON == {JobStatus.FAILED, JobStatus.CANCELLED}


@pytest.mark.parametrize(
    ("status", "delivery", "report", "refusal"),
    [
        (JobStatus.QUEUED, DeliveryStatus.PENDING, DeliveryStatus.SENDING, "job_active"),
        (JobStatus.PROCESSING, DeliveryStatus.PENDING, DeliveryStatus.SENDING, None),
        (JobStatus.PROCESSING, DeliveryStatus.PENDING, DeliveryStatus.DELIVERED, "job_active"),
        (JobStatus.PROCESSING, DeliveryStatus.SENDING, DeliveryStatus.DELIVERED, None),
        (JobStatus.PROCESSING, DeliveryStatus.SENDING, DeliveryStatus.SENDING, "delivery_claimed"),
        (JobStatus.SUCCEEDED, DeliveryStatus.PENDING, DeliveryStatus.SENDING, None),
        (JobStatus.SUCCEEDED, DeliveryStatus.DELIVERED, DeliveryStatus.SENDING, "delivery_claimed"),
        (JobStatus.FAILED, DeliveryStatus.PENDING, DeliveryStatus.FAILED, None),
        (JobStatus.CANCELLED, DeliveryStatus.PENDING, DeliveryStatus.SENDING, None),
        (JobStatus.PROCESSING, DeliveryStatus.SENDING, DeliveryStatus.PENDING, None),
        (JobStatus.PROCESSING, DeliveryStatus.PENDING, DeliveryStatus.PENDING, "not_releasable"),
        (JobStatus.PROCESSING, DeliveryStatus.DELIVERED, DeliveryStatus.PENDING, "not_releasable"),
        (JobStatus.SUCCEEDED, DeliveryStatus.SENDING, DeliveryStatus.PENDING, "not_releasable"),
    ],
)
def test_a_final_message_is_claimed_once_while_processing_or_after_and_given_back_unsent(
    status: JobStatus, delivery: DeliveryStatus, report: DeliveryStatus, refusal: str | None
):
    assert delivery_refusal(status, delivery, report) == refusal
