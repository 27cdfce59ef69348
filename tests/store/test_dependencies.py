"""Jobs that wait for jobs (dependency=, a canvas's later steps): released, fed and abandoned by
core4celery.dispatch.dependencies on the real server; every decision is a guarded write."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from bson import ObjectId

from core4celery.clock import now
from core4celery.config.options import JobOptions
from core4celery.dispatch.dependencies import MISSING_GRACE, Dependencies
from core4celery.store.document import Links, new_job

from .conftest import Job, Registry


def waiting(reg: Registry, after: list[ObjectId], feed: dict[str, Any] | None = None, name: str = "next") -> Job:
    doc = new_job(name, {"x": None, "y": 1}, JobOptions(), query_at=now(),
                  links=Links(after=tuple(after), feed=feed, scope=str(ObjectId())))
    reg.store.enqueue(doc)
    return doc


def complete(reg: Registry, result: Any, name: str = "first") -> Job:
    doc, run = reg.running(name)
    assert reg.store.complete(run, result, now())
    reg.give(run)
    return doc


def test_a_waiting_job_is_not_due_until_every_job_it_waits_for_completed(reg: Registry) -> None:
    first, run = reg.running("first")
    second = complete(reg, 2, "second")
    job = waiting(reg, [first["_id"], second["_id"]], {"param": "x", "list": True})
    live = reg.live(job["_id"])
    assert live["state"] == "pending" and live["query_at"] is None and "front_at" not in live
    deps = Dependencies(reg.store)
    assert deps.settle([job["_id"]]) == 0  # first still runs
    assert reg.live(job["_id"])["query_at"] is None
    assert reg.store.complete(run, 1, now())
    reg.give(run)
    assert deps.settle([job["_id"]]) == 1
    live = reg.live(job["_id"])
    assert live["args"] == {"x": [1, 2], "y": 1}  # fed in the order it waits for them
    assert live["query_at"] is not None and live["front_at"] == live["query_at"] and "blocked_at" not in live
    assert deps.settle([job["_id"]]) == 0  # settled once


def test_a_failed_dependency_abandons_the_job_and_everything_after_it(reg: Registry) -> None:
    doc, run = reg.running("first", attempts=1)
    assert reg.store.fail(run, {"exception": "ValueError()"}, now()) is not None
    reg.give(run)
    second = waiting(reg, [doc["_id"]], {"param": "x", "list": False}, name="second")
    third = waiting(reg, [second["_id"]], None, name="third")
    reg.connection.jobs.update_one({"_id": second["_id"]}, {"$set": {"successors": [third["_id"]]}})
    assert Dependencies(reg.store).sweep() == 2
    for job, kind in ((second, "DependencyFailed"), (third, "DependencyFailed")):
        live = reg.live(job["_id"])
        assert live["state"] == "error" and live["last_error"]["exc_type"] == kind
        assert live.get("started_at") is None and "blocked_at" not in live


def test_a_chord_body_is_abandoned_with_celerys_chord_error(reg: Registry) -> None:
    doc, _ = reg.running("member")
    reg.store.kill(reg.live(doc["_id"]), "killed on request")
    body = waiting(reg, [doc["_id"]], {"param": "x", "list": True}, name="body")
    Dependencies(reg.store).settle([body["_id"]])
    error = reg.live(body["_id"])["last_error"]
    assert (error["exc_module"], error["exc_type"]) == ("celery.exceptions", "ChordError")
    assert "ended killed" in error["exc_args"][0]


def test_a_dependency_that_never_appears_abandons_the_job_after_a_grace(reg: Registry) -> None:
    missing = ObjectId()
    job = waiting(reg, [missing])
    deps = Dependencies(reg.store)
    assert deps.settle([job["_id"]]) == 0  # a chord's member may still be being enqueued
    old = now() - timedelta(seconds=MISSING_GRACE + 1)
    reg.connection.jobs.update_one({"_id": job["_id"]}, {"$set": {"blocked_at": old}})
    assert deps.settle([job["_id"]]) == 1
    assert f"job {missing} it waits for does not exist" in reg.live(job["_id"])["last_error"]["exc_args"][0]


def test_two_processes_settling_at_once_release_the_job_once(reg: Registry, registries: Any) -> None:
    first = complete(reg, 7)
    job = waiting(reg, [first["_id"]], {"param": "x", "list": False})
    other = registries()
    one, two = Dependencies(reg.store), Dependencies(other.store)
    stale = reg.store.blocked(10)  # both read the job while it was still waiting
    assert [doc["_id"] for doc in stale] == [job["_id"]]
    assert two.settle([job["_id"]]) == 1
    assert reg.store.release(stale[0], {"x": 8}) is False  # the guard on blocked_at: released already
    assert one.settle([job["_id"]]) == 0
    assert reg.live(job["_id"])["args"]["x"] == 7
