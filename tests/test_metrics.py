"""Prometheus metrics on the backend, and the job id on log lines."""

from __future__ import annotations

import json
import logging

import httpx
from prometheus_client import REGISTRY

from comfygram.logs import RedactingFormatter, _JobIdFilter, job_context
from tests import images
from tests.helpers import backend_client, create_job, register


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_need_the_service_token(app):
    async with backend_client(app, token=None) as anonymous:
        assert (await anonymous.get("/metrics")).status_code == 401
    async with backend_client(app) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "comfygram_queue_length" in response.text


async def test_a_jobs_life_and_a_payment_are_counted(api: httpx.AsyncClient):
    created = sample("comfygram_jobs_created_total", preset="bw")
    failed = sample("comfygram_jobs_finished_total", preset="bw", status="failed")
    refunded = sample("comfygram_jobs_refunded_total", preset="bw")
    waits = sample("comfygram_queue_wait_seconds_count", preset="bw")
    retries = sample("comfygram_job_retries_total", preset="bw")
    await register(api)
    job = (await create_job(api, image=images.png())).json()
    for target in ("processing", "queued", "processing", "failed"):
        response = await api.post(f"/api/jobs/{job['id']}/status", json={"status": target})
        assert response.status_code == 200, response.text
    # A repeated call changes nothing and counts nothing.
    await api.post(f"/api/jobs/{job['id']}/status", json={"status": "failed"})
    assert sample("comfygram_jobs_created_total", preset="bw") == created + 1
    assert sample("comfygram_queue_wait_seconds_count", preset="bw") == waits + 2
    assert sample("comfygram_job_retries_total", preset="bw") == retries + 1
    assert sample("comfygram_jobs_finished_total", preset="bw", status="failed") == failed + 1
    assert sample("comfygram_jobs_refunded_total", preset="bw") == refunded + 1

    sold = sample("comfygram_credits_sold_total")
    invoice = (
        await api.post("/api/payments/create", json={"telegram_id": 1001, "package": "small"})
    ).json()
    confirm = {
        "payload": invoice["payload"],
        "total_amount": invoice["amount"],
        "currency": "XTR",
        "telegram_payment_charge_id": "charge-m1",
    }
    for _ in range(2):  # delivered twice, credited and counted once
        assert (await api.post("/api/payments/confirm", json=confirm)).status_code == 200
    assert sample("comfygram_credits_sold_total") == sold + invoice["credits"]


def test_log_lines_inside_a_job_carry_its_id():
    formatter = RedactingFormatter([], as_json=True)
    job_filter = _JobIdFilter()

    def line(message: str) -> dict:
        record = logging.LogRecord("w", logging.INFO, __file__, 1, message, None, None)
        job_filter.filter(record)
        return json.loads(formatter.format(record))

    with job_context("job-42"):
        assert line("submitted")["job_id"] == "job-42"
    assert "job_id" not in line("idle")
    plain = RedactingFormatter([], as_json=False)
    record = logging.LogRecord("w", logging.INFO, __file__, 1, "done", None, None)
    with job_context("job-7"):
        job_filter.filter(record)
    assert plain.format(record).endswith("done [job job-7]")
