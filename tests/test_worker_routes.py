"""The backend routes the worker's failure rules rest on, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools

import httpx
from sqlalchemy import update

from comfygram.backend.models import Job
from comfygram.domain.jobs import DeliveryStatus, JobStatus, delivery_refusal
from tests import images
from tests.helpers import create_job, grant, register

USER = 9191


async def _processing_job(api: httpx.AsyncClient, user: int = USER) -> str:
    await register(api, user)
    await grant(api, user, 5, "routes")
    created = await create_job(api, user, "invert")
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    moved = await api.post(f"/api/jobs/{job_id}/status", json={"status": "processing"})
    assert moved.status_code == 200, moved.text
    return job_id


async def test_a_status_message_is_not_recorded_once_the_final_message_is_claimed(api):
    job_id = await _processing_job(api)
    recorded = await api.post(
        f"/api/jobs/{job_id}/status-message", json={"chat_id": USER, "message_id": 10}
    )
    assert recorded.json()["status_message_id"] == 10  # while it runs: recorded
    await api.post(f"/api/jobs/{job_id}/status", json={"status": "failed", "error": "x: y"})
    claim = await api.post(f"/api/jobs/{job_id}/delivery", json={"status": "sending"})
    assert claim.json()["status_message_id"] == 10  # the claim carries it, to be removed
    late = await api.post(
        f"/api/jobs/{job_id}/status-message", json={"chat_id": USER, "message_id": 11}
    )
    assert late.status_code == 200
    assert late.json()["status_message_id"] == 10  # not 11: the bot deletes message 11


async def test_a_status_message_racing_the_claim_is_either_recorded_and_claimed_or_refused(api):
    """The bot records its message just as a worker claims the result: whichever comes first,
    the claimant and the bot agree on whether the job has it (one of them removes it)."""
    for message_id in range(20, 30):
        user = USER + message_id  # one job each: a user has at most 3 at once
        job_id = await _processing_job(api, user)
        record, claim = await asyncio.gather(
            api.post(
                f"/api/jobs/{job_id}/status-message",
                json={"chat_id": user, "message_id": message_id},
            ),
            api.post(f"/api/jobs/{job_id}/delivery", json={"status": "sending"}),
        )
        assert record.status_code == 200 and claim.status_code == 200, (record, claim)
        kept = record.json()["status_message_id"]
        assert kept in (None, message_id) and claim.json()["status_message_id"] == kept


async def test_a_cancelled_job_records_no_status_message(api):
    await register(api, USER)
    created = await create_job(api, USER, "invert")
    job_id = created.json()["id"]
    await api.post(f"/api/jobs/{job_id}/status", json={"status": "cancelled"})
    late = await api.post(
        f"/api/jobs/{job_id}/status-message", json={"chat_id": USER, "message_id": 12}
    )
    assert late.json()["status_message_id"] is None


async def test_comfyui_deaths_are_counted_once_per_report(api):
    job_id = await _processing_job(api)
    counts = []
    for seen in (0, 0, 1, 5):
        answer = await api.post(f"/api/jobs/{job_id}/comfyui-crash", json={"seen": seen})
        assert answer.status_code == 200, answer.text
        counts.append(answer.json()["comfyui_crashes"])
    assert counts == [1, 1, 2, 2]
    bad = await api.post(f"/api/jobs/{job_id}/comfyui-crash", json={"seen": -1})
    assert bad.status_code == 422


async def test_the_result_limits_follow_the_settings(api, settings):
    answer = await api.get("/api/jobs/limits")
    assert answer.json() == {
        "result_max_bytes": 4 * settings.max_upload_bytes,
        "result_max_pixels": 4 * settings.max_image_pixels,
        "max_outputs": 20,
    }


async def test_start_moves_a_queued_job_to_processing_once(api):
    await register(api, USER)
    await grant(api, USER, 5, "routes")
    job_id = (await create_job(api, USER, "invert")).json()["id"]
    first = await api.post(f"/api/jobs/{job_id}/start", json={"worker": "w1"})
    assert first.status_code == 200, first.text
    assert first.json()["fresh"] is True
    assert first.json()["job"]["status"] == "processing"
    again = await api.post(f"/api/jobs/{job_id}/start", json={"worker": "w2"})
    assert again.json()["fresh"] is False  # re-attach: the first run may be in ComfyUI
    assert again.json()["job"]["attempts"] == first.json()["job"]["attempts"]
    await api.post(f"/api/jobs/{job_id}/status", json={"status": "failed", "error": "x: y"})
    ended = await api.post(f"/api/jobs/{job_id}/start", json={"worker": "w2"})
    assert (ended.json()["fresh"], ended.json()["job"]["status"]) == (False, "failed")
    unknown = await api.post("/api/jobs/nope/start", json={"worker": "w2"})
    assert unknown.status_code == 404
    nameless = await api.post(f"/api/jobs/{job_id}/start", json={"worker": ""})
    assert nameless.status_code == 422


async def test_a_final_status_can_claim_the_delivery_in_the_same_step(api):
    job_id = await _processing_job(api)
    failed = await api.post(
        f"/api/jobs/{job_id}/status", json={"status": "failed", "error": "x: y", "deliver": True}
    )
    assert failed.status_code == 200, failed.text
    assert (failed.json()["status"], failed.json()["delivery_status"]) == ("failed", "sending")
    twice = await api.post(f"/api/jobs/{job_id}/status", json={"status": "failed", "deliver": True})
    assert twice.status_code == 409
    assert twice.json()["error"]["code"] == "delivery_claimed"


async def test_deliver_is_refused_with_a_status_that_is_not_final(api):
    await register(api, USER)
    await grant(api, USER, 5, "routes")
    job_id = (await create_job(api, USER, "invert")).json()["id"]
    refused = await api.post(
        f"/api/jobs/{job_id}/status", json={"status": "processing", "deliver": True}
    )
    assert refused.status_code == 422
    assert (await api.get(f"/api/jobs/{job_id}")).json()["status"] == "queued"  # unchanged


async def test_outputs_can_be_stored_succeeded_and_claimed_in_one_step(api):
    job_id = await _processing_job(api)
    files = [("file", ("out.png", images.png(), "image/png"))]
    stored = await api.put(f"/api/jobs/{job_id}/outputs", params={"succeed": "true"}, files=files)
    assert stored.status_code == 200, stored.text
    job = stored.json()
    assert (job["status"], job["delivery_status"], len(job["outputs"])) == (
        "succeeded",
        "sending",
        1,
    )
    again = await api.put(f"/api/jobs/{job_id}/outputs", params={"succeed": "true"}, files=files)
    assert again.status_code == 409  # no longer processing: nothing replaced, nothing claimed
    assert (await api.get(f"/api/jobs/{job_id}")).json()["outputs"] == job["outputs"]


async def test_outputs_stored_without_succeed_leave_the_job_processing(api):
    job_id = await _processing_job(api)
    files = [("file", ("out.png", images.png(), "image/png"))]
    stored = await api.put(f"/api/jobs/{job_id}/outputs", files=files)
    assert (stored.json()["status"], stored.json()["delivery_status"]) == ("processing", "pending")


async def test_a_processing_job_s_message_is_claimed_once_and_the_store_keeps_the_claim(api):
    """The worker claims the result's message while the job runs and sends it while the
    backend stores the result: storing with claim=false leaves the claim (and its outcome)."""
    job_id = await _processing_job(api)
    claim = await api.post(f"/api/jobs/{job_id}/delivery", json={"status": "sending"})
    assert claim.status_code == 200, claim.text
    assert (claim.json()["status"], claim.json()["delivery_status"]) == ("processing", "sending")
    second = await api.post(f"/api/jobs/{job_id}/delivery", json={"status": "sending"})
    assert (second.status_code, second.json()["error"]["code"]) == (409, "delivery_claimed")
    # The photo arrived before the result was stored: its outcome is recorded all the same.
    sent = await api.post(f"/api/jobs/{job_id}/delivery", json={"status": "delivered"})
    assert (sent.json()["status"], sent.json()["delivery_status"]) == ("processing", "delivered")
    files = [("file", ("out.png", images.png(), "image/png"))]
    claiming = await api.put(f"/api/jobs/{job_id}/outputs", params={"succeed": "true"}, files=files)
    assert (claiming.status_code, claiming.json()["error"]["code"]) == (409, "delivery_claimed")
    assert (await api.get(f"/api/jobs/{job_id}")).json()["outputs"] == []  # nothing stored
    stored = await api.put(
        f"/api/jobs/{job_id}/outputs", params={"succeed": "true", "claim": "false"}, files=files
    )
    assert stored.status_code == 200, stored.text
    job = stored.json()
    assert (job["status"], job["delivery_status"], len(job["outputs"])) == (
        "succeeded",
        "delivered",
        1,
    )


async def test_succeeding_without_a_claim_leaves_an_unclaimed_message_to_claim(api):
    job_id = await _processing_job(api)
    files = [("file", ("out.png", images.png(), "image/png"))]
    stored = await api.put(
        f"/api/jobs/{job_id}/outputs", params={"succeed": "true", "claim": "false"}, files=files
    )
    assert (stored.json()["status"], stored.json()["delivery_status"]) == ("succeeded", "pending")
    claim = await api.post(f"/api/jobs/{job_id}/delivery", json={"status": "sending"})
    assert claim.json()["delivery_status"] == "sending"


async def test_every_delivery_report_follows_the_rule(api, app):
    """The report's one UPDATE and the locked path agree with domain.jobs.delivery_refusal
    for every job status, delivery status and report (``pending``: a claim given back), on
    both databases."""
    job_id = await _processing_job(api)
    for status, delivery, report in itertools.product(JobStatus, DeliveryStatus, DeliveryStatus):
        async with app.state.sessions() as session:
            await session.execute(
                update(Job).where(Job.id == job_id).values(status=status, delivery_status=delivery)
            )
            await session.commit()
        answer = await api.post(f"/api/jobs/{job_id}/delivery", json={"status": report})
        now = (await api.get(f"/api/jobs/{job_id}")).json()["delivery_status"]
        case = (status.value, delivery.value, report.value)
        refusal = delivery_refusal(status, delivery, report)
        if refusal is not None:
            assert (answer.status_code, answer.json()["error"]["code"]) == (409, refusal), case
            assert now == delivery, case
        else:
            assert answer.status_code == 200, case
            expected = delivery if delivery is DeliveryStatus.DELIVERED else report
            assert answer.json()["delivery_status"] == now == expected, case
