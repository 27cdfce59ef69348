"""Latency of single trivial jobs sent one at a time to an idle worker.

    python -m bench.latency [--jobs 200]

Enqueue-to-start (the job's own clock at start) and enqueue-to-finish (the
result seen by the caller), p50/p95/p99, core4celery next to plain Celery on
the same server and worker. Writes bench/results/latency.json and .png.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.common import Bench, count_commands, counted, pct, per_job, plot, run, save, wait_drained

QUANTILES = (0.5, 0.95, 0.99)


def measure(task: Any, n: int, offset: int) -> tuple[list[float], list[float]]:
    starts, finishes = [], []
    for i in range(n):
        sent = time.time()
        started = task.delay(i + offset).get(timeout=60, interval=0.002)
        finishes.append((time.time() - sent) * 1000)
        starts.append((started - sent) * 1000)
    return starts, finishes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    opts = parser.parse_args()
    commands = count_commands()
    costs: dict[str, dict[str, float]] = {}
    with Bench("latency") as bench:
        from bench.apps import core4, core4_trivial, plain_trivial

        core4.prepare()
        bench.worker(concurrency=2)
        bench.wait_workers(core4.connection, 1)
        samples: dict[str, tuple[list[float], list[float]]] = {}
        for label, task in (("plain", plain_trivial), ("core4", core4_trivial)):
            measure(task, 5, 0)  # warm up
            before = counted(commands)
            samples[label] = measure(task, opts.jobs, 1_000_000)
            costs[label] = per_job(before, counted(commands), opts.jobs, detail=True)
        wait_drained(core4)
        server = bench.server_label
    report: dict[str, Any] = {"server": server, "jobs": opts.jobs}
    print(f"{opts.jobs} jobs one at a time, 1 worker x 2, {server}; milliseconds")
    print(f"{'':8} {'start p50':>9} {'p95':>7} {'p99':>7} {'finish p50':>11} {'p95':>7} {'p99':>7}")
    for label, (starts, finishes) in samples.items():
        row = {f"start_p{int(q * 100)}": pct(starts, q) for q in QUANTILES}
        row |= {f"finish_p{int(q * 100)}": pct(finishes, q) for q in QUANTILES}
        report[label] = row
        print(f"{label:8} {row['start_p50']:9.1f} {row['start_p95']:7.1f} {row['start_p99']:7.1f} "
              f"{row['finish_p50']:11.1f} {row['finish_p95']:7.1f} {row['finish_p99']:7.1f}")
    print("MongoDB commands per job (all processes; 'celery': broker, result backend and the caller's result polls)")
    for label, paths in costs.items():
        shown = "  ".join(f"{path} {n:.2f}" for path, n in paths.items() if path != "total")
        print(f"{label:8} {paths['total']:6.1f}  {shown}")
    report["commands_per_job"] = costs
    save("latency", report)

    def draw(ax: Any) -> None:
        for label, (starts, finishes) in samples.items():
            for values, style in ((starts, "-"), (finishes, "--")):
                ordered = sorted(values)
                ax.plot(ordered, [i / len(ordered) for i in range(len(ordered))], style,
                        label=f"{label} {'start' if style == '-' else 'finish'}")
        ax.set_xlabel("ms after enqueue")
        ax.set_ylabel("share of jobs")
        ax.legend()

    plot("latency", draw, "Enqueue-to-start / -finish, one job at a time")
    return 0


if __name__ == "__main__":
    run(main)
