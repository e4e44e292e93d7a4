"""Prometheus metrics. Each process counts its own (the backend's /metrics, the worker's port);
Prometheus adds them up across backends and workers.

The processes of one `comfygram backend --workers N` answer on one port, so they count in
prometheus_client's multiprocess mode: PROMETHEUS_MULTIPROC_DIR (a fresh folder the parent
makes) holds every process's values, and /metrics, whichever process answers, adds them up.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# Seconds, from a quick filter to a long diffusion run or a long queue.
_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)

JOBS_CREATED = Counter("comfygram_jobs_created_total", "Jobs created (charged).", ["preset"])
JOBS_FINISHED = Counter(
    "comfygram_jobs_finished_total",
    "Jobs that reached a final state: succeeded, failed or cancelled.",
    ["preset", "status"],
)
JOBS_REFUNDED = Counter(
    "comfygram_jobs_refunded_total", "Jobs whose charge was refunded.", ["preset"]
)
OPTIONS_CHOSEN = Counter(
    "comfygram_option_choices_total",
    "Choices made in created jobs, defaults included: what sells.",
    ["preset", "option", "choice"],
)
OUTPUTS_STORED = Counter(
    "comfygram_outputs_total", "Outputs stored, by kind (image, animation, video).", ["kind"]
)
OUTPUT_BYTES = Counter(
    "comfygram_output_bytes_total", "Bytes of outputs stored, by kind.", ["kind"]
)
JOB_RETRIES = Counter("comfygram_job_retries_total", "Runs that ended in a retry.", ["preset"])
QUEUE_LENGTH = Gauge(
    "comfygram_queue_length",
    "Jobs waiting or running, as Redis holds them.",
    # Every process reads the same queue: the latest reading is the answer, not their sum.
    multiprocess_mode="mostrecent",
)
QUEUE_WAIT = Histogram(
    "comfygram_queue_wait_seconds", "From creation to processing.", ["preset"], buckets=_BUCKETS
)
RUN_TIME = Histogram(
    "comfygram_run_seconds", "From processing to succeeded.", ["preset"], buckets=_BUCKETS
)
COMFYUI_ERRORS = Counter(
    "comfygram_comfyui_errors_total",
    "Failed runs by kind (unavailable, validation, out_of_memory, timeout, execution, input).",
    ["kind"],
)
TELEGRAM_ERRORS = Counter(
    "comfygram_telegram_errors_total",
    "Telegram Bot API errors by code (429, 403, 5xx, network).",
    ["code"],
)
PAYMENTS = Counter("comfygram_payments_total", "Payments credited.", ["package"])
CREDITS_SOLD = Counter("comfygram_credits_sold_total", "Credits sold for Telegram Stars.")
STARS_RECEIVED = Counter("comfygram_stars_received_total", "Telegram Stars received.")
STARS_REFUNDED = Counter(
    "comfygram_stars_refunded_total",
    "Telegram Stars given back for charges that could not be credited.",
)

STAR_DISCREPANCIES = Counter(
    "comfygram_star_discrepancies_total",
    "Discrepancies Star reconciliation found between Telegram and the payments table, by kind "
    "(credited_late, unknown_to_telegram, amount_mismatch, refund_mismatch, uncredited).",
    ["kind"],
)
STAR_DISCREPANCIES_OPEN = Gauge(
    "comfygram_star_discrepancies_unresolved",
    "Star discrepancies no operator has marked resolved, after the backend's last pass.",
    multiprocess_mode="mostrecent",
)
AUDIT_DISCREPANCIES = Gauge(
    "comfygram_audit_discrepancies",
    "What the backend's last ledger audit found (0: the books add up).",
    multiprocess_mode="mostrecent",
)


def exposition() -> tuple[bytes, str]:
    """The text format Prometheus scrapes, and its content type: every process's values in
    multiprocess mode."""
    if os.environ.get(MULTIPROCESS_DIR_VARIABLE):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
