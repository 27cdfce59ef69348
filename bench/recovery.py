"""Time from ``kill -9`` of a worker to its running job running again on another worker.

    python -m bench.recovery [--repeat 3] [--run-lease 15] [--heartbeat 1]

Two workers with concurrency 1; a job starts on one of them, that worker's
whole process group is SIGKILLed, and the time until the registry shows the
job's next trial started elsewhere is measured. Expected: about
``run_lease`` (the dead worker's lease must expire first) plus up to one
``heartbeat_interval`` of the surviving worker's housekeeping.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
from typing import Any

from bench.common import Bench, BenchFailed, run, save, wait_until
from core4celery.clock import now


def one_round(bench: Bench, core4: Any, index: int) -> float:
    job_id = core4.enqueue("bench.sleep", seconds=2.0, tag=f"round-{index}")
    running = wait_until(lambda: (d := core4.store.live(job_id)) and d["state"] == "running" and d, 60,
                         "the job to start")
    victim_pid = int(running["locked"]["worker"].rsplit(":", 1)[1])
    victim = next(p for p in bench.workers if p.pid == victim_pid)
    killed_at = now()
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(10)
    again = wait_until(lambda: (d := core4.get(job_id)) and d.get("trial", 0) >= 2 and d["started_at"] and d,
                       120, "the job to run again")
    if again["locked"] and again["locked"]["worker"] == running["locked"]["worker"]:
        raise BenchFailed("the job ran again on the killed worker")
    done = wait_until(lambda: (d := core4.get(job_id))["state"] == "complete" and d, 60, "the job to complete")
    if done["trial"] != 2:
        raise BenchFailed(f"expected 2 trials, got {done['trial']}")
    bench.workers.remove(victim)
    bench.worker(concurrency=1, name=f"spare{index}")  # keep two workers for the next round
    return float((again["started_at"] - killed_at).total_seconds())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--run-lease", type=float, default=15.0)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    opts = parser.parse_args()
    conf = {"core4celery_run_lease": opts.run_lease, "core4celery_heartbeat_interval": opts.heartbeat}
    with Bench("recovery", conf) as bench:
        from bench.apps import core4

        core4.prepare()
        bench.worker(concurrency=1, name="a")
        bench.worker(concurrency=1, name="b")
        bench.wait_workers(core4.connection, 2)
        times = []
        for index in range(opts.repeat):
            times.append(one_round(bench, core4, index))
            bench.wait_workers(core4.connection, 2)
            print(f"round {index + 1}: kill -9 -> running again elsewhere in {times[-1]:.2f} s")
        report = {"server": bench.server_label, "run_lease": opts.run_lease, "heartbeat_interval": opts.heartbeat,
                  "seconds": times, "median": statistics.median(times)}
        print(f"median {report['median']:.2f} s (run_lease {opts.run_lease:g} s, heartbeat {opts.heartbeat:g} s)")
        save("recovery", report)
    return 0


if __name__ == "__main__":
    run(main)
