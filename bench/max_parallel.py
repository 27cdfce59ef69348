"""max_parallel under load: many short jobs of a class limited to 3, on 2 workers x 4.

    python -m bench.max_parallel [--jobs 1000] [--seconds 0.1] [--workers 2] [--concurrency 4]

Each job records its start and finish; the highest overlap ever observed must
equal the limit (3) — more is a correctness failure (exit 1), less means the
limit was never reached. The elapsed time is compared with the ideal
``jobs * seconds / 3``, and with plain Celery running the same jobs on one worker
with three processes (late acks and Celery's default early acks, prefetch 1) on the
same server in the same run.
Writes bench/results/max_parallel.json and .png.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from bench.common import (
    Bench,
    BenchFailed,
    count_commands,
    counted,
    per_job,
    plot,
    run,
    save,
    wait_drained,
    wait_per_job,
    wait_until,
)
from core4celery.devserver import database_url

LIMIT = 3  # bench.limited's max_parallel


def overlap(spans: list[tuple[float, float]]) -> tuple[int, list[tuple[float, int]]]:
    """Highest number of spans open at once, and the step curve of open spans over time."""
    events = sorted([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans], key=lambda e: (e[0], e[1]))
    level, peak, curve = 0, 0, []
    for at, step in events:
        level += step
        peak = max(peak, level)
        curve.append((at, level))
    return peak, curve


def core4_run(bench: Bench, opts: argparse.Namespace) -> tuple[float, list[dict[str, Any]]]:
    from bench.apps import core4, limited, trace

    core4.prepare()
    for _ in range(opts.workers):
        bench.worker(concurrency=opts.concurrency)
    bench.wait_workers(core4.connection, opts.workers)
    began = time.monotonic()
    for i in range(opts.jobs):
        limited.delay(i, opts.seconds)
    elapsed = wait_traced(trace(), opts, began)
    wait_drained(core4)
    return elapsed, list(trace().find({}, {"start": 1, "finish": 1, "worker": 1}))


def plain_run(bench: Bench, opts: argparse.Namespace, late: bool) -> tuple[float, list[dict[str, Any]]]:
    """The same jobs as plain Celery tasks on one worker with LIMIT processes: plain Celery has no
    cluster-wide limit, so this is the nearest it comes. ``late``: late acks (with prefetch 1 a message
    is taken only when a process is free, as a core4celery ticket is issued only for a free slot);
    else Celery's default early acks."""
    os.environ["CORE4CELERY_BENCH_PLAIN_URL"] = database_url(bench.url, "bench_max_parallel_plain")
    from bench.plain_app import plain_limited, plain_limited_early, trace

    task = plain_limited if late else plain_limited_early
    worker = bench.worker(concurrency=LIMIT, app="bench.plain_app")
    try:
        task.delay(-1, 0).get(timeout=90)  # until the worker answers
        trace().delete_many({})
        began = time.monotonic()
        for i in range(opts.jobs):
            task.delay(i, opts.seconds)
        elapsed = wait_traced(trace(), opts, began)
        return elapsed, list(trace().find({}, {"start": 1, "finish": 1}))
    finally:
        bench.stop_worker(worker)


def wait_traced(collection: Any, opts: argparse.Namespace, began: float) -> float:
    wait_until(lambda: collection.count_documents({}) >= opts.jobs, opts.jobs * opts.seconds * 10 + 60,
               "every job to finish", interval=0.1)
    return time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--no-plain", action="store_true", help="skip the plain Celery run")
    opts = parser.parse_args()
    commands = count_commands()
    with Bench("max_parallel") as bench:
        before = counted(commands)
        elapsed, docs = core4_run(bench, opts)
        after = counted(commands)
        bench.stop_workers()
        plains = {} if opts.no_plain else {late: plain_run(bench, opts, late) for late in (True, False)}
        server = bench.server_label
    if len(docs) != opts.jobs or len({d["_id"] for d in docs}) != opts.jobs:
        raise BenchFailed(f"{len(docs)} runs recorded for {opts.jobs} jobs")
    peak, curve = overlap([(d["start"], d["finish"]) for d in docs])
    workers = sorted({d["worker"] for d in docs})
    ideal = opts.jobs * opts.seconds / LIMIT
    report: dict[str, Any] = {
        "server": server, "jobs": opts.jobs, "seconds": opts.seconds, "limit": LIMIT, "peak": peak,
        "elapsed": elapsed, "ideal": ideal, "efficiency": ideal / elapsed,
        "workers": f"{opts.workers} x concurrency {opts.concurrency}", "workers_used": workers,
        "commands_per_job": per_job(before, after, opts.jobs),
        "reply_wait_ms_per_job": wait_per_job(before, after, opts.jobs),
        "commands_per_job_by_name": per_job(before, after, opts.jobs, detail=True),
        "reply_wait_ms_per_job_by_name": wait_per_job(before, after, opts.jobs, detail=True)}
    print(f"{opts.jobs} jobs x {opts.seconds:g} s, max_parallel={LIMIT}, {report['workers']}, {server}")
    print(f"highest observed concurrency: {peak} (limit {LIMIT}); workers used: {len(workers)}")
    print(f"core4celery: elapsed {elapsed:.1f} s, ideal {ideal:.1f} s, efficiency {ideal / elapsed:.0%}")
    plain_curve: list[tuple[float, int]] = []
    for late, (plain_elapsed, plain_docs) in plains.items():
        plain_peak, steps = overlap([(d["start"], d["finish"]) for d in plain_docs])
        key, acks = ("plain", "late acks") if late else ("plain_early_acks", "early acks")
        report[key] = {"workers": f"1 x concurrency {LIMIT}, {acks}, prefetch 1", "elapsed": plain_elapsed,
                       "efficiency": ideal / plain_elapsed, "peak": plain_peak}
        print(f"plain Celery ({report[key]['workers']}): elapsed {plain_elapsed:.1f} s, "
              f"efficiency {ideal / plain_elapsed:.0%}")
        if late:
            plain_curve = steps
            report["ratio"] = plain_elapsed / elapsed
            print(f"core4celery / plain Celery (late acks): {report['ratio']:.2f}")
    print(f"commands per job: {report['commands_per_job']}")
    print(f"reply wait ms per job: {report['reply_wait_ms_per_job']}")
    for key, n in report["commands_per_job_by_name"].items():
        print(f"  {key:40} {n:6.2f} commands {report['reply_wait_ms_per_job_by_name'].get(key, 0):8.2f} ms")
    save("max_parallel", report)

    def draw(ax: Any) -> None:
        for label, steps in (("core4celery", curve), ("plain Celery, 1 x 3, late acks", plain_curve)):
            if steps:
                t0 = steps[0][0]
                ax.step([at - t0 for at, _ in steps], [level for _, level in steps], where="post", lw=0.6,
                        label=label)
        ax.axhline(LIMIT, color="r", ls="--", label=f"max_parallel={LIMIT}")
        ax.set_xlabel("seconds")
        ax.set_ylabel("jobs running")
        ax.legend()

    plot("max_parallel", draw, f"{opts.jobs} jobs, {report['workers']}: peak {peak}")
    if peak > LIMIT:
        raise BenchFailed(f"max_parallel exceeded: {peak} jobs ran at once, limit {LIMIT}")
    if peak < LIMIT:
        raise BenchFailed(f"the limit was never reached (peak {peak}); the run proves nothing")
    return 0


if __name__ == "__main__":
    run(main)
