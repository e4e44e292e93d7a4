"""Issue 13's goals, each measured by its own bench, one after the other in one run.

    .venv/bin/python bench/goals.py [--jobs 20] [--burst 60] [--seconds 8] [--memory-jobs 1000]

1. `fast_path.py --comfyui real --side 256 --gpu-ms 40` (50 ms jobs on the real ComfyUI, a GPU's
   share of each with the CPU free; the bot's status messages included): a job's own overhead
   (goal p50 <= 30 ms) and ComfyUI's idle while jobs wait (goal <= 3 %), with the bare runner
   beside them.
2. The same through the API alone (`--no-status-message`), and without `--gpu-ms` (512x512
   `invert`, all of it CPU work on the two cores the rest of the system needs): printed beside,
   not judged; see docs/performance.md for why.
3. `backend_rates.py --workers 2`: job creations with a 1.3 MB JPEG (goal >= 100/s) and status
   reads (goal >= 1,000/s), /healthz of the same server beside them.
4. `worker_memory.py`: the worker's RSS over 1,000 jobs (goal within +-5 %).

Each bench's whole output is printed as it runs; the table at the end compares its figures with
the goals. Takes about six minutes. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Goal:
    name: str
    measured: float | None
    bound: float
    at_most: bool  # the goal is measured <= bound; else measured >= bound
    unit: str
    beside: str = ""  # what it is measured against, printed, not judged

    @property
    def met(self) -> bool:
        if self.measured is None:
            return False
        return self.measured <= self.bound if self.at_most else self.measured >= self.bound

    def row(self) -> str:
        shown = "-" if self.measured is None else f"{self.measured:,.1f} {self.unit}"
        goal = f"{'<=' if self.at_most else '>='} {self.bound:,g} {self.unit}"
        verdict = "met" if self.met else "NOT MET"
        return f"{self.name:<38} {shown:>14} {goal:>14}  {verdict:<8} {self.beside}"


def run(script: str, *args: str) -> Any:
    """Run one bench with --json, its output passed through; the figures it wrote."""
    with tempfile.TemporaryDirectory(prefix="goals-") as tmp:
        figures = Path(tmp) / "figures.json"
        command = [sys.executable, str(BENCH / script), *args, "--json", str(figures)]
        print(f"\n$ {' '.join(['.venv/bin/python', f'bench/{script}', *args])}", flush=True)
        subprocess.run(command, check=True)
        return json.loads(figures.read_text())


def judged(
    gpu: dict[str, Any], api: dict[str, Any], cpu: dict[str, Any], rates: dict, memory: dict
) -> list[Goal]:
    two = rates["rates"]["2"]
    return [
        Goal(
            "overhead p50, 50 ms jobs",
            gpu["overhead_p50_ms"],
            30,
            True,
            "ms",
            f"bare runner {gpu['bare_overhead_p50_ms']:.1f} ms; API alone "
            f"{api['overhead_p50_ms']:.1f} ms; CPU-only invert {cpu['overhead_p50_ms']:.1f} ms",
        ),
        Goal(
            "ComfyUI idle while jobs wait, 50 ms jobs",
            100 * gpu["idle_while_jobs_wait"],
            3,
            True,
            "%",
            f"bare runner {100 * gpu['bare_idle']:.1f} %; ComfyUI waited for the worker "
            f"{gpu['late_submits']} times; CPU-only invert {100 * cpu['idle_while_jobs_wait']:.1f} "
            f"% (bare {100 * cpu['bare_idle']:.1f} %), not judged",
        ),
        Goal(
            "creations/s, 2 processes",
            two["create"],
            100,
            False,
            "/s",
            f"/healthz {two['/healthz']:,.0f}/s; JPEG of {rates['image_bytes'] / 1e6:.2f} MB",
        ),
        Goal("status reads/s, 2 processes", two["read"], 1000, False, "/s"),
        Goal(
            f"worker RSS growth over {memory['jobs']:,} jobs",
            abs(memory["growth_pct"]),
            5,
            True,
            "%",
            f"{memory['growth_pct']:+.1f} %",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20, help="single jobs in each fast path")
    parser.add_argument("--burst", type=int, default=60, help="jobs at once in each fast path")
    parser.add_argument("--seconds", type=float, default=8.0, help="backend_rates' phase length")
    parser.add_argument("--memory-jobs", type=int, default=1000)
    args = parser.parse_args()
    jobs = ["--jobs", str(args.jobs), "--burst", str(args.burst)]
    gpu_like = ["--comfyui", "real", "--side", "256", "--gpu-ms", "40", *jobs]
    [gpu] = run("fast_path.py", *gpu_like)
    [api] = run("fast_path.py", *gpu_like, "--no-status-message")
    [cpu] = run("fast_path.py", "--comfyui", "real", *jobs)
    rates = run("backend_rates.py", "--workers", "2", "--seconds", f"{args.seconds:g}")
    memory = run("worker_memory.py", "--jobs", str(args.memory_jobs))
    goals = judged(gpu, api, cpu, rates, memory)
    print(f"\nissue 13's goals, this run ({gpu['source']})")
    print(f"{'goal':<38} {'measured':>14} {'goal':>14}  {'verdict':<8} beside it")
    for goal in goals:
        print(goal.row())
    print(f"{sum(goal.met for goal in goals)} of {len(goals)} met")


if __name__ == "__main__":
    main()
