"""Celery's canvas on core4 tasks: every step is a registry job, linked in the registry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, chain, chord, group
from celery.exceptions import ChordError
from celery.result import GroupResult

from core4celery import Core4
from core4celery.errors import DependencyFailed, JobNotFound
from tests.apps.canvas import build
from tests.conftest import ARTIFACTS
from tests.workers import WorkerProcess, wait_for

Canvas = tuple[Celery, Core4]


class Workers:
    def __init__(self, url: str, core4: Core4) -> None:
        self.url = url
        self.core4 = core4
        self.started: list[WorkerProcess] = []

    def start(self, name: str, concurrency: int = 2) -> WorkerProcess:
        proc = WorkerProcess(self.url, f"canvas-{name}", concurrency=concurrency, app="tests.apps.canvas",
                             log_dir=ARTIFACTS / "workers").start()
        self.started.append(proc)
        workers = self.core4.connection.workers
        wait_for(lambda: workers.find_one({"pid": proc.pid}), 60, what=f"worker {name} to register")
        return proc


@pytest.fixture
def canvas(db_url: str) -> Iterator[tuple[Celery, Core4, Workers]]:
    app, core4 = build(db_url)
    workers = Workers(db_url, core4)
    yield app, core4, workers
    for proc in workers.started:
        proc.kill9()
        proc.stop()
    core4.close()
    app.close()


def jobs_named(core4: Core4, name: str) -> list[dict[str, Any]]:
    live = list(core4.connection.jobs.find({"name": name}))
    return live + list(core4.connection.journal.find({"name": name}))


def test_the_celery_docs_canvas_examples_run_as_registry_jobs(canvas: Any) -> None:
    app, core4, workers = canvas
    workers.start("w1")
    add, mul, xsum = app.tasks["c.add"], app.tasks["c.mul"], app.tasks["c.xsum"]
    assert chain(add.s(4, 4), mul.s(8), mul.s(10))().get(timeout=60) == 640
    assert (add.s(2, 2) | mul.s(8))().get(timeout=60) == 32
    assert group(add.s(i, i) for i in range(10))().get(timeout=60) == [i + i for i in range(10)]
    assert chord((add.s(i, i) for i in range(10)), xsum.s())().get(timeout=60) == 90
    assert chain(group(add.s(i, i) for i in range(3)), xsum.s())().get(timeout=60) == 6
    assert add.starmap([(1, 2), (3, 4)])().get(timeout=60) == [3, 7]
    assert xsum.map([[1, 2], [3, 4]]).delay().get(timeout=60) == [3, 7]
    assert add.chunks(zip(range(7), range(7), strict=True), 3)().get(timeout=60) == [[0, 2, 4], [6, 8, 10], [12]]
    # nothing ran outside the registry: every add is a journaled job
    assert len([doc for doc in jobs_named(core4, "c.add") if doc["state"] == "complete"]) == 2 + 10 + 10 + 3 + 2 + 7
    muls = jobs_named(core4, "c.mul")
    assert sorted(doc["args"]["x"] for doc in muls) == [4, 8, 64]  # fed the previous result as first argument


def test_a_failed_member_fails_the_chord_and_the_rest_of_a_chain(canvas: Any) -> None:
    app, core4, workers = canvas
    workers.start("w1")
    add, fail, xsum = app.tasks["c.add"], app.tasks["c.fail"], app.tasks["c.xsum"]
    result = chord([add.s(1, 1), fail.s(2)], xsum.s())()
    with pytest.raises(ChordError, match=r"c\.fail"):
        result.get(timeout=60)
    body = core4.get(next(str(doc["_id"]) for doc in jobs_named(core4, "c.xsum")))
    assert body["state"] == "error" and body.get("started_at") is None  # never ran
    rest = chain(add.s(1, 1), fail.s(), add.s(5), add.s(6))()
    with pytest.raises(DependencyFailed, match="ended error"):
        rest.get(timeout=60)
    with pytest.raises(ValueError, match="no good"):
        rest.parent.parent.get(timeout=60)
    assert rest.parent.state == "FAILURE"  # the step after the failure was abandoned too


def test_a_worker_killed_mid_chain_loses_nothing(canvas: Any) -> None:
    app, core4, workers = canvas
    first = workers.start("w1")
    slow, add = app.tasks["c.slow"], app.tasks["c.add"]
    result = chain(slow.s(1, 3.0), add.s(10), add.s(100))()
    running = wait_for(lambda: core4.connection.jobs.find_one({"name": "c.slow", "state": "running"}), 60,
                       what="the first step to run")
    first.kill9()
    workers.start("w2")
    assert result.get(timeout=120) == 111
    assert core4.get(str(running["_id"]))["trial"] == 2  # recovered and run again, then the chain went on


def test_dependency_waits_for_jobs_enqueued_earlier(canvas: Any) -> None:
    app, core4, workers = canvas
    workers.start("w1")
    awaited = core4.enqueue("c.slow", x=5, seconds=1.5)
    core4.dispatch()
    wait_for(lambda: core4.get(awaited)["state"] == "running", 60, what="the awaited job to run")
    waiting = core4.enqueue("c.hello", dependency=[awaited])  # linked after the awaited job's ticket went out
    assert core4.get(waiting)["state"] == "pending" and core4.get(waiting).get("blocked_at") is not None
    assert app.tasks["c.hello"].AsyncResult(waiting).get(timeout=60) == "hello"
    assert core4.get(waiting)["started_at"] >= core4.get(awaited)["finished_at"]
    with pytest.raises(JobNotFound, match="dependency"):
        core4.enqueue("c.add", x=1, y=2, dependency=["5f0000000000000000000000"])
    failed = app.tasks["c.fail"].delay(1)
    with pytest.raises(ValueError):
        failed.get(timeout=60)
    with pytest.raises(DependencyFailed, match="ended error"):
        app.tasks["c.add"].apply_async((1, 2), dependency=[failed.id])
    assert core4.connection.jobs.count_documents({"name": "c.add"}) == 0  # nothing half-written


def test_max_parallel_holds_for_every_member_of_a_group(canvas: Any) -> None:
    app, core4, workers = canvas
    workers.start("w1")
    workers.start("w2")
    slow = app.tasks["c.slow"]  # max_parallel=2, four worker slots
    assert group(slow.s(i, 0.6) for i in range(6))().get(timeout=120) == list(range(6))
    runs = sorted((doc["started_at"], doc["finished_at"]) for doc in jobs_named(core4, "c.slow"))
    for started, _ in runs:
        at_once = sum(1 for other_start, other_end in runs if other_start <= started < other_end)
        assert at_once <= 2


def test_group_results_are_saved_and_restored(canvas: Any) -> None:
    app, _, workers = canvas
    workers.start("w1")
    result = group(app.tasks["c.add"].s(i, 1) for i in range(3))()
    result.save()
    restored = GroupResult.restore(result.id, app=app)
    assert restored is not None and restored.get(timeout=60) == [1, 2, 3]
