"""The job state machine on its own."""

import itertools

import pytest

from comfygram.domain.jobs import (
    REFUNDED_ON,
    JobStatus,
    TransitionError,
    check_transition,
    counts_attempt,
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
