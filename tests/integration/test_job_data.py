"""Job logs, stdout and cookies with real workers, and the ``log``/``stdout`` commands.

Workers run tests/apps/jobdata.py with a log cap of ``CAP`` records per run
(set through the environment, as a deployment would).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from celery import Celery
from click.testing import CliRunner

from core4celery import Core4
from core4celery.cli import main
from tests.apps.jobdata import build
from tests.apps.jobs import trace_collection
from tests.conftest import ARTIFACTS
from tests.integration.conftest import Cluster
from tests.workers import REPO, WorkerProcess, wait_for

CAP = 20
APP = "tests.apps.jobdata"


class JobData:
    """Workers of tests/apps/jobdata.py and the test's own handle on the same registry."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.app: Celery
        self.core4: Core4
        self.app, self.core4 = build(cluster.url)

    def worker(self, name: str = "w1", cap: bool = True) -> WorkerProcess:
        log_dir = ARTIFACTS / "workers"
        log_dir.mkdir(parents=True, exist_ok=True)
        proc = WorkerProcess(self.cluster.url, f"{self.cluster.test_name}-{name}", 1, app=APP, log_dir=log_dir,
                             env={"CORE4CELERY_LOG_MAX_RECORDS": str(CAP)} if cap else {}).start()
        self.cluster.workers.append(proc)
        self.cluster.wait_registered(proc)
        return proc

    def wait_ended(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            doc = self.core4.get(job_id)
            return doc if doc.get("journaled") or doc["state"] in ("error", "killed", "inactive") else None
        return wait_for(check, timeout, what=f"job {job_id} to end")  # type: ignore[no-any-return]

    def records(self, job_id: str) -> list[dict[str, Any]]:
        return self.core4.job_data.logs.read(ObjectId(job_id))

    def cli(self, *args: str) -> tuple[int, str, str]:
        sys.modules.pop(APP, None)  # the app module reads its URL at import
        result = CliRunner().invoke(main, ["-A", f"{APP}:app", *args],
                                    env={"CORE4CELERY_MONGODB_URL": self.cluster.url})
        return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def data(cluster: Cluster) -> Iterator[JobData]:
    yield JobData(cluster)


def messages(records: list[dict[str, Any]]) -> list[str]:
    return [doc["message"] for doc in records]


def test_a_good_run_stores_its_records_and_stdout_but_not_its_debug_trail(data: JobData) -> None:
    proc = data.worker()
    job_id = data.core4.enqueue("jd.chatty")
    doc = data.wait_ended(job_id)
    assert doc["state"] == "complete"
    records = data.records(job_id)
    assert messages(records) == ["info from self.logger", "warning from the module logger", "info from a task logger",
                                 "warning from a helper"]
    first = records[0]
    assert first["trial"] == 1 and first["level"] == "INFO" and first["logger"] == "jd.chatty"
    assert first["hostname"].startswith(f"{proc.name}@")  # the worker's node name
    assert [r["logger"] for r in records[1:]] == ["tests.apps.jobdata", "tests.apps.jobdata.tasks", "jdhelper"]
    stdout = data.core4.job_data.stdout.read(ObjectId(job_id))
    assert stdout is not None and stdout["text"] == "printed line\nto stderr\n" and stdout["trial"] == 1
    output = proc.output()
    assert "info from self.logger" in output  # the worker's console shows what it showed before
    assert "debug detail of a good run" not in output  # ... and no more: the job's DEBUG went to the capture only


def test_a_failed_run_keeps_its_debug_trail_and_traceback(data: JobData) -> None:
    data.worker()
    job_id = data.core4.enqueue("jd.fails")
    assert data.wait_ended(job_id)["state"] == "error"
    records = data.records(job_id)
    assert messages(records) == ["debug before the failure", "about to fail", "caught once"]
    assert records[0]["level"] == "DEBUG"
    assert "KeyError: 'missing'" in records[2]["exception"]
    assert not any("execution" in text for text in messages(records))  # core4celery's own lines are not job logs
    stdout = data.core4.job_data.stdout.read(ObjectId(job_id))
    assert stdout is not None and stdout["text"] == "partial output\n"


def test_each_run_has_its_own_records_and_output(data: JobData) -> None:
    data.worker()
    job_id = data.core4.enqueue("jd.flaky")
    doc = data.wait_ended(job_id)
    assert doc["state"] == "complete" and doc["trial"] == 3
    by_run = [(r["trial"], r["message"]) for r in data.records(job_id)]
    assert by_run == [(1, "debug of trial 1"), (1, "info of trial 1"),  # a failed run keeps its debug trail
                      (2, "info of trial 2"), (3, "info of trial 3")]  # a deferred or completed one does not
    code, out, _ = data.cli("log", job_id, "--run", "2")
    assert code == 0 and [line.split(": ", 1)[1] for line in out.splitlines()] == ["info of trial 2"]
    assert data.cli("stdout", job_id)[1] == "output of trial 3\n"  # the latest run
    assert data.cli("stdout", job_id, "--run", "1")[1] == "output of trial 1\n"


def test_the_cap_from_the_environment_stores_one_dropped_record(data: JobData) -> None:
    data.worker()
    job_id = data.core4.enqueue("jd.chatty", records=50)
    data.wait_ended(job_id)
    records = data.records(job_id)
    assert len(records) == CAP + 1
    assert records[-1]["message"].startswith("34 records dropped")  # 4 + 50 records, 20 stored


def test_the_cookie_keeps_values_across_runs_and_gets_last_runtime(data: JobData) -> None:
    data.worker()
    first = data.core4.enqueue("jd.counter", n=1)
    one = data.wait_ended(first)
    assert one["state"] == "complete" and one["result"] == {"runs": 1, "seen_last_runtime": None}
    cookie = data.core4.job_data.cookies.cookie("jd.counter")
    stamp = cookie.get("last_runtime")
    assert stamp is not None and one["started_at"] <= stamp <= one["finished_at"]
    second = data.core4.enqueue("jd.counter", n=2)
    two = data.wait_ended(second)
    assert two["result"] == {"runs": 2, "seen_last_runtime": stamp.isoformat()}
    assert cookie.get("runs") == 2 and cookie.get("last_n") == 2
    assert cookie.get("last_runtime") > stamp


def test_cli_log_and_stdout(data: JobData) -> None:
    data.worker()
    good = data.core4.enqueue("jd.chatty")
    bad = data.core4.enqueue("jd.fails")
    data.wait_ended(good)
    data.wait_ended(bad)
    code, out, err = data.cli("log", good)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 4 and f"INFO     {good} [1]" in lines[0] and lines[0].endswith("jd.chatty: info from self.logger")
    code, out, _ = data.cli("log", good, "--level", "warning")
    assert [line.split(": ", 1)[1] for line in out.splitlines()] == ["warning from the module logger",
                                                                     "warning from a helper"]
    code, out, _ = data.cli("log", "jd.fails")  # by name: its latest jobs
    assert "debug before the failure" in out and "KeyError: 'missing'" in out
    code, out, _ = data.cli("log", good, "--run", "2")
    assert code == 0 and out == "no log records.\n"
    code, out, err = data.cli("stdout", good)
    assert code == 0 and out == "printed line\nto stderr\n", err
    code, out, err = data.cli("stdout", good, "--run", "2")
    assert code == 1 and "run 2 wrote nothing" in err
    code, _, err = data.cli("stdout", "nonsense")
    assert code == 1 and "'nonsense' is not a job id" in err


def test_cli_log_follow_prints_until_the_job_ends(data: JobData) -> None:
    data.worker(cap=False)
    job_id = data.core4.enqueue("jd.slow", tag="follow")
    data.cluster.wait_state(job_id, "running")
    out_path = Path(ARTIFACTS / f"follow-{job_id}.out")
    env = {**os.environ, "CORE4CELERY_MONGODB_URL": data.cluster.url,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(out_path, "wb") as out:
        exe = os.path.join(os.path.dirname(sys.executable), "core4celery")
        follow = subprocess.Popen([exe, "-A", APP, "log", job_id, "--follow"],
                                  env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            wait_for(lambda: "tick 2" in out_path.read_text(), 30, what="follow to print the running job's records")
            assert follow.poll() is None  # still following a running job
            trace_collection(data.cluster.url).insert_one({"release": "follow"})
            assert follow.wait(30) == 0
        finally:
            if follow.poll() is None:
                follow.kill()
                follow.wait(10)
    text = out_path.read_text()
    assert text.rstrip().endswith("jd.slow: slow job done")
    ticks = [line for line in text.splitlines() if ": tick " in line]
    assert [line.rsplit(" ", 1)[1] for line in ticks] == [str(n) for n in range(len(ticks))]  # each once, in order
