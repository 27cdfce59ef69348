"""Eager runs (``task.apply()``, ``task_always_eager``) on the in-memory stand-in, without a server.

The app's MongoDB URL points at a closed port with a short server selection
timeout: anything that tried to reach the registry would fail these tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, chain
from celery.exceptions import Retry
from celery.result import EagerResult

from core4celery import Core4, Core4Error, Core4Task, InvalidArguments, InvalidOption, JobDeferred, JobExists
from core4celery import eager as eager_module

CLOSED = "mongodb://127.0.0.1:9/eager_unit?serverSelectionTimeoutMS=200&connectTimeoutMS=200"

app = Celery("eagerunit", broker=CLOSED, set_as_current=False)
app.conf.core4celery_mongodb_url = CLOSED
core4 = Core4(app)
calls: list[dict[str, Any]] = []


class Flaky(Exception):
    pass


@app.task(base=Core4Task, bind=True, shared=False, name="e.square", author="test")
def square(self: Core4Task, n: int) -> int:
    calls.append({"job_id": self.job_id, "trial": self.trial, "request_id": self.request.id})
    return n * n


@app.task(base=Core4Task, bind=True, shared=False, name="e.div", author="test")
def div(self: Core4Task, a: float, b: float) -> float:
    return a / b


@app.task(base=Core4Task, bind=True, shared=False, name="e.steps", author="test", progress_interval=60)
def steps(self: Core4Task, count: int) -> int:
    for step in range(count):
        self.progress(step / count, f"step {step}")
    self.update_state(state="PROGRESS", meta={"current": count, "total": count, "message": "done"})
    return count


@app.task(base=Core4Task, bind=True, shared=False, name="e.waiting", author="test")
def waiting(self: Core4Task, ready: bool) -> str:
    if not ready:
        self.defer("not ready after %d trial(s)", self.trial)
    return "ready"


@app.task(base=Core4Task, bind=True, shared=False, name="e.flaky", author="test", attempts=3)
def flaky(self: Core4Task, fail_until: int) -> int:
    calls.append({"trial": self.trial, "retries": self.request.retries})
    if self.trial < fail_until:
        raise Flaky(f"trial {self.trial}")
    return self.trial


@app.task(base=Core4Task, bind=True, shared=False, name="e.retrying", author="test", max_retries=1)
def retrying(self: Core4Task, tag: str) -> str:
    calls.append({"trial": self.trial})
    raise self.retry(exc=Flaky(tag), countdown=30)


@app.task(base=Core4Task, bind=True, shared=False, name="e.auto", author="test", autoretry_for=(Flaky,),
          retry_kwargs={"max_retries": 2}, retry_backoff=True)
def auto(self: Core4Task, succeed_on: int) -> int:
    calls.append({"trial": self.trial})
    if self.trial < succeed_on:
        raise Flaky(f"trial {self.trial}")
    return self.trial


@app.task(base=Core4Task, bind=True, shared=False, name="e.mother", author="test")
def mother(self: Core4Task, count: int) -> list[dict[str, Any]]:
    for n in range(count):
        self.enqueue(square, n=n, priority=3)
    return [{"name": c["name"], "args": c["args"], "state": c["state"], "mid": c["mid"]} for c in self.children()]


@app.task(base=Core4Task, bind=True, shared=False, name="e.twins", author="test")
def twins(self: Core4Task) -> None:
    self.enqueue(square, n=1)
    self.enqueue("e.square", n=1)


@app.task(base=Core4Task, bind=True, shared=False, name="e.bad_child", author="test")
def bad_child(self: Core4Task) -> None:
    self.enqueue(square, n=1, max_parallel=0)


@app.task(base=Core4Task, bind=True, shared=False, name="e.unstorable", author="test")
def unstorable(self: Core4Task) -> Any:
    return {1, 2}


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    calls.clear()
    yield
    app.conf.task_always_eager = False
    app.conf.task_eager_propagates = False
    assert not eager_module._handed, "a run handed to the tracer was left behind"


def test_apply_runs_the_body_and_returns_celerys_eager_result() -> None:
    result = square.apply(args=(7,))
    assert isinstance(result, EagerResult)
    assert (result.state, result.get(), result.successful()) == ("SUCCESS", 49, True)
    assert calls == [{"job_id": result.id, "trial": 1, "request_id": result.id}]
    assert result.job.doc["state"] == "complete" and result.job.doc["result"] == 49
    assert result.job.doc["args"] == {"n": 7}  # positional arguments are named, as in the registry


def test_failure_is_failure_with_the_tasks_own_exception_and_get_propagates() -> None:
    result = div.apply(kwargs={"a": 1, "b": 0})
    assert result.state == "FAILURE" and result.failed()
    assert isinstance(result.result, ZeroDivisionError) and result.traceback
    with pytest.raises(ZeroDivisionError):
        result.get()
    assert isinstance(result.get(propagate=False), ZeroDivisionError)
    assert result.job.doc["state"] == "error"
    assert result.job.doc["last_error"]["exc_type"] == "ZeroDivisionError"


def test_throw_and_task_eager_propagates_raise_as_in_celery() -> None:
    with pytest.raises(ZeroDivisionError):
        div.apply(kwargs={"a": 1, "b": 0}, throw=True)
    app.conf.task_eager_propagates = True
    with pytest.raises(ZeroDivisionError):
        div.apply(kwargs={"a": 1, "b": 0})
    assert div.apply(kwargs={"a": 1, "b": 0}, throw=False).state == "FAILURE"


def test_progress_and_update_state_are_recorded_unthrottled() -> None:
    result = steps.apply(kwargs={"count": 3})
    assert result.get() == 3
    assert result.job.reports == [(0.0, "step 0"), (1 / 3, "step 1"), (2 / 3, "step 2"), (1.0, "done")]
    assert result.job.doc["prog"] == {"value": 1.0, "message": "done"}


def test_a_bad_progress_value_fails_the_run_as_on_a_worker() -> None:
    @app.task(base=Core4Task, bind=True, shared=False, name="e.overshoot", author="test")
    def overshoot(self: Core4Task) -> None:
        self.progress(1.5)

    result = overshoot.apply()
    assert result.state == "FAILURE" and isinstance(result.result, InvalidArguments)
    assert "[0, 1]" in str(result.result)


def test_defer_ends_the_run_in_retry_carrying_the_signal() -> None:
    result = waiting.apply(kwargs={"ready": False})
    assert result.state == "RETRY" and not result.successful() and not result.failed()
    assert isinstance(result.result, JobDeferred) and result.result.message == "not ready after 1 trial(s)"
    assert result.get() is None  # Celery's get() of an eager result that is not ready
    assert result.job.doc["state"] == "deferred" and result.job.trial == 1
    assert waiting.apply(kwargs={"ready": True}).get() == "ready"


def test_defer_with_propagation_raises_celerys_retry() -> None:
    with pytest.raises(Retry) as raised:
        waiting.apply(kwargs={"ready": False}, throw=True)
    assert isinstance(raised.value.exc, JobDeferred)


def test_an_exception_uses_an_attempt_and_the_body_runs_again() -> None:
    result = flaky.apply(kwargs={"fail_until": 3})
    assert (result.state, result.get()) == ("SUCCESS", 3)
    assert calls == [{"trial": 1, "retries": 0}, {"trial": 2, "retries": 1}, {"trial": 3, "retries": 2}]
    assert result.job.doc["attempts_left"] == 1

    calls.clear()
    result = flaky.apply(kwargs={"fail_until": 9})
    assert result.state == "FAILURE" and str(result.result) == "trial 3"
    assert len(calls) == 3 and result.job.doc["state"] == "error" and result.job.doc["attempts_left"] == 0


def test_self_retry_runs_again_up_to_max_retries_then_fails_with_exc() -> None:
    result = retrying.apply(kwargs={"tag": "gone"})
    assert calls == [{"trial": 1}, {"trial": 2}]  # max_retries=1: two attempts
    assert result.state == "FAILURE" and isinstance(result.result, Flaky) and str(result.result) == "gone"


def test_autoretry_for_runs_again() -> None:
    assert auto.apply(kwargs={"succeed_on": 3}).get() == 3
    assert calls == [{"trial": 1}, {"trial": 2}, {"trial": 3}]
    calls.clear()
    assert auto.apply(kwargs={"succeed_on": 4}).state == "FAILURE"
    assert len(calls) == 3


def test_enqueue_records_children_shaped_like_job_documents() -> None:
    result = mother.apply(kwargs={"count": 2})
    job_id = result.id
    assert result.get() == [
        {"name": "e.square", "args": {"n": 0}, "state": "pending", "mid": job_id},
        {"name": "e.square", "args": {"n": 1}, "state": "pending", "mid": job_id},
    ]
    assert [child["priority"] for child in result.job.enqueued] == [3, 3]  # the override, checked and kept
    assert calls == []  # without task_always_eager a child waits, as it would for a worker


def test_under_always_eager_a_child_runs_at_once_and_leaves_children() -> None:
    app.conf.task_always_eager = True
    result = mother.delay(count=2)
    assert result.get() == []  # complete children move to the journal: children() no longer lists them
    assert [(c["args"], c["state"]) for c in result.job.enqueued] == [({"n": 0}, "complete"), ({"n": 1}, "complete")]
    assert [call["trial"] for call in calls] == [1, 1]


def test_a_second_live_child_with_the_same_arguments_is_refused() -> None:
    result = twins.apply()
    assert result.state == "FAILURE" and isinstance(result.result, JobExists)
    assert result.result.job_id == str(result.job.enqueued[0]["_id"])


def test_a_child_is_checked_as_enqueue_checks_it() -> None:
    result = bad_child.apply()
    with pytest.raises(InvalidOption) as production:  # refused before any write
        core4.enqueue_child("0" * 24, square, n=1, max_parallel=0)
    assert isinstance(result.result, InvalidOption) and str(result.result) == str(production.value)


def test_a_result_that_is_not_json_fails_the_run() -> None:
    result = unstorable.apply()
    assert result.state == "FAILURE" and isinstance(result.result, InvalidArguments)


BAD_CALLS = [
    pytest.param((), {"n": 1, "m": 2}, {}, id="unknown argument"),
    pytest.param((), {}, {}, id="missing argument"),
    pytest.param((object(),), {}, {}, id="not JSON"),
    pytest.param(((1, 2),), {}, {}, id="tuple changes in a round trip"),
    pytest.param((math.nan,), {}, {}, id="NaN"),
    pytest.param((2**70,), {}, {}, id="int over 8 bytes"),
    pytest.param(({"$set": 1},), {}, {}, id="key with $"),
    pytest.param(("x" * (17 * 1024 * 1024),), {}, {}, id="too large"),
    pytest.param((1,), {}, {"priority": "high"}, id="priority not an int"),
    pytest.param((1,), {}, {"countdown": -1}, id="negative countdown"),
    pytest.param((1,), {}, {"queue": ""}, id="empty queue"),
    pytest.param("12", {}, {}, id="args not a list"),
]


@pytest.mark.parametrize(("args", "kwargs", "options"), BAD_CALLS)
def test_arguments_are_refused_with_the_same_error_as_a_real_enqueue(args: Any, kwargs: Any,
                                                                       options: dict[str, Any]) -> None:
    """The real enqueue (apply_async without eager mode) refuses these before any write, so both run here."""
    with pytest.raises(Core4Error) as production:
        square.apply_async(args, kwargs, **options)
    with pytest.raises(Core4Error) as applied:
        square.apply(args, kwargs, **options)
    app.conf.task_always_eager = True
    with pytest.raises(Core4Error) as always:
        square.apply_async(args, kwargs, **options)
    assert type(applied.value) is type(production.value) is type(always.value)
    assert str(applied.value) == str(production.value) == str(always.value)
    assert calls == []


def test_always_eager_delay_returns_an_eager_result() -> None:
    app.conf.task_always_eager = True
    result = square.delay(4)
    assert isinstance(result, EagerResult) and result.get() == 16
    assert square.apply_async(kwargs={"n": 5}, priority=2, countdown=10).get() == 25


def test_calling_options_production_refuses_are_refused_under_always_eager() -> None:
    app.conf.task_always_eager = True
    with pytest.raises(InvalidArguments, match="not supported"):
        square.apply_async((1,), expires=10)


def test_celery_docs_style_eager_test() -> None:
    """As Celery's docs set it up: always eager, exceptions propagated, results read with get()."""
    app.conf.update(task_always_eager=True, task_eager_propagates=True)
    result = div.delay(8, 2)
    assert result.successful() and result.get() == 4.0
    with pytest.raises(ZeroDivisionError):
        div.delay(1, 0)


