"""The fault cases of the lifecycle issue, each with real workers on a real server.

Server fail points (``configureFailPoint failCommand``, scoped to one worker by
its ``appName``) cut a job's path at an exact command: a completion whose
delete never happens, a final write that keeps failing, a short outage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from core4celery import InvalidArguments, OperationRefused
from core4celery.worker.node import pid_alive
from tests.integration.conftest import Cluster
from tests.workers import wait_for

VICTIM = "c4victim"


class FailPoint:
    def __init__(self, url: str) -> None:
        self._client: MongoClient[dict[str, Any]] = MongoClient(url)

    def on(self, commands: list[str], mode: Any = "alwaysOn", **data: Any) -> None:
        try:
            self._client.admin.command("configureFailPoint", "failCommand", mode=mode,
                                       data={"failCommands": commands, "appName": VICTIM, **data})
        except OperationFailure as exc:
            pytest.skip(f"the server has no fail points (start it with test commands): {exc}")

    def off(self) -> None:
        self._client.admin.command("configureFailPoint", "failCommand", mode="off")


@pytest.fixture
def failpoint(cluster: Cluster) -> Iterator[FailPoint]:
    point = FailPoint(cluster.url)
    yield point
    point.off()


def test_completion_cut_short_is_finished_by_another_worker(cluster: Cluster, failpoint: FailPoint) -> None:
    """Case 1: the run journals its result and dies before deleting the live job."""
    victim = cluster.worker("victim", concurrency=1, app_name=VICTIM)
    failpoint.on(["delete"], blockConnection=True, blockTimeMS=30_000)
    job_id = cluster.core4.enqueue("t.record", tag="cut-short")
    journal = cluster.core4.connection.journal
    wait_for(lambda: journal.find_one({"_id": cluster.core4.store.live(job_id)["_id"]}), 30,
             what="the journal copy while the live job still exists")
    assert cluster.core4.store.live(job_id)["state"] == "running"
    cluster.worker("rescue", concurrency=1)
    victim.kill9()
    failpoint.off()
    wait_for(lambda: cluster.core4.store.live(job_id) is None, 30, what="the half-done completion to be finished")
    done = cluster.core4.get(job_id)
    assert done["journaled"] and done["state"] == "complete" and done["result"] == "cut-short"
    assert done["trial"] == 1  # finished, not run again
    assert cluster.trace.count_documents({"tag": "cut-short", "event": "start"}) == 1
    wait_for(lambda: cluster.core4.store.holders("t.record") == [], 10, what="slot release")


def test_final_write_failing_past_outage_timeout_is_recovered(cluster: Cluster, failpoint: FailPoint) -> None:
    """Case 2: the ending cannot be written; the node stops renewing and the lease settles the job."""
    victim = cluster.worker("victim", concurrency=1, app_name=VICTIM)
    failpoint.on(["delete"], closeConnection=True)  # the completion's second step
    job_id = cluster.core4.enqueue("t.square", n=7)
    wait_for(lambda: "could not record the end of its run" in victim.output(), 30, what="the run to give up")
    assert cluster.core4.get(job_id)["state"] == "running"
    failpoint.off()
    done = cluster.wait_journaled(job_id)  # recovery finds the run's journal copy and finishes the move
    assert done["state"] == "complete" and done["trial"] == 1 and done["result"] == 49
    assert cluster.core4.AsyncResult(cluster.core4.enqueue("t.square", n=8)).get(timeout=30) == 64


def test_short_outage_on_the_final_write_is_waited_out(cluster: Cluster, failpoint: FailPoint) -> None:
    cluster.worker("victim", concurrency=1, app_name=VICTIM)
    failpoint.on(["delete"], mode={"times": 3}, closeConnection=True)
    job_id = cluster.core4.enqueue("t.square", n=9)
    done = cluster.wait_state(job_id, "complete", timeout=30)
    assert done["trial"] == 1 and done["result"] == 81


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("bigint", "result: int 18446744073709551616 exceeds MongoDB's 8-byte range"),
        # last_error holds repr(exception): backslashes appear doubled
        ("surrogate", r"result: '\\ud800' at position 0 is not valid UTF-8"),
        ("nul_key", r"key 'a\\x00b' contains a NUL character"),
        ("huge", "exceed the storable size"),
    ],
)
def test_unstorable_result_fails_the_job_and_the_worker_goes_on(cluster: Cluster, kind: str, message: str) -> None:
    """Case 3: checked before the final write; the job ends error naming the value."""
    cluster.worker(concurrency=1)
    job_id = cluster.core4.enqueue("t.bad_result", kind=kind)
    failed = cluster.wait_state(job_id, "error", timeout=30)
    assert message in failed["last_error"]["exception"]
    assert failed["locked"] is None
    assert cluster.core4.AsyncResult(cluster.core4.enqueue("t.square", n=3)).get(timeout=30) == 9


def test_unstorable_progress_message_fails_the_job(cluster: Cluster) -> None:
    cluster.worker(concurrency=1)
    failed = cluster.wait_state(cluster.core4.enqueue("t.bad_progress"), "error", timeout=30)
    assert "progress message" in failed["last_error"]["exception"]
    listed = cluster.wait_state(cluster.core4.enqueue("t.bad_progress", message=["a", "list"]), "error", timeout=30)
    assert "progress message must be a str, got list" in listed["last_error"]["exception"]
    assert "prog" not in listed or not isinstance((listed.get("prog") or {}).get("message"), list)


def test_kill_of_a_stranded_job_signals_no_process(cluster: Cluster, failpoint: FailPoint) -> None:
    """Case 4: the run is over (its ending could not be written); kill signals no idle pool process."""
    victim = cluster.worker("victim", concurrency=1, app_name=VICTIM)
    failpoint.on(["delete"], closeConnection=True)
    job_id = cluster.core4.enqueue("t.square", n=4)
    pid = cluster.wait_state(job_id, "running")["locked"]["pid"]
    wait_for(lambda: "could not record the end of its run" in victim.output(), 30, what="the run to give up")
    failpoint.off()
    with contextlib.suppress(OperationRefused):  # lease recovery may have finished it first
        cluster.core4.kill(job_id)
    # its result was journaled before the delete failed: the kill finishes that completion instead
    assert cluster.wait_journaled(job_id)["state"] == "complete"
    assert pid_alive(pid), "the idle pool process was signalled"
    assert cluster.core4.AsyncResult(cluster.core4.enqueue("t.square", n=5)).get(timeout=30) == 25


def test_jobs_for_a_queue_nobody_consumes_hold_no_capacity(cluster: Cluster) -> None:
    """Case 5: capacity per queue; the reason shows in ``info``/``list``."""
    from click.testing import CliRunner

    from core4celery.cli import main

    cluster.worker(concurrency=1)
    task = cluster.app.tasks["t.square"]
    stuck = [task.apply_async(kwargs={"n": n}, queue="nowhere").id for n in range(4)]
    assert cluster.core4.AsyncResult(cluster.core4.enqueue("t.square", n=6)).get(timeout=30) == 36
    assert {cluster.core4.get(job_id)["state"] for job_id in stuck} == {"pending"}
    assert not any(cluster.core4.get(job_id).get("dispatched_until") for job_id in stuck)
    # as `celery -A app core4 info` runs it: the Celery command's context carries the app
    result = CliRunner().invoke(main, ["info"], obj=SimpleNamespace(app=cluster.app))
    assert "4 waiting: no alive worker consumes queue 'nowhere'" in result.output, result.output


def test_unpublishable_ticket_and_bad_queue_are_refused_at_enqueue(cluster: Cluster) -> None:
    task = cluster.app.tasks["t.record"]
    with pytest.raises(InvalidArguments, match="queue must be a non-empty str, got 123"):
        task.apply_async(kwargs={"tag": "x"}, queue=123)
    with pytest.raises(InvalidArguments, match=r"the ticket would be .* bytes"):
        cluster.core4.enqueue("t.record", tag="y" * 13_000_000)  # storable, but 17.4 MB as a ticket
    with pytest.raises(InvalidArguments, match=r"the ticket would be .* bytes"):
        cluster.core4.enqueue("t.record", tag="é" * 3_000_000)  # 6 MB stored, 24 MB once kombu escapes it
    assert cluster.core4.connection.jobs.count_documents({}) == 0

