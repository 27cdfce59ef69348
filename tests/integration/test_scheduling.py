"""max_parallel across processes, strict priority, duplicates and lost tickets."""

from __future__ import annotations

from tests.integration.conftest import Cluster
from tests.workers import wait_for


def max_overlap(events: list[dict]) -> int:
    """Highest number of jobs between their start and finish marks at any moment."""
    marks = sorted((e["at"], 1 if e["event"] == "start" else -1) for e in events)
    # at equal timestamps count finishes first, so touching intervals do not overlap
    marks.sort(key=lambda m: (m[0], m[1]))
    current = peak = 0
    for _, delta in marks:
        current += delta
        peak = max(peak, current)
    return peak


def test_max_parallel_is_cluster_wide(cluster: Cluster) -> None:
    cluster.worker("a", concurrency=3)
    cluster.worker("b", concurrency=3)
    ids = [cluster.core4.enqueue("t.sleepy", seconds=0.6, tag=str(i)) for i in range(12)]
    for job_id in ids:
        cluster.wait_state(job_id, "complete", timeout=120)
    events = list(cluster.trace.find({}, {"_id": 0}))
    assert len(events) == 24
    assert max_overlap(events) == 2  # never above the limit, and the limit is reached
    assert {e["job"] for e in events} == set(ids)
    # the slot is freed right after the final transition
    wait_for(lambda: cluster.core4.store.holders("t.sleepy") == [], 10, what="slot release")


def test_both_workers_take_work(cluster: Cluster) -> None:
    cluster.worker("a", concurrency=1)
    cluster.worker("b", concurrency=1)
    ids = [cluster.core4.enqueue("t.record", tag=str(i), seconds=0.3) for i in range(8)]
    for job_id in ids:
        cluster.wait_state(job_id, "complete", timeout=120)
    workers = {e["worker"] for e in cluster.trace.find({"event": "start"})}
    assert len(workers) == 2


def test_priority_order_is_strict(cluster: Cluster) -> None:
    cluster.worker("a", concurrency=1)
    blocker = cluster.core4.enqueue("t.record", tag="blocker", seconds=1.5)
    cluster.wait_state(blocker, "running")
    low = [cluster.core4.enqueue("t.record", tag=f"low{i}", priority=1) for i in range(3)]
    high = cluster.core4.enqueue("t.record", tag="high", priority=9)
    forced = cluster.core4.enqueue("t.record", tag="forced", priority=-5, force=True)
    mid = cluster.core4.enqueue("t.record", tag="mid", priority=5)
    for job_id in [*low, high, forced, mid]:
        cluster.wait_state(job_id, "complete", timeout=60)
    order = [e["tag"] for e in cluster.trace.find({"event": "start"}).sort("at", 1)]
    assert order == ["blocker", "forced", "high", "mid", "low0", "low1", "low2"]


def test_duplicate_enqueue_raises_job_exists(cluster: Cluster) -> None:
    from core4celery import JobExists

    first = cluster.core4.enqueue("t.record", tag="dup")
    try:
        cluster.core4.enqueue("t.record", tag="dup")
    except JobExists as exc:
        assert exc.job_id == first
    else:
        raise AssertionError("second enqueue was accepted")
    assert cluster.core4.connection.jobs.count_documents({}) == 1
    # another argument value is another job
    cluster.core4.enqueue("t.record", tag="other")
    assert cluster.core4.connection.jobs.count_documents({}) == 2


def test_same_arguments_allowed_again_after_completion(cluster: Cluster) -> None:
    cluster.worker()
    first = cluster.core4.enqueue("t.square", n=2)
    cluster.wait_state(first, "complete")
    second = cluster.core4.enqueue("t.square", n=2)
    assert second != first
    cluster.wait_state(second, "complete")


def test_lost_ticket_is_reissued(cluster: Cluster) -> None:
    """A worker fetched the ticket and died before starting it: the job still runs, once."""
    import os
    import signal

    first = cluster.worker("a", concurrency=1)
    os.killpg(first.pid, signal.SIGSTOP)  # frozen: still counted alive for worker_timeout
    job_id = cluster.core4.enqueue("t.record", tag="lost")
    ticket = cluster.core4.connection.db["messages"]
    wait_for(lambda: cluster.core4.dispatch() or ticket.count_documents({}) >= 1, 20, what="ticket in the broker")
    ticket.delete_many({})  # what a worker does when it fetches a message
    first.kill9()
    doc = cluster.core4.get(job_id)
    assert doc["state"] == "pending" and doc["dispatched_until"] is not None
    cluster.worker("b", concurrency=1)
    done = cluster.wait_state(job_id, "complete", timeout=60)
    assert done["trial"] == 1
    assert cluster.trace.count_documents({"tag": "lost", "event": "start"}) == 1


def test_jobs_wait_without_workers_and_run_when_one_starts(cluster: Cluster) -> None:
    job_id = cluster.core4.enqueue("t.square", n=5)
    assert cluster.core4.get(job_id)["state"] == "pending"
    assert cluster.core4.connection.db["messages"].count_documents({}) == 0
    cluster.worker()
    assert cluster.core4.AsyncResult(job_id).get(timeout=60) == 25
