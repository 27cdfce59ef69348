"""Throughput of trivial jobs: core4celery next to plain Celery, same server, same worker.

    python -m bench.throughput [--jobs 2000] [--repeat 3] [--concurrency 2]

One worker (default concurrency 2) serves both; plain Celery uses the MongoDB
broker and the MongoDB result backend. A run is first enqueue to last result.
Prints the medians and the ratio core4celery / plain Celery; writes
bench/results/throughput.json and .png. Exits 1 if a job is lost or wrong.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from bench.common import Bench, BenchFailed, count_commands, counted, per_job, plot, run, save, wait_drained, wait_per_job
from core4celery.devserver import database_url


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


LABELS = ("stock", "plain", "core4")


def stock_run(bench: Bench, n: int, offset: int, concurrency: int) -> float:
    """Plain Celery on kombu's own transport: its own worker, started for this run only."""
    from bench.plain_app import plain_only

    worker = bench.worker(concurrency=concurrency, app="bench.plain_app")
    try:
        one_run(plain_only, 20, offset + 900_000)  # until the worker answers, and warm
        return one_run(plain_only, n, offset)
    finally:
        bench.stop_worker(worker)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    opts = parser.parse_args()
    commands = count_commands()
    with Bench("throughput") as bench:
        os.environ["CORE4CELERY_BENCH_PLAIN_URL"] = database_url(bench.url, "bench_throughput_plain")
        from bench.apps import core4, core4_trivial, plain_trivial

        core4.prepare()
        bench.worker(concurrency=opts.concurrency)
        bench.wait_workers(core4.connection, 1)
        rates: dict[str, list[float]] = {label: [] for label in LABELS}
        counts: dict[str, list[dict[str, float]]] = {label: [] for label in LABELS}
        details: dict[str, list[dict[str, float]]] = {label: [] for label in LABELS}
        waits: dict[str, list[dict[str, float]]] = {label: [] for label in LABELS}
        one_run(plain_trivial, 20, 0)  # warm up connections and imports on both sides
        one_run(core4_trivial, 20, 0)
        for r in range(opts.repeat):  # interleaved, so drift on a noisy machine hits both alike
            for label, task in (("stock", None), ("plain", plain_trivial), ("core4", core4_trivial)):
                before = counted(commands)
                offset = (r + 1) * 1_000_000
                rates[label].append(stock_run(bench, opts.jobs, offset, opts.concurrency) if task is None
                                    else one_run(task, opts.jobs, offset))
                after = counted(commands)
                counts[label].append(per_job(before, after, opts.jobs))
                details[label].append(per_job(before, after, opts.jobs, detail=True))
                waits[label].append(wait_per_job(before, after, opts.jobs))
        wait_drained(core4)
        report = {
            "server": bench.server_label, "jobs": opts.jobs, "repeat": opts.repeat,
            "worker": f"1 x concurrency {opts.concurrency}", "runs": rates,
            **{f"{label}_jobs_per_s": statistics.median(rates[label]) for label in LABELS},
            "commands_per_job": {label: median_paths(runs) for label, runs in counts.items()},
            "commands_per_job_by_name": {label: median_paths(runs) for label, runs in details.items()},
            "reply_wait_ms_per_job": {label: median_paths(runs) for label, runs in waits.items()},
        }
        report["ratio"] = report["core4_jobs_per_s"] / report["stock_jobs_per_s"]
        report["ratio_same_transport"] = report["core4_jobs_per_s"] / report["plain_jobs_per_s"]
    print(f"{opts.jobs} trivial jobs x {opts.repeat}, 1 worker x {opts.concurrency}, {report['server']}")
    print("stock: plain Celery on kombu's MongoDB transport (ttl, 0.05 s polling), its own worker and database;")
    print("plain: plain Celery tasks in the core4celery app (core4celery's transport); core4: core4celery jobs")
    print(f"{'':12} {'median jobs/s':>14}  runs")
    for label in LABELS:
        runs = " ".join(f"{v:.1f}" for v in rates[label])
        print(f"{label:12} {report[f'{label}_jobs_per_s']:14.1f}  {runs}")
    print(f"core4celery / plain Celery (stock transport): {report['ratio']:.2f}; "
          f"/ plain Celery on core4celery's transport: {report['ratio_same_transport']:.2f}")
    print("MongoDB commands per job (all processes; median of runs; stock includes its worker's start and warm-up)")
    for label in LABELS:
        paths = report["commands_per_job"][label]
        shown = "  ".join(f"{path} {n:.1f}" for path, n in paths.items() if path != "total")
        print(f"{label:12} {paths['total']:6.1f}  {shown}")
    print("ms per job waiting for server replies (all processes and threads summed)")
    for label in LABELS:
        waited = report["reply_wait_ms_per_job"][label]
        print(f"{label:12} " + "  ".join(f"{path} {ms:.1f}" for path, ms in waited.items()))
    save("throughput", report)

    def draw(ax: Any) -> None:
        labels = ["plain Celery (kombu transport)", "plain Celery (core4celery transport)", "core4celery"]
        ax.bar(labels, [report[f"{label}_jobs_per_s"] for label in LABELS], color=["#bbb", "#888", "#2a7"])
        for i, label in enumerate(LABELS):
            ax.scatter([i] * len(rates[label]), rates[label], color="k", s=12, zorder=3)
        ax.set_ylabel("jobs / s (median, dots: runs)")

    plot("throughput", draw, f"Trivial jobs, 1 worker x {opts.concurrency} (ratio {report['ratio']:.2f})")
    return 0


if __name__ == "__main__":
    run(main)
