"""Throughput of trivial jobs: core4celery next to plain Celery, same server, same worker.

    python -m bench.throughput [--jobs 2000] [--repeat 3] [--concurrency 2]

One worker (default concurrency 2) serves both; plain Celery uses the MongoDB
broker and the MongoDB result backend. A run is first enqueue to last result.
Prints the medians and the ratio core4celery / plain Celery; writes
bench/results/throughput.json and .png. Exits 1 if a job is lost or wrong.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.common import Bench, BenchFailed, count_commands, counted, per_job, plot, run, save, wait_drained, wait_per_job


def one_run(task: Any, n: int, offset: int) -> float:
    began = time.perf_counter()
    results = [task.delay(i + offset) for i in range(n)]
    for result in results:
        if not isinstance(result.get(timeout=600, interval=0.01), float):
            raise BenchFailed(f"job {result.id} returned no timestamp")
    return n / (time.perf_counter() - began)


def median_paths(runs: list[dict[str, float]]) -> dict[str, float]:
    paths = sorted({path for run in runs for path in run})
    return {path: statistics.median(run.get(path, 0.0) for run in runs) for path in paths}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    opts = parser.parse_args()
    commands = count_commands()
    with Bench("throughput") as bench:
        from bench.apps import core4, core4_trivial, plain_trivial

        core4.prepare()
        bench.worker(concurrency=opts.concurrency)
        bench.wait_workers(core4.connection, 1)
        rates: dict[str, list[float]] = {"plain": [], "core4": []}
        counts: dict[str, list[dict[str, float]]] = {"plain": [], "core4": []}
        details: dict[str, list[dict[str, float]]] = {"plain": [], "core4": []}
        waits: dict[str, list[dict[str, float]]] = {"plain": [], "core4": []}
        one_run(plain_trivial, 20, 0)  # warm up connections and imports on both sides
        one_run(core4_trivial, 20, 0)
        for r in range(opts.repeat):  # interleaved, so drift on a noisy machine hits both alike
            for label, task in (("plain", plain_trivial), ("core4", core4_trivial)):
                before = counted(commands)
                rates[label].append(one_run(task, opts.jobs, (r + 1) * 1_000_000))
                after = counted(commands)
                counts[label].append(per_job(before, after, opts.jobs))
                details[label].append(per_job(before, after, opts.jobs, detail=True))
                waits[label].append(wait_per_job(before, after, opts.jobs))
        wait_drained(core4)
        report = {
            "server": bench.server_label, "jobs": opts.jobs, "repeat": opts.repeat,
            "worker": f"1 x concurrency {opts.concurrency}", "runs": rates,
            "plain_jobs_per_s": statistics.median(rates["plain"]),
            "core4_jobs_per_s": statistics.median(rates["core4"]),
            "commands_per_job": {label: median_paths(runs) for label, runs in counts.items()},
            "commands_per_job_by_name": {label: median_paths(runs) for label, runs in details.items()},
            "reply_wait_ms_per_job": {label: median_paths(runs) for label, runs in waits.items()},
        }
        report["ratio"] = report["core4_jobs_per_s"] / report["plain_jobs_per_s"]
    print(f"{opts.jobs} trivial jobs x {opts.repeat}, 1 worker x {opts.concurrency}, {report['server']}")
    print(f"{'':12} {'median jobs/s':>14}  runs")
    for label in ("plain", "core4"):
        runs = " ".join(f"{v:.1f}" for v in rates[label])
        print(f"{label:12} {report[f'{label}_jobs_per_s']:14.1f}  {runs}")
    print(f"core4celery / plain Celery: {report['ratio']:.2f}")
    print("MongoDB commands per job (all processes; median of runs; plain: the core4 ticker runs beside it)")
    for label in ("plain", "core4"):
        paths = report["commands_per_job"][label]
        shown = "  ".join(f"{path} {n:.1f}" for path, n in paths.items() if path != "total")
        print(f"{label:12} {paths['total']:6.1f}  {shown}")
    print("ms per job waiting for server replies (all processes and threads summed)")
    for label in ("plain", "core4"):
        waited = report["reply_wait_ms_per_job"][label]
        print(f"{label:12} " + "  ".join(f"{path} {ms:.1f}" for path, ms in waited.items()))
    save("throughput", report)

    def draw(ax: Any) -> None:
        labels = ["plain Celery", "core4celery"]
        ax.bar(labels, [report["plain_jobs_per_s"], report["core4_jobs_per_s"]], color=["#888", "#2a7"])
        for i, label in enumerate(("plain", "core4")):
            ax.scatter([i] * len(rates[label]), rates[label], color="k", s=12, zorder=3)
        ax.set_ylabel("jobs / s (median, dots: runs)")

    plot("throughput", draw, f"Trivial jobs, 1 worker x {opts.concurrency} (ratio {report['ratio']:.2f})")
    return 0


if __name__ == "__main__":
    run(main)