def test_eager_canvas_goes_through_apply() -> None:
    assert chain(square.s(2), square.s()).apply().get() == 16


def test_a_direct_call_is_plain_python_and_retry_raises_the_exception_as_in_celery() -> None:
    assert square(3) == 9
    assert calls[0]["job_id"] is None
    with pytest.raises(Flaky, match="direct"):
        retrying("direct")


def test_no_eager_path_touches_mongodb() -> None:
    """The URL's port is closed: any connection attempt would raise after 200 ms; none is even built."""
    started = time.monotonic()
    app.conf.task_always_eager = True
    for _ in range(5):
        assert mother.delay(count=3).state == "SUCCESS"
        assert flaky.apply(kwargs={"fail_until": 2}).get() == 2
        assert waiting.apply(kwargs={"ready": False}).state == "RETRY"
    assert time.monotonic() - started < 2.0
    assert not {"settings", "connection", "store", "dispatcher"} & set(core4.__dict__)


def test_an_eager_run_has_an_in_memory_cookie_with_the_registrys_checks() -> None:
    app = Celery("eager-cookie", broker="mongodb://127.0.0.1:1/unit?serverSelectionTimeoutMS=200")
    Core4(app)

    @app.task(base=Core4Task, bind=True, shared=False, name="u.cookie", author="t")
    def counting(self: Core4Task) -> Any:
        self.cookie.set("since", "2026-01-01")
        return [self.cookie.inc("runs"), self.cookie.get("since"), "since" in self.cookie]

    assert tuple(counting.apply().get()) == (1, "2026-01-01", True)
    assert tuple(counting.apply().get()) == (1, "2026-01-01", True)  # each eager run starts afresh

    @app.task(base=Core4Task, bind=True, shared=False, name="u.bad_cookie", author="t")
    def bad(self: Core4Task) -> None:
        self.cookie.set("a.b", 1)

    with pytest.raises(InvalidArguments, match="may not contain"):
        bad.apply().get()
