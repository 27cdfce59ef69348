"""Eager runs: ``task.apply()`` and ``task_always_eager`` run a core4 job's body in this process.

What a user wants in a unit test is the job's own code without a server, so an
eager run works on an in-memory stand-in of its job (:class:`EagerRun`) and
never touches MongoDB. Arguments and options first get every check a real
enqueue makes (:meth:`Core4.job_document`), so a test is refused what
production would refuse; then Celery's own eager tracer runs the body and
returns its ``EagerResult``. How each ending maps:

- the body returns: SUCCESS with the value (a value that is not JSON fails the run, as on a worker);
- an exception, ``self.retry()`` or ``autoretry_for``: the body runs again at once, trial + 1, while the
  job has attempts left (a worker would wait ``error_time`` or the countdown), then FAILURE with it;
- ``self.defer(msg)``: the run ends, RETRY (the state the registry backend reports for a deferred job)
  with the :class:`JobDeferred` signal as the result; an eager run never comes back by itself.

Job options that act on a cluster (``max_parallel``, priority, ``defer_time``,
timeouts) are validated and recorded in the stand-in's document, nothing more.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from celery import states
from celery.app.task import Context, Task
from celery.exceptions import Retry
from celery.result import EagerResult

from .clock import now
from .config.numbers import check_number
from .errors import InvalidArguments, JobExists
from .signals import JobDeferred, JobRetry
from .store.cookies import check_key
from .store.document import JobDoc
from .store.states import State
from .store.values import check_json
from .worker.run import check_progress, exception_fields

if TYPE_CHECKING:
    from .task import Core4Task

log = logging.getLogger(__name__)

# calling options that are the job's (its first due time, its queue), not Celery's apply's
CALL_ONLY = ("countdown", "eta", "queue")

# runs handed to Celery's tracer, by task id, until the tracer calls the task with that request
_handed: dict[str, EagerRun] = {}


class MemoryCookie:
    """``self.cookie`` of an eager run: the registry cookie's API and checks, kept in a dict."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.values: dict[str, Any] = {}

    def _key(self, key: Any) -> str:
        return check_key(key, self.name)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(self._key(key), default)

    def has_key(self, key: str) -> bool:
        return self._key(key) in self.values

    __contains__ = has_key

    def set(self, *pair: Any, **values: Any) -> None:
        if pair and len(pair) != 2:
            raise InvalidArguments(f"cookie of {self.name}: set() takes a key and a value, or key=value pairs")
        items = {pair[0]: pair[1], **values} if pair else values
        for key, value in items.items():
            check_json(value, f"cookie of {self.name}: value of {self._key(key)!r}")
        self.values.update(items)

    def inc(self, key: str, by: float = 1) -> Any:
        check_number(f"cookie of {self.name}: inc() of {key!r} with", by, InvalidArguments)
        self.values[self._key(key)] = self.values.get(key, 0) + by
        return self.values[key]

    def dec(self, key: str, by: float = 1) -> Any:
        return self.inc(key, -by)

    def max(self, key: str, value: Any) -> Any:
        self.values[self._key(key)] = max(self.values.get(key, value), value)
        return self.values[key]

    def min(self, key: str, value: Any) -> Any:
        self.values[self._key(key)] = min(self.values.get(key, value), value)
        return self.values[key]

    def delete(self, key: str) -> bool:
        return self.values.pop(self._key(key), None) is not None


