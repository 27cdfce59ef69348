"""The cluster's upkeep is done by one worker at a time, and a mother does not wait for her defer_time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.integration.conftest import Cluster
from tests.workers import wait_for


def keeper(cluster: Cluster) -> str | None:
    state = cluster.core4.store.slots().keeper
    return None if state is None else state[0]


def worker_id(cluster: Cluster, pid: int) -> Any:
    return cluster.core4.connection.workers.find_one({"pid": pid})["_id"]


def test_one_worker_keeps_the_cluster_and_another_takes_over_when_it_dies(cluster: Cluster) -> None:
    first = cluster.worker("a", concurrency=1)
    first_id = worker_id(cluster, first.pid)
    wait_for(lambda: keeper(cluster) == first_id, 30, what="the first worker to keep the cluster")
    second = cluster.worker("b", concurrency=1)
    second_id = worker_id(cluster, second.pid)
    workers = cluster.core4.connection.workers
    joined = workers.find_one({"_id": second_id})["heartbeat"]
    wait_for(lambda: workers.find_one({"_id": second_id})["heartbeat"] >= joined + timedelta(seconds=3), 30,
             what="three beats of the second worker")
    assert keeper(cluster) == first_id  # the lease is renewed, not contested
    first.kill9()
    wait_for(lambda: keeper(cluster) == second_id, 30, what="the second worker to take the keeper's lease over")
    # due by the clock only: nothing but the keeper's timed dispatch can give it a ticket
    late = cluster.app.tasks["t.record"].apply_async(kwargs={"tag": "late", "seconds": 0}, countdown=1)
    cluster.wait_state(late.id, "complete", timeout=30)
    record = cluster.trace.find_one({"tag": "late"})
    assert record is not None and record["worker"].startswith(second.name)


def test_a_mother_runs_when_her_last_child_ends_not_after_her_defer_time(cluster: Cluster) -> None:
    cluster.worker("a", concurrency=2)
    mother = cluster.core4.enqueue("t.patient_mother", chunks=4)
    done = cluster.wait_state(mother, "complete", timeout=60)  # her defer_time is an hour
    assert done["result"] == 4 and done["trial"] >= 2
    assert cluster.core4.connection.journal.count_documents({"mid": str(mother)}) == 4
