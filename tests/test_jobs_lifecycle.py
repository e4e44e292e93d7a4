"""A job's life through the routes the worker and the bot use."""

import asyncio

import pytest

from tests import images
from tests.helpers import backend_client, balance, create_job, register

pytestmark = pytest.mark.money


async def status(api, job_id: str, target: str, **extra):
    return await api.post(f"/api/jobs/{job_id}/status", json={"status": target, **extra})


async def test_job_runs_to_success_and_is_delivered(api):
    await register(api)
    photo = images.jpeg(120, 80)
    job = (await create_job(api, image=photo, filename="me.jpg")).json()

    assert (await api.get(f"/api/jobs/{job['id']}/input")).content == photo
    running = (await status(api, job["id"], "processing", worker="gpu-1")).json()
    assert running["status"] == "processing" and running["started_at"] and running["position"] == 0

    result = images.png(240, 160)
    uploaded = await api.put(
        f"/api/jobs/{job['id']}/result", files={"image": ("out.png", result, "image/png")}
    )
    assert uploaded.status_code == 200 and uploaded.json()["has_result"]
    done = (await status(api, job["id"], "succeeded")).json()
    assert done["status"] == "succeeded" and done["progress"] == 100 and done["finished_at"]

    download = await api.get(f"/api/jobs/{job['id']}/result")
    assert download.content == result and download.headers["content-type"] == "image/png"

    delivered = await api.post(f"/api/jobs/{job['id']}/delivery", json={"status": "delivered"})
    assert delivered.json()["delivery_status"] == "delivered"
    assert delivered.json()["delivered_at"]
    assert await balance(api) == 2


async def test_retry_counts_attempts_and_failure_refunds_once(api):
    await register(api)
    job = (await create_job(api)).json()
    await status(api, job["id"], "processing")
    retried = (await status(api, job["id"], "queued", error="ComfyUI timed out")).json()
    assert retried["attempts"] == 1 and retried["error"] == "ComfyUI timed out"
    assert retried["position"] == 1

    await status(api, job["id"], "processing")
    failed = await status(api, job["id"], "failed", error="out of memory")
    assert failed.json()["status"] == "failed" and failed.json()["attempts"] == 2
    assert await balance(api) == 3

    # Replays of the failure and explicit refunds give nothing more back.
    assert (await status(api, job["id"], "failed")).status_code == 200
    refund = (await api.post(f"/api/jobs/{job['id']}/refund")).json()
    assert refund["refunded"] is False and refund["balance"] == 3
    assert await balance(api) == 3


async def test_cancel_a_queued_job_refunds(api):
    await register(api)
    job = (await create_job(api)).json()
    assert await balance(api) == 2
    cancelled = (await status(api, job["id"], "cancelled")).json()
    assert cancelled["status"] == "cancelled"
    assert await balance(api) == 3
    assert (await status(api, job["id"], "processing")).status_code == 409


async def test_refund_of_a_succeeded_job_happens_once(api):
    await register(api)
    job = (await create_job(api)).json()
    await status(api, job["id"], "processing")
    await api.put(
        f"/api/jobs/{job['id']}/result", files={"image": ("o.png", images.png(), "image/png")}
    )
    await status(api, job["id"], "succeeded")
    first = (await api.post(f"/api/jobs/{job['id']}/refund")).json()
    second = (await api.post(f"/api/jobs/{job['id']}/refund")).json()
    assert (first["refunded"], second["refunded"]) == (True, False)
    assert await balance(api) == 3


async def test_succeeded_needs_a_result(api):
    await register(api)
    job = (await create_job(api)).json()
    await status(api, job["id"], "processing")
    response = await status(api, job["id"], "succeeded")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "result_missing"


async def test_blocked_delivery_marks_the_user(api):
    await register(api)
    job = (await create_job(api)).json()
    await status(api, job["id"], "cancelled")
    report = await api.post(
        f"/api/jobs/{job['id']}/delivery",
        json={"status": "blocked", "error": "Forbidden: bot was blocked by the user"},
    )
    assert report.json()["delivery_status"] == "blocked"
    user = (await api.get("/api/users/by-telegram-id/1001")).json()
    assert user["blocked_bot"] is True


async def test_history_status_message_and_queue_position(api):
    await register(api, 1001)
    await register(api, 2002)
    first = (await create_job(api, 1001)).json()
    second = (await create_job(api, 2002)).json()
    assert (first["position"], second["position"]) == (1, 2)

    recorded = await api.post(
        f"/api/jobs/{second['id']}/status-message", json={"chat_id": 2002, "message_id": 77}
    )
    assert (recorded.json()["status_chat_id"], recorded.json()["status_message_id"]) == (2002, 77)

    await status(api, first["id"], "processing")
    assert (await api.get(f"/api/jobs/{second['id']}")).json()["position"] == 1

    history = (await api.get("/api/jobs", params={"telegram_id": 2002})).json()
    assert [j["id"] for j in history] == [second["id"]]


