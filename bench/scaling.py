"""Linear scaling: the PrimeJob on 1 and 2 workers, and an orchestration-only fan-out on 1..8.

    python -m bench.scaling [--end 5000000] [--chunks 50] [--prime-workers 1,2]
                            [--sleep-chunks 64] [--sleep-seconds 1] [--sleep-workers 1,2,4,8]

Each worker is a separate ``celery worker`` process with concurrency 1, as
core4's published benchmark used one job per worker (197/104/47/26 s on
1/2/4/8 workers for primes below 5,000,000 in 50 chunks). The sleep variant
shows whether dispatch itself becomes the bottleneck when CPU does not.
Exits 1 on a wrong prime count or a job that does not complete.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from bench.common import Bench, BenchFailed, forget_workers, plot, run, save, wait_until

CORE4_PUBLISHED = {1: 197.0, 2: 104.0, 4: 47.0, 8: 26.0}


def count_primes(limit: int) -> int:
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(limit) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(sieve[i * i :: i]))
    return sum(sieve)


def timed_mother(bench: Bench, core4: Any, workers: int, name: str, timeout: float, **args: Any) -> tuple[float, Any]:
    bench.stop_workers()
    forget_workers(core4)
    app = (name.rsplit(".", 1)[0] == "prime" and "examples.prime.prime") or "bench.apps"
    for i in range(workers):
        bench.worker(concurrency=1, name=f"n{i}", app=app)
    bench.wait_workers(core4.connection, workers)
    began = time.monotonic()
    job_id = core4.enqueue(name, **args)
    doc = wait_until(lambda: (d := core4.get(job_id))["state"] in ("complete", "error", "inactive", "killed") and d,
                     timeout, f"{name} on {workers} worker(s)", interval=0.05)
    elapsed = time.monotonic() - began
    if doc["state"] != "complete":
        raise BenchFailed(f"{name} ended {doc['state']}: {doc.get('last_error')}")
    return elapsed, doc["result"]


def series(times: dict[int, float]) -> dict[str, dict[int, float]]:
    base = times[min(times)] * min(times)
    return {"seconds": times, "speedup": {n: base / t for n, t in times.items()},
            "efficiency": {n: base / t / n for n, t in times.items()}}


def show(title: str, result: dict[str, dict[int, float]], reference: dict[int, float] | None = None) -> None:
    print(title)
    print(f"{'workers':>7} {'seconds':>8} {'speed-up':>8} {'efficiency':>10}" + ("   core4 published" if reference else ""))
    for n, seconds in result["seconds"].items():
        ref = f"   {reference[n]:.0f} s (x{reference[1] / reference[n]:.2f})" if reference and n in reference else ""
        print(f"{n:7d} {seconds:8.1f} {result['speedup'][n]:8.2f} {result['efficiency'][n]:10.0%}{ref}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--end", type=int, default=5_000_000)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--prime-workers", default="1,2")
    parser.add_argument("--sleep-chunks", type=int, default=64)
    parser.add_argument("--sleep-seconds", type=float, default=1.0)
    parser.add_argument("--sleep-workers", default="1,2,4,8")
    opts = parser.parse_args()
    expected = count_primes(opts.end)
    prime_times: dict[int, float] = {}
    sleep_times: dict[int, float] = {}
    with Bench("scaling") as bench:
        from bench.apps import core4
        from examples.prime.prime import core4 as prime_core4

        prime_core4.prepare()
        size = math.ceil(opts.end / opts.chunks)
        for workers in (int(w) for w in opts.prime_workers.split(",")):
            prime_core4.connection.db["prime_chunks"].drop()
            elapsed, found = timed_mother(bench, prime_core4, workers, "prime.PrimeJob", 3600,
                                          start=1, end=opts.end, size=size, run=workers)
            if found != expected:
                raise BenchFailed(f"{found} primes below {opts.end} on {workers} worker(s); expected {expected}")
            prime_times[workers] = elapsed
            print(f"PrimeJob on {workers} worker(s): {elapsed:.1f} s, {found:,} primes")
        server = bench.server_label
        for workers in (int(w) for w in opts.sleep_workers.split(",")):
            elapsed, _ = timed_mother(bench, core4, workers, "bench.fanout", 3600, chunks=opts.sleep_chunks,
                                      seconds=opts.sleep_seconds, run=f"w{workers}")
            sleep_times[workers] = elapsed
            print(f"fan-out on {workers} worker(s): {elapsed:.1f} s")
    prime, sleep = series(prime_times), series(sleep_times)
    ideal = opts.sleep_chunks * opts.sleep_seconds
    print(f"\n{server}; each worker: 1 process, concurrency 1")
    show(f"PrimeJob [1, {opts.end:,}) in {opts.chunks} chunks ({expected:,} primes)", prime, CORE4_PUBLISHED)
    show(f"fan-out: {opts.sleep_chunks} x {opts.sleep_seconds:g} s sleep (ideal {ideal:g} s / workers)", sleep)
    save("scaling", {"server": server, "prime": prime, "sleep": sleep, "core4_published": CORE4_PUBLISHED,
                     "end": opts.end, "chunks": opts.chunks, "sleep_chunks": opts.sleep_chunks,
                     "sleep_seconds": opts.sleep_seconds})

    def draw(ax: Any) -> None:
        for label, result in (("PrimeJob", prime), ("fan-out (sleep)", sleep)):
            ns = sorted(result["speedup"])
            ax.plot(ns, [result["speedup"][n] for n in ns], "o-", label=f"core4celery {label}")
        ref = sorted(CORE4_PUBLISHED)
        ax.plot(ref, [CORE4_PUBLISHED[1] / CORE4_PUBLISHED[n] for n in ref], "s--", label="core4 PrimeJob (published)")
        top = max(ref + sorted(sleep["speedup"]))
        ax.plot([1, top], [1, top], ":", color="grey", label="linear")
        ax.set_xlabel("workers")
        ax.set_ylabel("speed-up")
        ax.legend()

    plot("scaling", draw, "Speed-up over 1 worker")
    return 0


if __name__ == "__main__":
    run(main)
