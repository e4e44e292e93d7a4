"""The benchmarks still run, at a size that proves it (their numbers are read by hand, not here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_job_create_bench_compares_the_databases():
    output = bench("job_create.py", "--jobs", "4", "--concurrency", "2")
    rows = {line.split()[0]: line.split()[1:] for line in output.splitlines() if line.strip()}
    for database in ("sqlite", "postgres"):
        assert all(float(rate) > 0 for rate in rows[database]), output
    assert "postgres/sqlite concurrent:" in output


@pytest.mark.timeout(180)
def test_worker_pipeline_bench_reports_every_stage():
    output = bench(
        "worker_pipeline.py", "--jobs", "2", "--execution", "0.05", "--photo-side", "320"
    )
    for stage in (
        "queue wait",
        "dequeue -> ComfyUI start",
        "ComfyUI idle between jobs",
        "ComfyUI done -> Telegram send",
    ):
        [line] = [line for line in output.splitlines() if line.startswith(stage)]
        assert len(line[len(stage) :].split()) == 4, line  # p50/p95, with and without prefetch


@pytest.mark.timeout(180)
def test_delivery_bench_reports_an_album_and_a_video():
    output = bench("delivery.py", "--jobs", "1", "--side", "160", "--frames", "8")
    for kind in ("album", "video"):
        [line] = [line for line in output.splitlines() if line.startswith(kind + " ")]
        assert len(line.split()) == 4 and float(line.split()[1]) > 0, line  # p50, p95, max
