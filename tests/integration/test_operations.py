"""kill, restart, remove, pause/resume and halt in every state, with real workers."""

from __future__ import annotations

import time

import pytest

from core4celery import JobNotFound, OperationRefused
from core4celery.operations import Outcome
from core4celery.worker.node import pid_alive
from tests.integration.conftest import Cluster
from tests.workers import wait_for


def slot_free(cluster: Cluster, name: str) -> None:
    wait_for(lambda: cluster.core4.store.holders(name) == [], 10, what=f"slot of {name} to be freed")


def idle_passes(cluster: Cluster, beats: int = 3) -> None:
    """Wait until the worker's ticker went round several times (each round also dispatches)."""
    workers = cluster.core4.connection.workers
    seen: list[object] = []

    def advanced() -> bool:
        stamp = workers.find_one({}, {"heartbeat": 1})["heartbeat"]
        if not seen or seen[-1] != stamp:
            seen.append(stamp)
        return len(seen) > beats

    wait_for(advanced, 30, what=f"{beats} worker heartbeats")


def test_kill_running_job_ends_its_process(cluster: Cluster) -> None:
    worker = cluster.worker(concurrency=1)
    core4 = cluster.core4
    job_id = core4.enqueue("t.silent", seconds=120)
    running = cluster.wait_state(job_id, "running")
    pid = running["locked"]["pid"]
    started = time.monotonic()
    assert core4.kill(job_id) is Outcome.KILL_REQUESTED
    assert core4.kill(job_id) is Outcome.KILL_REQUESTED  # asking twice is harmless
    killed = cluster.wait_state(job_id, "killed", timeout=30)
    wait_for(lambda: not pid_alive(pid), 10, what="the pool process to die")
    assert time.monotonic() - started < 10
    assert killed["killed_at"] is not None and "JobKilled" in killed["last_error"]["exception"]
    assert killed["attempts_left"] == 1 and killed["trial"] == 1 and killed["locked"] is None
    slot_free(cluster, "t.silent")
    with pytest.raises(OperationRefused, match="killed already"):
        core4.kill(job_id)
    # the pool replaced its process and takes the next job
    assert core4.AsyncResult(core4.enqueue("t.square", n=4)).get(timeout=60) == 16
    # an expected kill reads as one: an INFO line, no lost-worker error, no traceback
    log = worker.output()
    assert f"killed on request: its pool process {pid} was ended" in log
    assert "WorkerLostError" not in log and "exited with" not in log and "Traceback" not in log, log


def test_kill_waiting_jobs_at_once(cluster: Cluster) -> None:
    cluster.worker()
    core4 = cluster.core4
    deferred = core4.enqueue("t.defer_then", times=5, defer_time=60)
    failed = core4.enqueue("t.flaky", fail_times=5, error_time=60)
    cluster.wait_state(deferred, "deferred")
    cluster.wait_state(failed, "failed")
    assert core4.pause() is True
    pending = core4.enqueue("t.square", n=2)
    for job_id in (pending, deferred, failed):
        assert core4.kill(job_id) is Outcome.KILLED
        doc = core4.get(job_id)
        assert doc["state"] == "killed" and doc["query_at"] is None and "dispatched_until" not in doc
    done = core4.enqueue("t.square", n=3)
    core4.resume()
    core4.AsyncResult(done).get(timeout=60)
    with pytest.raises(OperationRefused, match="it is complete"):
        core4.kill(done)
    with pytest.raises(JobNotFound):
        core4.kill("0" * 24)
    with pytest.raises(JobNotFound):
        core4.kill("not-an-id")


def test_restart_waiting_keeps_id_and_runs_now(cluster: Cluster) -> None:
    cluster.worker()
    core4 = cluster.core4
    deferred = core4.enqueue("t.defer_then", times=1, defer_time=60)
    failed = core4.enqueue("t.flaky", fail_times=1, attempts=2, error_time=60)
    cluster.wait_state(deferred, "deferred")
    cluster.wait_state(failed, "failed")
    assert core4.restart(deferred) == deferred
    assert core4.restart(failed) == failed
    assert core4.AsyncResult(deferred).get(timeout=30) == 2
    assert core4.AsyncResult(failed).get(timeout=30) == 2
    assert core4.get(failed)["attempts_left"] == 0


def test_restart_stopped_makes_a_linked_new_job(cluster: Cluster) -> None:
    cluster.worker()
    core4 = cluster.core4
    error = core4.enqueue("t.flaky", fail_times=1, attempts=1)
    inactive = core4.enqueue("t.defer_forever")
    cluster.wait_state(error, "error")
    cluster.wait_state(inactive, "inactive", timeout=30)
    child = core4.restart(error)
    assert child != error
    assert core4.AsyncResult(child).get(timeout=30) == 2  # trial continues from the old job
    parent, new = core4.get(error), core4.get(child)
    assert parent["journaled"] and parent["state"] == "error" and str(parent["enqueued"]["child_id"]) == child
    assert parent["enqueued"]["parent_id"] is None
    assert str(new["enqueued"]["parent_id"]) == error and "child_id" not in new["enqueued"]
    assert new["attempts_left"] == 0 and new["attempts"] == 1
    again = core4.restart(inactive)
    assert again != inactive and core4.get(again).get("inactive_at") != core4.get(inactive)["inactive_at"]
    with pytest.raises(OperationRefused, match="restarted as"):
        core4.restart(error)


