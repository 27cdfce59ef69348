"""Bad input is refused at the call site and writes nothing."""

from __future__ import annotations

import pytest

from core4celery import InvalidArguments, UnknownTask
from tests.integration.conftest import Cluster


def assert_nothing_written(cluster: Cluster) -> None:
    assert cluster.core4.connection.jobs.count_documents({}) == 0
    assert cluster.core4.connection.db["messages"].count_documents({}) == 0


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda c: c.core4.enqueue("t.record", tag=object()), InvalidArguments, "JSON"),
        (lambda c: c.app.tasks["t.record"].delay(tag=(1, 2)), InvalidArguments, "round trip"),
        (lambda c: c.core4.enqueue("t.nope"), UnknownTask, "t.nope"),
        (lambda c: c.core4.enqueue("t.record"), InvalidArguments, "missing a required argument"),
        (lambda c: c.core4.enqueue("t.record", tag="x", colour=1), InvalidArguments, "unexpected keyword"),
        (lambda c: c.core4.enqueue("t.record", tag="x", attempts=0), ValueError, "attempts"),
        (lambda c: c.app.tasks["t.record"].apply_async(kwargs={"tag": "x"}, link="y"), InvalidArguments,
         "link: 'y' \\(str\\) is not a signature"),
        (lambda c: c.app.tasks["t.record"].apply_async(kwargs={"tag": "x"}, link_error="y"), InvalidArguments,
         "not supported"),
        (lambda c: c.app.tasks["t.record"].apply_async(kwargs={"tag": "x"}, countdown=-1), InvalidArguments,
         "countdown"),
    ],
)
def test_refused_and_nothing_written(cluster: Cluster, call, error, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=message):
        call(cluster)
    assert_nothing_written(cluster)


def test_plain_celery_tasks_are_untouched(cluster: Cluster) -> None:
    """A plain task beside core4 tasks keeps Celery's own publish path and result backend."""
    cluster.worker()
    plain = cluster.app.tasks["t.plain_add"]
    result = plain.delay(2, 3)
    assert result.get(timeout=60) == 5
    assert cluster.core4.connection.jobs.count_documents({}) == 0
    assert cluster.core4.connection.journal.count_documents({}) == 0
    assert cluster.core4.connection.db["celery_taskmeta"].count_documents({"_id": result.id}) == 1
    core4_result = cluster.app.tasks["t.square"].delay(4)
    assert core4_result.get(timeout=60) == 16
    assert cluster.core4.connection.db["celery_taskmeta"].count_documents({"_id": core4_result.id}) == 0


STRAY = [
    ({"queue": "celery"}, "no payload"),
    ({"queue": "celery", "payload": "this is not JSON"}, "not JSON"),
    ({"queue": "celery", "payload": 42}, "not JSON text"),
    ({"queue": "celery", "payload": '"a JSON string"'}, "not a kombu message"),
    ({"queue": "celery", "payload": '{"body": "x", "properties": {}}'}, "no delivery_tag"),
]


def test_unreadable_broker_messages_are_moved_aside_and_the_worker_goes_on(cluster: Cluster) -> None:
    """kombu's transport raised inside the consumer, and Celery stopped the worker ("Unrecoverable error")."""
    broker = cluster.core4.connection.db
    broker["messages"].insert_many([dict(doc, priority=0) for doc, _ in STRAY])
    worker = cluster.worker(concurrency=1)
    assert cluster.core4.AsyncResult(cluster.core4.enqueue("t.square", n=5)).get(timeout=60) == 25
    reasons = [str(doc["reason"]) for doc in broker["messages.rejected"].find()]
    assert len(reasons) == len(STRAY)
    for _, expected in STRAY:
        assert sum(expected in reason for reason in reasons) >= 1, (expected, reasons)
    assert broker["messages"].count_documents({"queue": "celery"}) == 0
    assert worker.proc is not None and worker.proc.poll() is None  # still running
    assert "Unrecoverable error" not in worker.output()
    assert worker.output().count("moved unreadable message") == len(STRAY)

