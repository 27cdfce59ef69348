"""An idle worker waits for wake-ups instead of polling; every way a ticket can reach it rings.

The worker here waits up to 30 s between polls once its consumer has been idle
for ``IDLE_AFTER``: a ticket published without a ring would sit there for up to
30 s, and each test allows a few. The precondition is idleness itself, so the
tests let the worker sit idle for a moment before publishing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from core4celery.transport import IDLE_AFTER
from tests.workers import WorkerProcess

from .conftest import Cluster

IDLE_WAIT = 30.0
PROMPT = 5.0  # seconds: far below IDLE_WAIT, far above a poll


@pytest.fixture
def sleeper(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerProcess]:
    monkeypatch.setenv("TEST_IDLE_WAIT", str(IDLE_WAIT))
    worker = cluster.worker("sleeper", concurrency=1)
    yield worker


def sit_idle() -> None:
    time.sleep(2 * IDLE_AFTER)  # the condition under test: a consumer idle long enough to wait for wake-ups


def seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


def test_a_job_enqueued_for_an_idle_worker_starts_at_once(cluster: Cluster, sleeper: WorkerProcess) -> None:
    sit_idle()
    job_id = cluster.core4.enqueue("t.square", n=3)
    done = cluster.wait_journaled(job_id, timeout=PROMPT)
    assert done["result"] == 9
    assert seconds(done["started_at"], done["enqueued"]["at"]) < PROMPT


def test_a_pinned_job_reaches_its_idle_worker_at_once(cluster: Cluster, sleeper: WorkerProcess) -> None:
    """Its ticket goes to the worker's own queue, which the worker polls seldom: the ring polls it."""
    sit_idle()
    job_id = cluster.core4.enqueue("t.square", n=4, worker=f"{sleeper.name}@*")
    done = cluster.wait_journaled(job_id, timeout=PROMPT)
    assert done["result"] == 16
    assert seconds(done["started_at"], done["enqueued"]["at"]) < PROMPT


def test_a_plain_celery_task_reaches_an_idle_worker_at_once(cluster: Cluster, sleeper: WorkerProcess) -> None:
    sit_idle()
    assert cluster.app.tasks["t.plain_add"].delay(2, 3).get(timeout=PROMPT) == 5


def test_the_slot_of_a_long_run_goes_to_the_waiting_job_at_once(cluster: Cluster, sleeper: WorkerProcess) -> None:
    """The worker's consumer idles while its only slot runs a long job; the hand-over must wake it."""
    sit_idle()
    first = cluster.core4.enqueue("t.record", tag="long", seconds=2 * IDLE_AFTER)
    cluster.wait_state(first, "running", timeout=PROMPT)
    second = cluster.core4.enqueue("t.square", n=4)
    long_run = cluster.wait_journaled(first, timeout=PROMPT + 2 * IDLE_AFTER)
    done = cluster.wait_journaled(second, timeout=PROMPT)
    assert seconds(done["started_at"], long_run["finished_at"]) < PROMPT


def test_a_short_run_hands_its_slot_to_a_job_of_another_queue_at_once(cluster: Cluster,
                                                                      sleeper: WorkerProcess) -> None:
    """The finished run was short (no ring for its own consumer, a nudge does) and the next job of its
    class is for a queue only the idle sleeper consumes: the hand-over must ring."""
    cluster.worker("other", concurrency=1, extra=("-Q", "other"))
    sit_idle()
    task = cluster.app.tasks["t.record"]
    single = {"max_parallel": 1}
    short = cluster.core4.submit(task, {"tag": "short", "seconds": 0.2}, options=single, queue="other")
    waiting = cluster.core4.submit(task, {"tag": "next"}, options=single)
    first = cluster.wait_journaled(short, timeout=PROMPT)
    done = cluster.wait_journaled(waiting, timeout=PROMPT)
    ran_on = {row["tag"]: row["worker"] for row in cluster.trace.find({"job": {"$in": [short, waiting]}})}
    assert ran_on["short"] != ran_on["next"]  # the sleeper took the handed-over ticket
    # measured: 0.08 s with the ring, 4.5 s without (until something else happened to wake the sleeper)
    assert seconds(done["started_at"], first["finished_at"]) < 2 * IDLE_AFTER


def test_a_job_due_later_starts_when_due(cluster: Cluster, sleeper: WorkerProcess) -> None:
    sit_idle()
    job_id = cluster.app.tasks["t.square"].apply_async(kwargs={"n": 5}, countdown=2 * IDLE_AFTER).id
    done = cluster.wait_journaled(job_id, timeout=PROMPT + 2 * IDLE_AFTER)
    assert seconds(done["started_at"], done["enqueued"]["at"]) < PROMPT + 2 * IDLE_AFTER