class EagerRun:
    """The in-memory job of one eager run: what the job-side API of ``Core4Task`` works on.

    ``doc`` is shaped like the job's registry document and follows it through
    its states; ``reports`` holds every progress report (value, message) and
    ``enqueued`` every child enqueued, whatever became of it. The
    ``EagerResult`` of the run carries it as ``result.job``.
    """

    def __init__(self, task: Core4Task, doc: JobDoc) -> None:
        self.task = task
        self.doc = doc
        self.reports: list[tuple[float, str | None]] = []
        self.enqueued: list[JobDoc] = []
        self.cookie = MemoryCookie(task.name)  # one per eager run: nothing persists between eager tests

    @property
    def job_id(self) -> str:
        return str(self.doc["_id"])

    @property
    def trial(self) -> int:
        return int(self.doc["trial"])

    @property
    def state(self) -> str:
        return str(self.doc["state"])

    # -- the job-side API --------------------------------------------------
    def progress(self, value: float, message: str | None, force: bool) -> bool:
        """Checked as a worker checks it; every report is recorded (no progress_interval throttle)."""
        check_progress(value, message)
        self.reports.append((float(value), message))
        self.doc["prog"] = {"value": float(value), "message": message}
        return True

    def enqueue(self, target: Task | str, kwargs: dict[str, Any]) -> str:
        """A child, checked as ``Core4.enqueue_child`` checks it; under ``task_always_eager`` it runs at once
        (as Celery runs ``.delay()`` inside an eager task), otherwise it stays pending."""
        core4 = self.task.core4
        found, arguments, options = core4.enqueue_arguments(target, dict(kwargs))
        doc = core4.job_document(found, arguments, options=options, mid=self.job_id)
        for child in self.enqueued:
            if child["args_hash"] == doc["args_hash"] and child["state"] != State.COMPLETE.value:
                raise JobExists(found.name, str(child["_id"]))
        self.enqueued.append(doc)
        log.info("%s [%s] enqueued child %s [%s]", self.task.name, self.job_id, found.name, doc["_id"])
        if self.task.app.conf.task_always_eager:
            run_document(found, doc, {})
        return str(doc["_id"])

    def children(self) -> list[JobDoc]:
        """Children that would still be live in the registry: a complete job moves to the journal."""
        return [child for child in self.enqueued if child["state"] != State.COMPLETE.value]

    # -- the run -----------------------------------------------------------
    def execute(self, body: Callable[..., Any]) -> Any:
        """Trials until one ends without an exception or the attempts are used up."""
        while True:
            self._set(State.RUNNING, trial=self.trial + 1, started_at=now(), finished_at=None)
            log.info("start eager execution of %s [%s] trial %d", self.task.name, self.job_id, self.trial)
            try:
                result = body(**json.loads(json.dumps(self.doc["args"])))  # fresh values, as from a ticket
                check_json(result, "result")
            except JobDeferred as signal:
                self._set(State.DEFERRED)
                log.info("eager run of %s [%s] deferred: %s", self.task.name, self.job_id, signal.message)
                raise Retry(f"deferred: {signal.message}", exc=signal, when=self.doc["defer_time"]) from None
            except JobRetry as signal:
                cause = signal.exc if signal.exc is not None else RuntimeError("retry() requested without an exception")
                if not self._failed(cause):
                    raise cause from None
            except Exception as exc:
                if not self._failed(exc):
                    raise
            else:
                self._set(State.COMPLETE, result=result)
                return result

    def _failed(self, exc: BaseException) -> bool:
        """Record the failure; True while attempts are left (the body runs again)."""
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        left = int(self.doc["attempts_left"]) - 1
        state = State.FAILED if left > 0 else State.ERROR
        self._set(state, attempts_left=left,
                  last_error={"exception": repr(exc), "traceback": lines, "at": now(), **exception_fields(exc)})
        log.log(logging.WARNING if left > 0 else logging.ERROR, "eager run of %s [%s] ended [%s] with %d attempts "
                "to go: %r", self.task.name, self.job_id, state, left, exc)
        return left > 0

    def _set(self, state: State, **fields: Any) -> None:
        if state is not State.RUNNING:
            fields.setdefault("finished_at", now())
        self.doc.update({"state": state.value, **fields})  # type: ignore[typeddict-item]


def apply_eagerly(task: Core4Task, args: Any, kwargs: Any, options: dict[str, Any]) -> EagerResult:
    """``task.apply()``: arguments and core4's calling options checked as an enqueue checks them; other
    options go to Celery's ``Task.apply``, which ignores those it does not know (as canvas passes them)."""
    if args is not None and not isinstance(args, (list, tuple)):
        raise InvalidArguments(f"{task.name}: args must be a list or tuple, got {args!r} ({type(args).__name__})")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise InvalidArguments(f"{task.name}: kwargs must be a dict, got {kwargs!r} ({type(kwargs).__name__})")
    arguments = task.bind_arguments(tuple(args or ()), dict(kwargs or {}))
    doc = task.core4.job_document(task, arguments, priority=options.get("priority"),
                                  countdown=options.get("countdown"), eta=options.get("eta"), queue=options.get("queue"))
    return run_document(task, doc, options)


def run_document(task: Core4Task, doc: JobDoc, options: dict[str, Any]) -> EagerResult:
    """Run a checked job through Celery's eager tracer (signals, ``throw``/``task_eager_propagates``)."""
    keywords = {key: value for key, value in options.items() if key not in CALL_ONLY}
    task_id = keywords.pop("task_id", None)
    if isinstance(task_id, str) and ObjectId.is_valid(task_id):
        doc["_id"] = ObjectId(task_id)  # a frozen signature's id names the job, as a worker's ticket does
    task_id = str(task_id or doc["_id"])
    run = EagerRun(task, doc)
    _handed[task_id] = run
    try:
        result = Task.apply(task, (), dict(doc["args"]), task_id=task_id, **keywords)
    finally:
        _handed.pop(task_id, None)
    deferral = result.result.exc if isinstance(result.result, Retry) else None
    if result.state == states.RETRY and isinstance(deferral, JobDeferred):
        result = EagerResult(task_id, deferral, states.RETRY, traceback=result.traceback, name=task.name)
    result.job = run
    return result


def call_eagerly(task: Core4Task, request: Context) -> Any:
    """The tracer's call of the task inside ``apply``: the body runs on the run handed over for its id."""
    run = _handed.pop(str(request.id), None)
    if run is None:
        raise InvalidArguments(f"{task.name}: an eager run of a core4 task starts with task.apply() or, with "
                               "task_always_eager, delay()/apply_async()")
    request.core4_run = run
    return run.execute(task.body)
