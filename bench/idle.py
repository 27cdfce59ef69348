"""Server load of idle workers: CPU of the MongoDB-wire server and commands per second.

Three phases on one server, each measured over the same window after the
workers have settled: no worker, two idle plain Celery workers, two idle
core4celery workers (default settings). The server's CPU time is read from
``/proc/<pid>/stat``, so this needs the embedded server (Linux).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from bench.common import Bench, BenchFailed, count_commands, counted, plot, run, save

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def measure(pid: int, window: float, commands: Any) -> tuple[float, float]:
    """Server CPU in % of one core and commands per second (all processes) over ``window``."""
    from core4celery.metrics import TIME_PREFIX

    before_counts, before_cpu, began = counted(commands), cpu_seconds(pid), time.monotonic()
    time.sleep(window)  # the measurement itself: a fixed window of idleness
    spent, elapsed = cpu_seconds(pid) - before_cpu, time.monotonic() - began
    sent = sum(n for key, n in (counted(commands) - before_counts).items() if not key.startswith(TIME_PREFIX))
    return 100 * spent / elapsed, sent / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=5.0)
    opts = parser.parse_args()
    commands = count_commands()
    report: dict[str, Any] = {"window_s": opts.window}
    with Bench("idle") as bench:
        if bench.server.proc is None:
            raise BenchFailed("needs the embedded server (its CPU time is read from /proc)")
        pid = bench.server.proc.pid
        report["server"] = bench.server_label
        from bench.apps import core4

        core4.prepare()
        time.sleep(opts.settle)
        report["none"] = measure(pid, opts.window, commands)
        for label, app in (("plain", "bench.plain_app"), ("core4", "bench.apps")):
            for i in range(2):
                bench.worker(concurrency=2, name=f"{label}{i}", app=app)
            if label == "core4":
                bench.wait_workers(core4.connection, 2)
            time.sleep(opts.settle)  # start-up done (connections, first reconcile)
            report[label] = measure(pid, opts.window, commands)
            bench.stop_workers()
            time.sleep(1)
    print(f"server CPU (% of one core) and commands/s over {opts.window:g} s, 2 idle workers x 2")
    print("plain: plain Celery on kombu's transport with the same broker options (ttl, 0.05 s polling)")
    for label in ("none", "plain", "core4"):
        cpu, rate = report[label]
        print(f"{label:8} {cpu:6.1f} %  {rate:7.1f} commands/s")
    save("idle", report)

    def draw(ax: Any) -> None:
        labels = ["no worker", "plain Celery", "core4celery"]
        ax.bar(labels, [report[k][0] for k in ("none", "plain", "core4")], color=["#ccc", "#888", "#2a7"])
        ax.set_ylabel("server CPU, % of one core")

    plot("idle", draw, "Idle load: 2 workers x 2, default settings")
    return 0


if __name__ == "__main__":
    run(main)
