"""Flower over the MongoDB broker, checked in a real headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from core4celery.devserver import free_port
from tests.conftest import ARTIFACTS
from tests.integration.conftest import Cluster
from tests.workers import REPO, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1600,1000",
                  "--virtual-time-budget=10000"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt install chromium)")


def chromium(url: str, *args: str) -> str:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_jobs_show_in_flower_with_their_states(cluster: Cluster) -> None:
    cluster.app.conf.worker_send_task_events = True  # this process's dispatches send events too
    cluster.worker("ev", concurrency=2, extra=("-E",))
    port = free_port()
    env = {**os.environ, "CORE4CELERY_MONGODB_URL": cluster.url, "PYTHONPATH": str(REPO)}
    log = open(ARTIFACTS / "flower.log", "wb")
    flower = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tests.apps.jobs", "flower",
                               "--address=127.0.0.1", f"--port={port}"], env=env, cwd=REPO,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: reachable(f"{base}/tasks"), 60, what="Flower to serve")
        core4 = cluster.core4
        mother = core4.enqueue("t.mother", chunks=3, size=5)
        failing = core4.enqueue("t.flaky", fail_times=5)
        deferred = core4.enqueue("t.defer_then", times=5, defer_time=120)
        retrying = core4.enqueue("t.flaky", fail_times=1, attempts=2, error_time=120)
        inactive = core4.enqueue("t.defer_forever")
        victim = core4.enqueue("t.stepper", steps=120, pause=0.5)
        cluster.wait_state(victim, "running")
        shown = wait_for(lambda: (page := chromium(f"{base}/task/{victim}", "--dump-dom")) and "PROGRESS" in page
                         and page, 60, interval=0.5, what="the running job's progress in Flower")
        assert "of 120" in shown  # the progress message travels in the result field
        core4.kill(victim)
        for job_id, state in ((mother, "complete"), (failing, "error"), (victim, "killed"), (deferred, "deferred"),
                              (retrying, "failed"), (inactive, "inactive")):
            cluster.wait_state(job_id, state, timeout=60)
        children = [str(d["_id"]) for d in core4.connection.journal.find({"mid": mother})]
        expected = {mother: "SUCCESS", failing: "FAILURE", victim: "KILLED", deferred: "RETRY", retrying: "RETRY",
                    inactive: "INACTIVE",                    **dict.fromkeys(children, "SUCCESS")}

        def listed() -> str | None:
            dom = chromium(f"{base}/tasks", "--dump-dom")
            rows = {job_id: state for job_id, state in expected.items() if job_id in dom}
            return dom if len(rows) == len(expected) else None

        dom = wait_for(listed, 60, interval=1, what="every job in Flower's task list")
        for job_id, state in expected.items():
            assert job_id in dom
            page = chromium(f"{base}/task/{job_id}", "--dump-dom")
            assert state in page, f"{job_id} is not {state} in Flower"
        assert "t.mother" in dom and "t.child" in dom
        failure = chromium(f"{base}/task/{failing}", "--dump-dom")
        assert "fail_times" in failure and "failure in trial 3" in failure  # kwargs and the error
        mother_page = chromium(f"{base}/task/{mother}", "--dump-dom")
        assert all(child in mother_page for child in children)  # tickets carry the mother as parent
        for job_id, text in ((deferred, "deferred: not yet, trial 1"), (retrying, "failure in trial 1")):
            page = chromium(f"{base}/task/{job_id}", "--dump-dom")
            assert "RETRY" in page and text in page, f"{job_id} should show RETRY with {text!r}"
        shot = Path(ARTIFACTS / "flower-tasks.png")
        chromium(f"{base}/tasks", f"--screenshot={shot}")
        assert shot.stat().st_size > 10_000
    finally:
        flower.terminate()
        flower.wait(20)
        log.close()
