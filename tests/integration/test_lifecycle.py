"""States, results, defer, retry and parent-child jobs with real workers."""

from __future__ import annotations

import pytest

from core4celery import JobFailed
from tests.integration.conftest import Cluster


def test_result_and_document(cluster: Cluster) -> None:
    cluster.worker()
    from tests.apps.jobs import build  # noqa: F401 - the tasks live on cluster.app

    square = cluster.app.tasks["t.square"]
    result = square.delay(7)
    assert result.get(timeout=60) == 49
    doc = cluster.core4.get(result.id)
    assert doc["state"] == "complete" and doc["journaled"] is True
    assert doc["result"] == 49 and doc["trial"] == 1 and doc["args"] == {"n": 7}
    assert doc["prog"] == {"value": 1.0, "message": ""}
    assert doc["runtime"] >= 0 and doc["finished_at"] >= doc["started_at"]
    for key in ("_id", "name", "priority", "attempts", "attempts_left", "mid", "last_error", "enqueued",
                "query_at"):
        assert key in doc


def test_enqueue_by_name_returns_id(cluster: Cluster) -> None:
    cluster.worker()
    job_id = cluster.core4.enqueue("t.square", n=3)
    assert isinstance(job_id, str)
    assert cluster.core4.AsyncResult(job_id).get(timeout=60) == 9


def test_defer_does_not_use_attempts(cluster: Cluster) -> None:
    cluster.worker()
    result = cluster.app.tasks["t.defer_then"].delay(times=2)
    assert result.get(timeout=60) == 3
    doc = cluster.core4.get(result.id)
    assert doc["trial"] == 3 and doc["attempts"] == 1 and doc["state"] == "complete"


def test_deferred_state_is_visible_and_waits_in_registry(cluster: Cluster) -> None:
    cluster.worker()
    job_id = cluster.core4.enqueue("t.defer_then", times=100, defer_time=30)
    doc = cluster.wait_state(job_id, "deferred")
    assert doc["query_at"] is not None and doc["locked"] is None
    assert "not yet" in doc["last_error"]["exception"]
    assert (doc["query_at"] - doc["finished_at"]).total_seconds() == pytest.approx(30, abs=1)
    assert cluster.core4.connection.jobs.count_documents({"dispatched_until": {"$exists": True}}) == 0


def test_defer_max_makes_job_inactive(cluster: Cluster) -> None:
    cluster.worker()
    job_id = cluster.core4.enqueue("t.defer_forever")
    doc = cluster.wait_state(job_id, "inactive", timeout=60)
    assert doc["trial"] >= 2
    with pytest.raises(JobFailed, match="inactive"):
        cluster.core4.AsyncResult(job_id).get(timeout=5)


def test_failure_retries_then_completes(cluster: Cluster) -> None:
    cluster.worker()
    result = cluster.app.tasks["t.flaky"].delay(fail_times=2)
    assert result.get(timeout=60) == 3
    doc = cluster.core4.get(result.id)
    assert doc["trial"] == 3 and "failure in trial 2" in doc["last_error"]["exception"]


def test_failure_without_attempts_left_is_error(cluster: Cluster) -> None:
    cluster.worker()
    job_id = cluster.core4.enqueue("t.flaky", fail_times=10)
    doc = cluster.wait_state(job_id, "error", timeout=60)
    assert doc["trial"] == 3 and doc["attempts_left"] == 0
    assert any("RuntimeError" in line for line in doc["last_error"]["traceback"])
    assert doc["finished_at"] is not None and doc["query_at"] is None


def test_failed_state_waits_error_time(cluster: Cluster) -> None:
    cluster.worker()
    job_id = cluster.core4.enqueue("t.flaky", fail_times=10, error_time=30)
    doc = cluster.wait_state(job_id, "failed")
    assert doc["attempts_left"] == 2
    assert (doc["query_at"] - doc["finished_at"]).total_seconds() == pytest.approx(30, abs=1)


def test_mother_and_children(cluster: Cluster) -> None:
    cluster.worker(concurrency=3)
    mother_id = cluster.core4.enqueue("t.mother", chunks=6)
    assert cluster.core4.AsyncResult(mother_id).get(timeout=120) == 6
    children = list(cluster.core4.connection.journal.find({"mid": mother_id}))
    assert len(children) == 6 and all(c["state"] == "complete" for c in children)
    assert sum(c["result"] for c in children) == sum(range(60))
    mother = cluster.core4.get(mother_id)
    assert mother["trial"] >= 2 and mother["mid"] is None
