"""Trivial-job throughput and latency: core4celery next to plain Celery, same server, same run.

    python -m bench.throughput_latency [--jobs 500] [--latency-jobs 50] [--repeat 3]

Starts its own SecantusDB (unless CORE4CELERY_MONGODB_URL is set) and one
worker with concurrency 2; plain Celery uses the MongoDB broker and the
MongoDB result backend with the same worker settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from core4celery.devserver import TestServer

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def start_worker(url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CORE4CELERY_MONGODB_URL": url, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "celery", "-A", "bench.apps", "worker", "-c", "2", "-l", "warning",
           "--without-gossip", "--without-mingle", "--without-heartbeat"]
    return subprocess.Popen(cmd, env=env, cwd=REPO)


def throughput(task: Any, n: int, offset: int) -> float:
    began = time.perf_counter()
    results = [task.delay(i + offset) for i in range(n)]
    for result in results:
        result.get(timeout=600, interval=0.01)
    return n / (time.perf_counter() - began)


def latency(task: Any, n: int, offset: int) -> tuple[list[float], list[float]]:
    starts, finishes = [], []
    for i in range(n):
        sent = time.time()
        started = task.delay(i + offset).get(timeout=60, interval=0.005)
        finishes.append(time.time() - sent)
        starts.append(started - sent)
    return starts, finishes


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--latency-jobs", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    server = TestServer()
    url = server.start_database("bench")
    os.environ["CORE4CELERY_MONGODB_URL"] = url
    from bench.apps import core4, core4_trivial, plain_trivial

    worker = start_worker(url)
    try:
        core4.registry.ensure_indexes()
        deadline = time.monotonic() + 60
        while not core4.registry.workers.find_one({}):
            if time.monotonic() > deadline:
                raise SystemExit("worker did not register")
            time.sleep(0.1)
        report: dict[str, Any] = {"server": "external MongoDB" if server.external else "SecantusDB 0.7.0b3",
                                  "jobs": opts.jobs}
        for label, task in (("plain", plain_trivial), ("core4", core4_trivial)):
            latency(task, 5, 10_000_000)  # warm up connections and code paths
            rates = [throughput(task, opts.jobs, (r + 1) * 1_000_000) for r in range(opts.repeat)]
            starts, finishes = latency(task, opts.latency_jobs, 20_000_000)
            report[label] = {
                "jobs_per_s": statistics.median(rates), "runs": rates,
                "start_p50_ms": pct(starts, 0.5), "start_p95_ms": pct(starts, 0.95),
                "finish_p50_ms": pct(finishes, 0.5), "finish_p95_ms": pct(finishes, 0.95),
            }
        plain, ours = report["plain"], report["core4"]
        report["ratio"] = ours["jobs_per_s"] / plain["jobs_per_s"]
        print(f"server: {report['server']}, {opts.jobs} trivial jobs x {opts.repeat}, 1 worker x 2")
        print(f"{'':8} {'jobs/s':>8} {'start p50':>10} {'start p95':>10} {'finish p50':>11} {'finish p95':>11}")
        for label in ("plain", "core4"):
            r = report[label]
            print(f"{label:8} {r['jobs_per_s']:8.1f} {r['start_p50_ms']:8.1f}ms {r['start_p95_ms']:8.1f}ms "
                  f"{r['finish_p50_ms']:9.1f}ms {r['finish_p95_ms']:9.1f}ms")
        print(f"core4celery / plain Celery throughput: {report['ratio']:.2f}")
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "throughput_latency.json").write_text(json.dumps(report, indent=2))
        deadline = time.monotonic() + 10  # the last journal move may still be under way
        while (lost := core4.registry.jobs.count_documents({})) and time.monotonic() < deadline:
            time.sleep(0.05)
        if lost:
            print(f"FAILED: {lost} core4 jobs still live")
            return 1
        return 0
    finally:
        worker.terminate()
        worker.wait(30)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