async def test_prompt_preset_keeps_the_prompt(api):
    await register(api)
    await api.post(
        "/api/users/by-telegram-id/1001/credits",
        json={"amount": 20, "reason": "test", "actor": "t", "idempotency_key": "g"},
    )
    job = (await create_job(api, preset="edit", prompt="  make the sky purple  ")).json()
    assert job["prompt"] == "make the sky purple"
    assert job["price"] == 10


async def test_admin_adjustment_replay_is_a_no_op(api):
    await register(api)
    body = {"amount": 5, "reason": "support", "actor": "admin:42", "idempotency_key": "t-1"}
    first = await api.post("/api/users/by-telegram-id/1001/credits", json=body)
    second = await api.post("/api/users/by-telegram-id/1001/credits", json=body)
    assert first.json()["balance"] == second.json()["balance"] == 8


async def test_register_is_idempotent(api):
    first = await api.post("/api/users/register", json={"telegram_id": 5, "username": "ann"})
    second = await api.post("/api/users/register", json={"telegram_id": 5, "username": "bob"})
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["username"] == "ann" and second.json()["balance"] == 3


async def test_presets_list_shows_prices_and_models(api):
    presets = {p["slug"]: p for p in (await api.get("/api/presets")).json()}
    assert presets["bw"]["models"] == [] and presets["bw"]["takes_prompt"] is False
    assert presets["edit"]["takes_prompt"] is True and presets["edit"]["models"]
    assert set(presets["bw"]["title"]) == {"en", "ru"}
    detail = (await api.get("/api/presets/bw")).json()
    assert detail["workflow"] and detail["manifest"]["contract"]["photos"]


async def test_openapi_schema_keeps_the_specification_paths(app):
    # The pages themselves (/docs, off unless API_DOCS) are tested in test_api_docs.py.
    paths = app.openapi()["paths"]
    for path in (
        "/api/users/register",
        "/api/presets",
        "/api/jobs/create",
        "/api/users/by-telegram-id/{telegram_id}",
        "/api/payments/create",
    ):
        assert path in paths


async def test_health_and_readiness_need_no_token(app):
    async with backend_client(app, token=None) as anonymous:
        assert (await anonymous.get("/healthz")).json() == {"status": "ok"}
        ready = await anonymous.get("/readyz")
        assert ready.status_code == 200 and ready.json()["redis"] == "ok"


async def test_the_final_message_is_claimed_once(api):
    await register(api)
    job = (await create_job(api)).json()
    await status(api, job["id"], "processing", worker="gpu-1")
    await status(api, job["id"], "failed", error="execution: boom")

    async def claim(state: str):
        return await api.post(f"/api/jobs/{job['id']}/delivery", json={"status": state})

    assert (await claim("sending")).json()["delivery_status"] == "sending"
    second = await claim("sending")
    assert second.status_code == 409 and second.json()["error"]["code"] == "delivery_claimed"
    assert (await claim("delivered")).json()["delivery_status"] == "delivered"
    assert (await claim("sending")).status_code == 409


async def test_worker_heartbeats_decide_which_presets_are_available(api):
    everything = {p["slug"] for p in (await api.get("/api/presets?available=true")).json()}
    assert "oil" in everything  # no worker reports yet: nothing is hidden
    report = {
        "comfyui_url": "http://gpu-1:8188",
        "healthy": True,
        "runnable": ["bw", "invert"],
        "problems": {"oil": "model file checkpoints/v1-5-pruned-emaonly.safetensors is missing"},
        "ttl_seconds": 0.5,
    }
    assert (await api.put("/api/workers/gpu-1", json=report)).status_code == 200
    listed = (await api.get("/api/presets")).json()
    assert {p["slug"] for p in listed if p["available"]} == {"bw", "invert"}
    available = (await api.get("/api/presets?available=true")).json()
    assert {p["slug"] for p in available} == {"bw", "invert"}
    (worker,) = (await api.get("/api/workers")).json()
    assert worker["name"] == "gpu-1" and worker["problems"]["oil"].startswith("model file")
    await asyncio.sleep(0.6)  # the heartbeat expires: the worker is gone
    assert (await api.get("/api/workers")).json() == []
    assert len((await api.get("/api/presets?available=true")).json()) == len(everything)
