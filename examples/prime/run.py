"""Run the PrimeJob end to end: server (if needed), workers, enqueue, progress, result.

    python -m examples.prime.run [--end 1000000] [--size 50000] [--workers 2] [--concurrency 1]

Without CORE4CELERY_MONGODB_URL it starts an embedded MongoDB-wire server
(SecantusDB, in memory) on a free port and stops it afterwards.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from core4celery.devserver import TestServer

REPO = Path(__file__).resolve().parents[2]
EXPECTED = {1_000_000: 78_498}


def start_workers(url: str, count: int, concurrency: int) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "CORE4CELERY_MONGODB_URL": url, "PYTHONPATH": str(REPO)}
    procs = []
    for i in range(count):
        cmd = [sys.executable, "-m", "celery", "-A", "examples.prime.prime", "worker", "-n", f"prime{i}@%h",
               "-c", str(concurrency), "-l", "warning", "--without-gossip", "--without-mingle", "-E"]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO))
    return procs


def bar(value: float | None, width: int = 30) -> str:
    filled = int((value or 0) * width)
    return "#" * filled + "-" * (width - filled)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", type=int, default=1)
    parser.add_argument("--end", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600)
    opts = parser.parse_args()

    server = TestServer()
    url = server.start_database("prime")
    os.environ["CORE4CELERY_MONGODB_URL"] = url
    from examples.prime.prime import core4  # reads the URL above

    print(f"MongoDB: {core4.settings.masked_url}{' (embedded SecantusDB)' if not server.external else ''}")
    workers = start_workers(url, opts.workers, opts.concurrency)
    try:
        began = time.monotonic()
        job_id = core4.enqueue("prime.PrimeJob", start=opts.start, end=opts.end, size=opts.size,
                               run=int(time.time()))
        print(f"enqueued PrimeJob {job_id}: primes in [{opts.start}, {opts.end}) in chunks of {opts.size}")
        doc = core4.get(job_id)
        while doc["state"] not in ("complete", "error", "inactive", "killed"):
            if time.monotonic() - began > opts.timeout:
                print(f"timed out after {opts.timeout}s in state {doc['state']}")
                return 1
            prog = doc.get("prog") or {}
            print(f"\r[{bar(prog.get('value'))}] {doc['state']:9} {prog.get('message') or ''}   ", end="", flush=True)
            time.sleep(0.5)
            doc = core4.get(job_id)
        elapsed = time.monotonic() - began
        print()
        if doc["state"] != "complete":
            print(f"PrimeJob ended {doc['state']}: {doc.get('last_error')}")
            return 1
        count = doc["result"]
        print(f"primes found: {count:,} in {elapsed:.1f} s with {opts.workers} worker(s) x {opts.concurrency}")
        expected = EXPECTED.get(opts.end) if opts.start <= 2 else None
        if expected is not None and count != expected:
            print(f"WRONG: expected {expected:,}")
            return 1
        return 0
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