def test_restart_refused_for_pending_running_complete(cluster: Cluster) -> None:
    cluster.worker(concurrency=1)
    core4 = cluster.core4
    running = core4.enqueue("t.silent", seconds=3)
    cluster.wait_state(running, "running")
    pending = core4.enqueue("t.square", n=5)
    for job_id, state in ((running, "running"), (pending, "pending")):
        with pytest.raises(OperationRefused, match=f"it is {state}"):
            core4.restart(job_id)
    core4.AsyncResult(pending).get(timeout=30)
    with pytest.raises(OperationRefused, match="it is complete"):
        core4.restart(pending)
    core4.pause()  # before the enqueue: an idle worker would start the job at once
    killed = core4.enqueue("t.square", n=6)
    core4.kill(killed)
    restarted = core4.restart(killed)
    assert core4.get(restarted)["state"] == "pending"


def test_remove_in_each_state(cluster: Cluster) -> None:
    cluster.worker(concurrency=2)
    core4 = cluster.core4
    deferred = core4.enqueue("t.defer_then", times=5, defer_time=60)
    error = core4.enqueue("t.flaky", fail_times=5)
    running = core4.enqueue("t.silent", seconds=8)  # still running when the error job has used its attempts
    cluster.wait_state(running, "running")
    cluster.wait_state(deferred, "deferred")
    cluster.wait_state(error, "error")
    core4.pause()
    pending = core4.enqueue("t.square", n=7)
    for job_id, state in ((pending, "pending"), (deferred, "deferred"), (error, "error")):
        assert core4.remove(job_id) is Outcome.REMOVED
        doc = core4.get(job_id)
        assert doc["journaled"] and doc["state"] == state and doc["removed_at"] is not None
    assert core4.remove(running) is Outcome.REMOVE_REQUESTED
    assert core4.get(running)["removed_at"] is not None
    with pytest.raises(OperationRefused, match="being removed"):
        core4.restart(running)
    done = cluster.wait_journaled(running)
    assert done["state"] == "complete" and done["removed_at"] is not None
    with pytest.raises(OperationRefused, match="journaled"):
        core4.remove(pending)


def test_remove_running_job_that_defers_is_journaled_deferred(cluster: Cluster) -> None:
    cluster.worker()
    core4 = cluster.core4
    job_id = core4.enqueue("t.defer_then", times=5, defer_time=60)
    cluster.wait_state(job_id, "deferred")
    core4.restart(job_id)  # runs again at once
    # flag it whatever it is doing; it must end journaled without running again
    outcome = core4.remove(job_id)
    doc = cluster.wait_journaled(job_id, timeout=20)
    assert doc["state"] == "deferred" and outcome in (Outcome.REMOVED, Outcome.REMOVE_REQUESTED)
    assert doc["trial"] <= 2


def test_hard_remove_of_running_job(cluster: Cluster) -> None:
    cluster.worker(concurrency=1)
    core4 = cluster.core4
    job_id = core4.enqueue("t.silent", seconds=2)
    cluster.wait_state(job_id, "running")
    assert core4.remove(job_id, hard=True) is Outcome.REMOVED
    doc = core4.get(job_id)
    assert doc["journaled"] and doc["state"] == "running" and core4.store.live(job_id) is None
    # the process ran on; its result is dropped and the slot is free for others
    wait_for(lambda: "result dropped" in cluster.workers[0].output(), 30, what="the orphaned run to end")
    assert core4.AsyncResult(core4.enqueue("t.square", n=8)).get(timeout=30) == 64


def test_pause_stops_dispatch_until_resume(cluster: Cluster) -> None:
    cluster.worker()
    core4 = cluster.core4
    assert core4.pause() is True and core4.pause() is False
    job_id = core4.enqueue("t.square", n=9)
    idle_passes(cluster)
    doc = core4.get(job_id)
    assert doc["state"] == "pending" and "dispatched_until" not in doc
    assert core4.resume() is True and core4.resume() is False
    assert core4.AsyncResult(job_id).get(timeout=30) == 81


def test_zombie_and_wall_flags_set_once_while_job_runs_on(cluster: Cluster) -> None:
    cluster.worker()
    core4 = cluster.core4
    job_id = core4.enqueue("t.silent", seconds=3.5)
    flagged = wait_for(lambda: (d := core4.get(job_id)).get("zombie_at") and d.get("wall_at") and d, 20,
                       what="zombie and wall flags")
    assert flagged["state"] == "running"
    done = cluster.wait_state(job_id, "complete", timeout=30)
    assert done["zombie_at"] == flagged["zombie_at"] and done["wall_at"] == flagged["wall_at"]
    assert done["result"] == 3.5
    quick = core4.enqueue("t.square", n=2)
    core4.AsyncResult(quick).get(timeout=30)
    assert core4.get(quick)["zombie_at"] is None and core4.get(quick)["wall_at"] is None


def test_halt_stops_workers_after_their_jobs(cluster: Cluster) -> None:
    old = cluster.worker("old", concurrency=1)
    core4 = cluster.core4
    job_id = core4.enqueue("t.silent", seconds=2)
    cluster.wait_state(job_id, "running")
    core4.halt()
    assert wait_for(lambda: old.proc.poll() is not None, 60, what="the old worker to exit") is not None
    assert old.proc.returncode == 0
    assert core4.get(job_id)["state"] == "complete"
    new = cluster.worker("new", concurrency=1)  # started after the halt: keeps working
    assert core4.AsyncResult(core4.enqueue("t.square", n=3)).get(timeout=60) == 9
    assert new.proc.poll() is None
