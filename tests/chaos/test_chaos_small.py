"""The chaos run, small: ~150 jobs (enough to outlast two worker kills), 3 worker kills, one pool-child
kill, the server down for 5 s.

The run itself goes in a subprocess (its own signal handling and cleanup; on a timeout it is
sent SIGTERM, which still cleans up every process it started). The checker's interval logic is
tested directly below, without processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.chaos import ARTIFACTS, GATED_MAX, REPO, Chaos, Kill, Options, max_overlap, overlapping_runs

SMALL = ("--jobs", "150", "--seed", "7", "--workers", "3", "--kill-every", "2", "4", "--max-worker-kills", "3",
         "--server-down", "5", "--stall-timeout", "30", "--drain-timeout", "150", "--settle", "2")
RUN_TIMEOUT = 280.0


def run_chaos(args: tuple[str, ...], result_path: Path) -> tuple[int, dict[str, Any], str]:
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "tests.chaos.chaos", *args, "--result", str(result_path)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script cleans up its workers and server, then exits
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        pytest.fail(f"chaos run did not end within {RUN_TIMEOUT} s:\n{output.decode(errors='replace')[-5000:]}")
    text = output.decode(errors="replace")
    assert result_path.exists(), f"no result written (exit {proc.returncode}):\n{text[-5000:]}"
    return proc.returncode, json.loads(result_path.read_text()), text


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 120)
def test_chaos_small() -> None:
    started = time.monotonic()
    code, result, output = run_chaos(SMALL, ARTIFACTS / "result-small.json")
    print(output)
    assert "error" not in result, result.get("traceback")
    # the chaos did happen
    assert result["server_kills"] == 1, output
    assert result["worker_kills"] >= 2, output
    # and nothing it must not do
    assert result["lost"] == 0, result["lost_by_state"]
    assert result["complete_live"] == 0, result["complete_live_ids"]
    assert result["running_after"] == 0, result["running_after_ids"]
    assert result["max_gated_overlap"] <= GATED_MAX, result["max_gated_overlap_runs"]
    assert result["overlapping_runs"] == 0, result["overlapping_examples"]
    assert result["outcome"] == "drained"
    assert code == 0, output
    print(f"chaos small: {time.monotonic() - started:.0f} s wall")


# -- the checker, without processes -----------------------------------------------------------
def run(job: str, start: float, end: float, name: str = "chaos.gated") -> dict[str, Any]:
    return {"job": job, "name": name, "trial": 1, "pid": 1, "worker": "c1", "start": start, "end": end,
            "end_by": "finish"}


def test_max_overlap_counts_touching_runs_once() -> None:
    runs = [run("a", 0, 1), run("b", 1, 2), run("c", 0.5, 1.5), run("d", 0.6, 0.9)]
    best, at = max_overlap(runs)
    assert best == 3
    assert {r["job"] for r in at} == {"a", "c", "d"}
    assert max_overlap([])[0] == 0


def test_overlapping_runs_of_one_job() -> None:
    assert overlapping_runs([run("a", 0, 1), run("a", 1, 2), run("b", 0.5, 3)]) == []
    pairs = overlapping_runs([run("a", 0, 1), run("a", 0.9, 2), run("a", 3, 4)])
    assert len(pairs) == 1 and pairs[0]["second"]["start"] == 0.9


def test_run_ends_without_finish(tmp_path: Path) -> None:
    chaos = Chaos.__new__(Chaos)  # only the analysis, no server or workers
    chaos.kills = [Kill("pool-child", 15.0, [42], "c2"), Kill("worker", 30.0, [7, 8], "c3")]
    records = [
        {"job": "j1", "name": "chaos.quick", "trial": 1, "pid": 42, "worker": "c2@h", "start": 10.0},
        {"job": "j1", "name": "chaos.quick", "trial": 2, "pid": 43, "worker": "c3@h", "start": 20.0},
        {"job": "j1", "name": "chaos.quick", "trial": 3, "pid": 44, "worker": "c4@h", "start": 40.0},
        {"job": "j1", "name": "chaos.quick", "trial": 4, "pid": 45, "worker": "c4@h", "start": 50.0, "finish": 51.0},
        {"job": "j2", "name": "chaos.quick", "trial": 1, "pid": 42, "worker": "c2@h", "start": 16.0},
        {"job": "j3", "name": "chaos.quick", "trial": 1, "pid": 8, "worker": "c3@h", "start": 30.001},
    ]
    runs = {(r["job"], r["trial"]): r for r in chaos.run_intervals(records, {})}
    assert (runs["j1", 1]["end"], runs["j1", 1]["end_by"]) == (15.0, "pool-child kill")
    assert (runs["j1", 2]["end"], runs["j1", 2]["end_by"]) == (30.0, "worker kill")
    assert (runs["j1", 3]["end"], runs["j1", 3]["end_by"]) == (50.0, "next run")
    assert (runs["j1", 4]["end"], runs["j1", 4]["end_by"]) == (51.0, "finish")
    # same pid, started after that pid was killed: not ended by the kill
    assert runs["j2", 1]["end_by"] == "unknown"
    # started in the instant between the kill's time stamp and the signal: ended by that kill
    assert (runs["j3", 1]["end"], runs["j3", 1]["end_by"]) == (30.001, "worker kill")
    assert Options().effective_drain_timeout() >= 300
