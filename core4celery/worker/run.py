"""One execution (trial) of a job inside a worker process.

The run decides which ending its job gets; the job store writes it. Every
ending is guarded by the run token written at start, so a run that lost its
lease (its job was recovered and started elsewhere) never overwrites the newer
run's outcome. A result the server could not store ends the run as the job's
failure, named, before any write is attempted.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from functools import partial
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from celery.exceptions import Ignore, Retry
from celery.utils.log import get_task_logger

from ..clock import later, now
from ..errors import InvalidArguments, RegistryUnavailable
from ..events import JobEvents
from ..metrics import code_path
from ..signals import JobDeferred, JobRetry
from ..store.connection import as_object_id
from ..store.document import Run
from ..store.jobs import JobStore
from ..store.slots import Holder
from ..store.states import State
from ..store.values import check_json, check_storable
from ..transport import IDLE_AFTER

if TYPE_CHECKING:
    from .jobdata import JobData

log = get_task_logger("core4celery.job")


def exception_fields(exc: BaseException) -> dict[str, Any]:
    """Celery's JSON exception protocol (type, module, arguments), so ``get()`` can raise the task's own type."""
    args: Any = list(exc.args)
    try:
        check_json(args, "exception arguments")
    except InvalidArguments:
        args = [str(exc)]
    return {"exc_type": type(exc).__qualname__, "exc_module": type(exc).__module__, "exc_args": args}


def check_progress(value: Any, message: Any) -> None:
    """What ``self.progress()`` accepts, worker or eager run alike."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InvalidArguments(f"progress value must be a number in [0, 1], got {value!r}")
    if message is not None:
        if not isinstance(message, str):
            raise InvalidArguments(f"progress message must be a str, got {type(message).__name__}")
        check_storable(message, "progress message")


