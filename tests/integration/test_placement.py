"""Where a job runs: pinned to workers, capped per worker, held back by a worker's resource gate (issue 14)."""

from __future__ import annotations

import os
from typing import Any

from tests.integration.conftest import Cluster
from tests.integration.test_cli import ok
from tests.workers import wait_for

CLOSED = {"CORE4CELERY_MIN_FREE_RAM": str(10**9)}  # a billion MiB free: this node's gate never opens


def worker_of(cluster: Cluster, tag: str) -> str:
    found = wait_for(lambda: cluster.trace.find_one({"tag": tag}), 60, what=f"job {tag} to start")
    return str(found["worker"])


def cli(cluster: Cluster, *args: str) -> str:
    return ok(cluster.url, *args)


def test_a_pinned_job_runs_only_on_its_worker_and_waits_without_capacity_while_it_is_away(cluster: Cluster) -> None:
    cluster.worker("w1")
    cluster.worker("w2")
    core4 = cluster.core4
    for n in range(4):
        cluster.wait_state(core4.enqueue("t.record", tag=f"pin{n}", worker="*-w2@*"), "complete", "running")
    assert {worker_of(cluster, f"pin{n}") for n in range(4)} == {f"{cluster.test_name}-w2@{os.uname().nodename}"}
    away = core4.enqueue("t.record", tag="away", worker=["*-w3@*", "nobody@nowhere"])
    core4.dispatch()
    assert core4.get(away)["state"] == "pending" and not core4.get(away).get("dispatched_until")
    assert core4.store.holders("t.record") == []  # it takes no capacity while its worker is away
    assert "pinned to worker *-w3@*, nobody@nowhere, none of them alive" in cli(cluster, "info")
    assert "pinned to worker *-w3@*, nobody@nowhere, none of them alive" in cli(cluster, "list")
    cluster.worker("w3")
    cluster.wait_state(away, "complete", "running")
    assert worker_of(cluster, "away").startswith(f"{cluster.test_name}-w3@")


def test_max_per_node_holds_beside_max_parallel(cluster: Cluster) -> None:
    for name in ("w1", "w2", "w3"):
        cluster.worker(name, concurrency=2)
    core4 = cluster.core4
    ids = [core4.enqueue("t.record", tag=f"cap{n}", seconds=1.0, max_per_node=1, max_parallel=8) for n in range(9)]
    for job_id in ids:
        cluster.wait_journaled(job_id, timeout=90)
    runs: list[dict[str, Any]] = []
    for job_id in ids:
        doc = core4.get(job_id)
        runs.append({"start": doc["started_at"], "end": doc["finished_at"],
                     "worker": cluster.trace.find_one({"job": job_id})["worker"]})
    for run in runs:
        same_node = [r for r in runs if r["worker"] == run["worker"] and r["start"] <= run["start"] < r["end"]]
        assert len(same_node) == 1, same_node  # never two at once on one worker
    at_once = max(sum(1 for r in runs if r["start"] <= run["start"] < r["end"]) for run in runs)
    assert at_once >= 2  # the cap is per node: the cluster runs several at once
    assert len({run["worker"] for run in runs}) == 3


def test_a_closed_resource_gate_takes_only_force_jobs(cluster: Cluster) -> None:
    gated = cluster.worker("gated", env=CLOSED)
    core4 = cluster.core4
    wait_for(lambda: (core4.nodes.alive() or [{}])[0].get("gate", {}).get("open") is False, 30,
             what="the gate to report closed")
    plain = core4.enqueue("t.record", tag="plain")
    forced = core4.enqueue("t.record", tag="forced", force=True)
    cluster.wait_state(forced, "complete", "running")
    assert worker_of(cluster, "forced").startswith(f"{cluster.test_name}-gated@")  # force passes the gate
    core4.dispatch()
    assert core4.get(plain)["state"] == "pending"
    assert "has its resource gate closed" in cli(cluster, "info")
    assert "closed" in cli(cluster, "workers")
    assert "not enough resources available: cpu [" in gated.output()
    cluster.worker("open")  # a node whose gate is open takes it
    cluster.wait_state(plain, "complete", "running")
    assert worker_of(cluster, "plain").startswith(f"{cluster.test_name}-open@")
    gated.kill9()  # the same node again with core4's default limits: its gate opens
    gated.stop()
    again = cluster.worker("gated")
    tags = [f"after{n}" for n in range(6)]
    for tag in tags:
        core4.enqueue("t.record", tag=tag, seconds=0.3)
    workers = {worker_of(cluster, tag) for tag in tags}
    assert any(w.startswith(f"{cluster.test_name}-gated@") for w in workers), (workers, again.output()[-2000:])


def test_pausing_a_project_holds_back_only_its_jobs(cluster: Cluster) -> None:
    cluster.worker("w1")
    core4 = cluster.core4
    assert core4.pause("t") is True and core4.pause("t") is False
    held = core4.enqueue("t.record", tag="held")
    core4.dispatch()
    assert core4.get(held)["state"] == "pending" and not core4.get(held).get("dispatched_until")
    assert "dispatching of t.* is paused since" in cli(cluster, "info")
    assert core4.resume("t") is True
    cluster.wait_state(held, "complete", "running")
