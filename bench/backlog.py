"""Registry cost with a small and a large backlog of pending jobs.

    python -m bench.backlog [--sizes 1000,100000] [--window 60]

For each size: fill the registry with that many pending jobs, time each
per-job registry operation (and the dispatcher's candidate scan, which runs
once per dispatch pass, not per job), then let one worker (concurrency 2)
drain the backlog for ``--window`` seconds (or a fifth of it, if sooner) and
report jobs/s; the window spans one read of the jobs outside the front (once
per 20,000 drained) as a long drain would. Every query is
index-backed (the script prints each plan's stages and fails on a COLLSCAN);
SecantusDB materialises every document an indexed find matches, even with
a limit, so the scan grows with the backlog there while it stays flat on
mongod. Writes bench/results/backlog.json and .png.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from bson import ObjectId

from bench.common import Bench, BenchFailed, forget_workers, plot, run, save, wait_until
from core4celery.clock import EPOCH, now
from core4celery.dispatch.front import FRONT_SIZE, OUTSIDE_READ
from core4celery.store.connection import DISPATCH_ORDER, DUE_INDEX, FRONT_INDEX
from core4celery.store.document import new_job
from core4celery.store.slots import Holder
from core4celery.store.states import REQUEUE

TASK = "bench.core4_trivial"
PLAN_MIN = 1000


def fill(core4: Any, size: int) -> float:
    """Bulk-insert pending jobs shaped exactly like enqueue() writes them.

    The first ``FRONT_SIZE`` in the dispatchers' front and the rest outside
    it, spilled at their rank: what enqueueing them one by one leaves (the
    front's keeper trims it each second while they arrive).
    """
    core4.connection.jobs.delete_many({})
    core4.connection.journal.delete_many({})
    options = core4.task(TASK).core4_options
    began = time.perf_counter()
    batch = []
    for i in range(size):
        doc = new_job(TASK, {"i": i}, options, query_at=now())
        if i < FRONT_SIZE:
            doc["front_at"] = doc["query_at"]  # type: ignore[typeddict-unknown-key]
        batch.append(doc)
        if len(batch) == 2000:
            core4.connection.jobs.insert_many(batch, ordered=False)
            batch = []
    if batch:
        core4.connection.jobs.insert_many(batch, ordered=False)
    core4.store.spill((bool(options.force), int(options.priority)) if size > FRONT_SIZE else None)
    return time.perf_counter() - began


def timed(fn: Callable[[int], Any], repeat: int) -> float:
    began = time.perf_counter()
    for i in range(repeat):
        fn(i)
    return (time.perf_counter() - began) / repeat * 1000


def operations(core4: Any, size: int) -> dict[str, Callable[[int], Any]]:
    reg = core4.connection
    sample = [d["_id"] for d in reg.jobs.find({}, {"_id": 1}).limit(200)]
    holder = Holder(job_id=sample[0], name=TASK, queue="celery", limit=100)
    core4.store.reconcile({"celery": 10**6})  # room for the take+give measurement
    return {
        "enqueue (insert + dispatch call)": lambda i: core4.enqueue(TASK, i=size + 10_000_000 + i),
        "find_one by id": lambda i: core4.store.live(sample[i % len(sample)]),
        # the store's primitives, measured directly (private on purpose: not an API)
        "guarded transition": lambda i: core4.store._apply(REQUEUE, sample[i % len(sample)],
                                                           {"$set": {"query_at": EPOCH}}),
        "slots take + give": lambda i: (core4.store._slots.take(holder), core4.store._slots.give(holder)),
        "slots read": lambda i: core4.store.slots(),
        # each second in every worker: the slot holders, looked up by id
        "housekeeping round (by holder ids)": lambda i: housekeeping(core4, core4.store.slots().active()),
        # every >= 30 s (and >= 50x its own duration) per worker: every job
        "full housekeeping round": lambda i: housekeeping(core4, None),
        "candidate scan of the front (per pass)": lambda i: core4.store.due(now(), 200),
        # once per OUTSIDE_READ jobs drained (or when a job outranks the keeper's list)
        f"keeper's read of {OUTSIDE_READ:,} jobs outside the front": lambda i: core4.store.outside_front(OUTSIDE_READ),
    }


def housekeeping(core4: Any, among: list[ObjectId] | None) -> None:
    stamp = now()
    core4.store.requeue_lost(stamp, among)
    core4.store.expired_runs(stamp, among)
    core4.store.sweep_removed(among)


REPEATS = {"candidate scan of the front (per pass)": 20, "enqueue (insert + dispatch call)": 100,
           f"keeper's read of {OUTSIDE_READ:,} jobs outside the front": 2,
           "full housekeeping round": 3}


def plans(core4: Any) -> dict[str, str]:
    """The winning plan of each query shape; a COLLSCAN is a failure."""
    shapes: dict[str, tuple[dict[str, Any], dict[str, int] | None, str | None]] = {  # (filter, sort, hint)
        "candidate scan": ({"front_at": {"$lte": now()}}, dict(DISPATCH_ORDER), FRONT_INDEX),  # as the dispatcher
        "outside the front": ({"query_at": {"$gt": EPOCH}, "front_at": None}, None, DUE_INDEX),  # as the keeper
        "running": ({"state": "running"}, None, None),
        "dispatched": ({"dispatched_until": {"$gt": EPOCH}}, None, None),
        "removed": ({"removed_at": {"$gt": EPOCH}}, None, None),
        "children": ({"mid": "x"}, None, None),
        "by id": ({"_id": ObjectId()}, None, None),
    }
    found = {}
    for label, (query, sort, hint) in shapes.items():
        cmd: dict[str, Any] = {"find": core4.connection.jobs.name, "filter": query, "limit": 200}
        if sort:
            cmd["sort"] = sort
        if hint:
            cmd["hint"] = hint
        plan = core4.connection.db.command("explain", cmd)["queryPlanner"]["winningPlan"]
        stages = []
        while plan:
            stages.append(plan["stage"])
            plan = plan.get("inputStage")
        found[label] = " < ".join(stages)
        if "COLLSCAN" in stages:
            raise BenchFailed(f"{label} is not index-backed: {found[label]}")
    return found


def drain_rate(bench: Bench, core4: Any, window: float, size: int) -> float:
    """Jobs/s over ``window`` seconds, or until a fifth of the backlog is drained if that comes first
    (the rate is the one *with* that backlog waiting, not of its tail)."""
    bench.worker(concurrency=2)
    bench.wait_workers(core4.connection, 1)
    wait_until(lambda: core4.connection.journal.count_documents({}) > 0, 120, "the first job to complete")
    journal = core4.connection.journal
    first, began = journal.count_documents({}), time.monotonic()
    while time.monotonic() - began < window and journal.count_documents({}) - first < size // 5:
        time.sleep(0.5)
    done = journal.count_documents({}) - first
    rate = done / (time.monotonic() - began)
    bench.stop_workers()
    forget_workers(core4)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--window", type=float, default=60.0)
    opts = parser.parse_args()
    sizes = [int(s) for s in opts.sizes.split(",")]
    results: dict[int, dict[str, float]] = {}
    with Bench("backlog") as bench:
        from bench.apps import core4

        core4.prepare()
        query_plans: dict[str, str] = {}
        for size in sizes:
            seconds = fill(core4, size)
            print(f"{size:,} pending jobs inserted in {seconds:.1f} s")
            if size >= PLAN_MIN:  # with few documents a planner rightly prefers a collection scan
                query_plans = plans(core4)
            row = {label: timed(fn, REPEATS.get(label, 200)) for label, fn in operations(core4, size).items()}
            row["drain jobs/s"] = drain_rate(bench, core4, opts.window, size)
            results[size] = row
        server = bench.server_label
    labels = list(results[sizes[0]])
    print(f"\n{server}; ms per operation (drain: jobs/s, 1 worker x 2)")
    print(f"{'operation':40} " + " ".join(f"{s:>12,}" for s in sizes) + "   growth")
    for label in labels:
        values = [results[s][label] for s in sizes]
        print(f"{label:40} " + " ".join(f"{v:12.2f}" for v in values) + f"   x{values[-1] / values[0]:.1f}")
    print("\nplans: " + "; ".join(f"{k}: {v}" for k, v in query_plans.items()))
    save("backlog", {"server": server, "sizes": sizes, "results": results, "plans": query_plans})

    def draw(ax: Any) -> None:
        width = 0.8 / len(sizes)
        for k, size in enumerate(sizes):
            ax.barh([i + k * width for i in range(len(labels))], [results[size][lb] for lb in labels], width,
                    label=f"{size:,} pending")
        ax.set_yticks([i + width / 2 for i in range(len(labels))], labels, fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("ms per operation (drain: jobs/s)")
        ax.legend()

    plot("backlog", draw, "Registry cost by backlog size")
    return 0


if __name__ == "__main__":
    run(main)