class JobRun:
    def __init__(self, store: JobStore, events: JobEvents, job_id: str, name: str, worker_id: str, hostname: str,
                 run_lease: float, after_end: Callable[[Holder, bool], object],
                 settle: Callable[[Collection[ObjectId]], object] = lambda ids: 0,
                 data: JobData | None = None, loggers: tuple[str, ...] = (),
                 wake: Callable[[str], object] = lambda mid: False) -> None:
        """``data``: where the run's logs, stdout and cookie go (None: nothing is captured);
        ``loggers``: the job's own logger names."""
        self._store = store
        self._events = events
        self.oid = as_object_id(job_id)
        self.job_id = str(self.oid)
        self.name = name
        self._worker_id = worker_id
        self._hostname = hostname
        self._run_lease = run_lease
        self._after_end = after_end
        self._settle = settle
        self._wake = wake
        self._data = data
        self._loggers = loggers
        self.run: Run | None = None
        self.uses_cookie = False  # set by Core4Task.cookie: only such runs write last_runtime
        self._ended_at = now()  # when the body returned or raised: the ending's time
        self._final = False  # the ending written was final (complete, error): the mother may be waiting for it
        self._next_progress = 0.0

    @property
    def trial(self) -> int:
        return self.run.trial if self.run else 0

    def start(self, ticket: Mapping[str, Any] | None) -> bool:
        """dispatched → running; False when the ticket is stale or a duplicate."""
        stamp = now()
        locked = {
            "worker": self._worker_id, "hostname": self._hostname, "pid": os.getpid(), "run": ObjectId(),
            "at": stamp, "heartbeat": stamp, "lease_until": later(self._run_lease, stamp),
        }
        with code_path("start"):
            self.run = self._store.start(self.oid, self.name, locked, ticket)
        if self.run is None:
            return False
        log.info("start execution of %s [%s] trial %d", self.name, self.job_id, self.trial)
        return True

    def execute(self, body: Callable[..., Any], arguments: dict[str, Any], ticket: Mapping[str, Any] | None) -> Any:
        """``arguments`` are the ticket's; the start's guard proves they are the job's."""
        if not self.start(ticket):
            raise Ignore()
        if self._run.args is not None:
            arguments = self._run.args
        with self._captured() as capture:
            ending, result = self._body(body, arguments)
            self._ended_at = now()
            self._hand_over()  # before the run's logs are stored and its ending written: see _ending
            capture.failed = ending.func == self._fail  # the debug trail is kept for a failure
        self._ending(ending)
        return result

    def _captured(self) -> AbstractContextManager[Any]:
        """The run's logs and stdout are captured around its body and stored before its ending is written,
        so whoever sees the job ended finds them complete."""
        if self._data is None:
            return nullcontext(SimpleNamespace(failed=False))
        return self._data.capture(self.oid, self.trial, self._hostname, self._loggers)

    def _body(self, body: Callable[..., Any], arguments: dict[str, Any]) -> tuple[partial[None], Any]:
        """The ending the body asks for, and its result."""
        try:
            result = body(**arguments)
            check_json(result, "result")
        except JobDeferred as signal:
            return partial(self._defer, signal), None
        except JobRetry as signal:
            cause = signal.exc if signal.exc is not None else RuntimeError("retry() requested without an exception")
            return partial(self._fail, cause, signal.countdown), None
        except Exception as exc:
            return partial(self._fail, exc), None
        return partial(self._complete, result), result

    def _ending(self, write: Callable[[], None]) -> None:
        """The slots were handed on first (in :meth:`execute`): the next job's ticket is on its way
        while this ending is written.

        The body is over, so the next job never runs beside it; the ending's time
        is the body's end (``finished_at`` precedes the next job's start). A run
        that lost its job (recovered, killed) hands nothing on: its claim token no
        longer guards the slots, so the transfer is refused. An ending that cannot
        be written within outage_timeout is left to lease recovery (at least once,
        as for a run that died right before its write).
        """
        try:
            with code_path("finish"):
                write()
        except RegistryUnavailable as exc:
            log.error("job %s: could not record the end of its run (%s); it is recovered after its lease",
                      self.job_id, exc)
            raise Ignore() from None
        except Ignore:
            raise
        except BaseException:  # Retry (deferred, failed) or the job's exception (error): the ending was written
            self._wake_mother()
            raise
        self._wake_mother()

    def _hand_over(self) -> None:
        run = self._run
        long_run = (now() - run.started_at).total_seconds() >= IDLE_AFTER / 2  # its consumer may be asleep
        self._after_end(Holder(job_id=run.job_id, name=run.name, queue=run.queue, limit=run.max_parallel,
                               token=run.slot), long_run)

    @property
    def _run(self) -> Run:
        assert self.run is not None, "a run ends only after it started"
        return self.run

    def _seconds(self, stamp: datetime) -> int:
        return int((stamp - self._run.started_at).total_seconds())

    def _complete(self, result: Any) -> None:
        stamp = self._ended_at
        if not self._store.complete(self._run, result, stamp):
            log.warning("job %s lost its lease before completing; result dropped", self.job_id)
            raise Ignore()
        self._final = True
        log.info("done execution with [complete] after [%d] sec.", self._seconds(stamp))
        if self._data is not None and self.uses_cookie:  # a job that never reads its cookie pays no write
            self._data.completed(self.name, stamp)
        self._release_successors()

    def _defer(self, signal: JobDeferred) -> None:
        stamp = self._ended_at
        query_at = self._store.defer(self._run, stamp, signal.message)
        if query_at is None:
            raise Ignore()
        log.info("done execution with [deferred] after [%d] sec.: %s", self._seconds(stamp), signal.message)
        raise Retry(f"deferred: {signal.message}", when=query_at)

    def _fail(self, exc: BaseException, delay: float | None = None) -> None:
        """``delay``: seconds until the next trial instead of ``error_time`` (a retry's countdown)."""
        stamp = self._ended_at
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        error = {"exception": repr(exc), "traceback": lines, "at": stamp, **exception_fields(exc)}
        state = self._store.fail(self._run, error, stamp, delay)
        if state is None:
            raise Ignore()
        left = self._run.attempts_left - 1
        # core4's line; a failure that will be retried is a warning, the last one critical (as in core4)
        log.log(logging.WARNING if state is State.FAILED else logging.CRITICAL,
                "done execution with [%s] after [%d] sec. and [%d] attempts to go: %r",
                state, self._seconds(stamp), left, exc)
        if state is State.FAILED:
            raise Retry(exc=exc, when=later(self._run.error_time if delay is None else delay, stamp))
        self._final = True
        self._release_successors()
        raise exc

    def _release_successors(self) -> None:
        """Jobs waiting for this one are released (or abandoned) now; a sweep would do it within seconds."""
        successors = self._run.successors
        if not successors:
            return
        try:
            with code_path("finish"):
                self._settle(successors)
        except Exception as exc:  # the ending is written: the sweep settles them instead
            log.warning("job %s: could not settle the jobs waiting for it (%r); a sweep will", self.job_id, exc)

    def _wake_mother(self) -> None:
        """After the hand-over (the next job starts first): a mother deferred until her children end
        runs now, not after her defer_time (:meth:`JobStore.wake_mother`)."""
        mid = self._run.mid
        if not self._final or not mid:
            return
        try:
            with code_path("finish"):
                self._wake(mid)
        except Exception as exc:  # the mother runs after her defer_time as in core4
            log.warning("job %s: could not wake its mother %s (%r)", self.job_id, mid, exc)

    def progress(self, value: float, message: str | None, force: bool) -> bool:
        """Throttled by progress_interval; doubles as the job's heartbeat."""
        check_progress(value, message)
        clock = time.monotonic()
        if not force and clock < self._next_progress:
            return False
        self._next_progress = clock + self._run.progress_interval
        with code_path("progress"):
            self._store.progress(self._run, value, message)
        log.debug("progress [%d%%] - %s", round(value * 100), message or "")
        self._events.send("progress", self.oid, progress=float(value),
                          result=f"{value:.0%} {message or ''}".rstrip())
        return True
