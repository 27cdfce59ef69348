"""No job is lost when a pool process or a whole worker dies."""

from __future__ import annotations

import os
import signal

from tests.integration.conftest import Cluster
from tests.workers import wait_for


def test_pool_process_killed_job_runs_again(cluster: Cluster) -> None:
    cluster.worker("a", concurrency=1)
    job_id = cluster.core4.enqueue("t.record", tag="victim", seconds=3)
    running = cluster.wait_state(job_id, "running")
    # the body has begun (its trace record exists) before the process dies
    wait_for(lambda: cluster.trace.find_one({"tag": "victim", "event": "start"}), 30, what="the body to start")
    os.kill(running["locked"]["pid"], signal.SIGKILL)
    done = cluster.wait_state(job_id, "complete", timeout=60)
    assert done["trial"] == 2
    assert "WorkerLost" in done["last_error"]["exception"]
    assert cluster.trace.count_documents({"tag": "victim", "event": "start"}) == 2


def test_worker_killed_job_completes_elsewhere(cluster: Cluster) -> None:
    first = cluster.worker("a", concurrency=1)
    job_id = cluster.core4.enqueue("t.record", tag="orphan", seconds=3)
    running = cluster.wait_state(job_id, "running")
    assert running["locked"]["worker"].startswith(first.name)
    cluster.worker("b", concurrency=1)
    first.kill9()
    done = cluster.wait_state(job_id, "complete", timeout=60)
    assert done["trial"] == 2
    workers = [e["worker"] for e in cluster.trace.find({"tag": "orphan"}).sort("at", 1)]
    assert workers[0].startswith(first.name) and not workers[1].startswith(first.name)
    # the slot is freed right after the final transition
    wait_for(lambda: cluster.core4.store.holders("t.record") == [], 10, what="slot release")
