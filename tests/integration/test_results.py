"""Results by id, as a Celery user reaches for them, in an app without a result backend of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from core4celery import Core4
from core4celery.errors import JobNotFound
from tests.apps.results import QuotaExceeded, build
from tests.conftest import ARTIFACTS
from tests.workers import REPO, WorkerProcess, wait_for

Results = tuple[Celery, Core4, WorkerProcess]


@pytest.fixture
def results(db_url: str) -> Iterator[Results]:
    app, core4 = build(db_url)
    worker = WorkerProcess(db_url, "results", concurrency=2, app="tests.apps.results",
                           log_dir=ARTIFACTS / "workers").start()
    wait_for(lambda: core4.connection.workers.find_one({"pid": worker.pid}), 60, what="the worker to register")
    yield app, core4, worker
    worker.kill9()
    worker.stop()
    core4.close()
    app.close()


def test_app_asyncresult_and_celery_result_read_the_registry(results: Results, db_url: str) -> None:
    app, _, _ = results
    sent = app.tasks["r.square"].delay(7)
    assert app.AsyncResult(sent.id).get(timeout=60) == 49
    env = {**os.environ, "CORE4CELERY_MONGODB_URL": db_url, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "tests.apps.results", "result", sent.id],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "49", out.stdout + out.stderr


def test_get_raises_the_tasks_own_exception_with_the_job_attached(results: Results) -> None:
    app, _, _ = results
    failing = app.tasks["r.value_error"].delay(3)
    with pytest.raises(ValueError) as caught:
        app.AsyncResult(failing.id).get(timeout=60)
    error: Any = caught.value
    assert error.args == ("bad value", 3)
    assert (error.job_id, error.job_state, error.trial) == (failing.id, "error", 1)
    with pytest.raises(QuotaExceeded, match="over quota"):
        app.tasks["r.quota"].delay().get(timeout=60)
    returned = app.AsyncResult(failing.id).get(timeout=60, propagate=False)
    assert isinstance(returned, ValueError) and app.AsyncResult(failing.id).state == "FAILURE"


@pytest.mark.parametrize("celery_style", [False, True], ids=["progress", "update_state"])
def test_a_running_job_reports_progress(results: Results, celery_style: bool) -> None:
    app, _, _ = results
    running = app.tasks["r.slow"].delay(3.0, celery_style=celery_style)
    shown = wait_for(lambda: running.state == "PROGRESS" and running.info, 30, what="PROGRESS")
    assert shown == {"percent": 40.0, "message": "two of five"}
    assert running.get(timeout=60) == "done" and running.state == "SUCCESS"


def test_an_id_that_names_no_job_is_an_error_not_pending_for_ever(results: Results) -> None:
    app, _, _ = results
    with pytest.raises(JobNotFound, match="neither a core4celery job id nor a Celery task id"):
        app.AsyncResult("garbage").get(timeout=5)
    # a Celery task id may be a message of a plain client that no worker adopted yet: in flight, as in Celery
    assert app.AsyncResult("2f1e1c3a-5b56-4d53-9a68-3b1f9f0c1a2b").state == "PENDING"
    with pytest.raises(JobNotFound, match="no job has the id"):
        app.AsyncResult("0" * 24).get(timeout=5)


def test_celery_beat_enqueues_registry_jobs_and_skips_ticks_while_the_last_one_runs(
    results: Results, db_url: str, tmp_path: Any,
) -> None:
    _, core4, _ = results
    env = {**os.environ, "CORE4CELERY_MONGODB_URL": db_url, "PYTHONPATH": str(REPO)}
    log_path = ARTIFACTS / "beat.log"
    with open(log_path, "wb") as log:
        beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tests.apps.results", "beat", "-l", "info",
                                 "-s", str(tmp_path / "schedule")], env=env, cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: core4.connection.journal.count_documents({"name": "r.slow", "state": "complete"}) >= 2,
                     60, interval=0.2, what="two scheduled jobs to complete")
        finally:
            beat.terminate()
            beat.wait(30)
    output = log_path.read_text(errors="replace")
    assert "Message Error" not in output and "Traceback" not in output, output[-3000:]
    assert "Sending due task slow-every-second" in output and "skipped a scheduled tick" in output
    ticks = output.count("Sending due task slow-every-second")
    runs = core4.connection.journal.count_documents({"name": "r.slow"}) + core4.connection.jobs.count_documents({})
    assert runs < ticks  # ticks while the last job still existed were skipped, not queued twice


def test_a_failure_that_will_be_retried_is_a_warning_the_last_one_critical(
    results: Results,
) -> None:
    app, _, worker = results
    assert app.tasks["r.fails_once"].delay().get(timeout=60) == 2
    with pytest.raises(ValueError):
        app.tasks["r.value_error"].delay(1).get(timeout=60)
    lines = worker.output().splitlines()
    assert any("WARNING" in line and "done execution with [failed]" in line for line in lines)
    assert any("CRITICAL" in line and "done execution with [error]" in line for line in lines)
    assert not any("CRITICAL" in line and "done execution with [failed]" in line for line in lines)


def test_self_retry_fails_the_run_and_runs_again_after_its_countdown(results: Results) -> None:
    app, core4, _ = results
    sent = app.tasks["r.retry_call"].delay(2)
    assert sent.get(timeout=60) == 3
    doc = core4.get(sent.id)
    assert doc["trial"] == 3 and doc["state"] == "complete"
    assert "KeyError('trial 2')" in doc["last_error"]["exception"]


def test_autoretry_for_maps_max_retries_onto_attempts(results: Results) -> None:
    app, _, _ = results
    task = app.tasks["r.autoretry"]
    assert (task.core4_options.attempts, task.core4_options.error_time) == (3, 0.2)
    assert task.delay(2).get(timeout=60) == 3  # two failures retried, the third trial succeeds
    exhausted = task.delay(5)
    with pytest.raises(ValueError, match="trial 3") as caught:
        exhausted.get(timeout=60)
    error: Any = caught.value
    assert (error.job_state, error.trial) == ("error", 3)


def test_a_message_from_a_plain_celery_client_is_adopted_as_a_job(results: Results, db_url: str) -> None:
    """app.send_task (or `celery call`, or a client in another language) does not go through Core4Task."""
    app, core4, worker = results
    sent = app.send_task("r.square", args=(6,))
    assert app.AsyncResult(sent.id).get(timeout=60) == 36
    adopted = core4.connection.journal.find_one({"celery_id": sent.id})
    assert adopted is not None and adopted["state"] == "complete" and adopted["args"] == {"n": 6}
    assert f"message {sent.id} from a plain Celery client adopted as job {adopted['_id']}" in worker.output()
    env = {**os.environ, "CORE4CELERY_MONGODB_URL": db_url, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "tests.apps.results", "call", "r.square",
                          "--args", "[8]"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    called = out.stdout.strip()
    assert app.AsyncResult(called).get(timeout=60) == 64, out.stdout + out.stderr


def test_time_limit_kills_the_run_like_kill(results: Results) -> None:
    app, core4, worker = results
    sent = app.tasks["r.too_long"].delay(60)
    with pytest.raises(Exception, match="time_limit of 1 s exceeded"):
        sent.get(timeout=30)
    doc = core4.get(sent.id)
    assert doc["state"] == "killed" and doc["trial"] == 1 and doc["runtime"] < 10
    # the worker logs the kill after the registry has it: wait for the line, not just the state
    def logged() -> str | None:
        out = worker.output()
        return out if "time_limit of 1 s exceeded: its pool process" in out else None

    log = wait_for(logged, 10, what="the worker to log the time-limit kill")
    assert "WorkerLostError" not in log and "Traceback" not in log
    assert app.tasks["r.too_long"].delay(0).get(timeout=30) == "finished"  # the pool took the next one
