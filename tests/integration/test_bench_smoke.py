"""Each benchmark script runs end to end with tiny sizes and passes its own checks.

The figures are meaningless at these sizes; what is tested is that the scripts
start their server and workers, run their correctness checks and write JSON
and PNG results (into a temporary folder, not bench/results).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workers import REPO

SMALL = {
    "throughput": ["--jobs", "20", "--repeat", "1"],
    "latency": ["--jobs", "5"],
    "max_parallel": ["--jobs", "12", "--seconds", "0.3", "--workers", "1", "--concurrency", "4"],
    "backlog": ["--sizes", "50,200", "--window", "1"],
    "scaling": ["--end", "20000", "--chunks", "4", "--prime-workers", "1", "--sleep-chunks", "4",
                "--sleep-seconds", "0.2", "--sleep-workers", "1,2"],
    "recovery": ["--repeat", "1", "--run-lease", "2", "--heartbeat", "0.5"],
    "idle": ["--window", "1", "--settle", "1"],
}


@pytest.mark.parametrize("script", sorted(SMALL))
def test_benchmark_runs(script: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CORE4CELERY_MONGODB_URL"}  # each starts its own server
    env |= {"CORE4CELERY_BENCH_RESULTS": str(tmp_path), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", f"bench.{script}", *SMALL[script]], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / f"{script}.json").read_text())
    assert report["server"]
    if script != "recovery":
        assert (tmp_path / f"{script}.png").stat().st_size > 1000
    if script == "max_parallel":  # plain Celery ran the same jobs beside it, within its three processes
        assert {report["plain"]["peak"], report["plain_early_acks"]["peak"]} <= {1, 2, 3}
        assert report["ratio"] > 0
