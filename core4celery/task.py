"""``Core4Task``: the Celery task base class that gives a task core4 semantics.

Options are plain class attributes (or ``@app.task(...)`` keywords, which
Celery turns into class attributes), validated when the class is created.
Calling ``delay``/``apply_async`` enqueues into the registry instead of
publishing directly; the dispatcher publishes the ticket when the job is due.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar

from bson import ObjectId
from celery import Task
from celery.result import AsyncResult
from celery.utils.log import get_task_logger

from .canvas import Plan, Tails, chunks_signature, map_signature
from .clock import now
from .config.cron import Cron, schedule_of
from .config.numbers import check_seconds
from .config.options import ENQUEUE_OPTIONS, JobOptions, check_author, option_hint, refuse_meaningless
from .errors import ConfigurationError, InvalidArguments, JobExists
from .signals import JobDeferred, JobRetry
from .store.document import TICKET_HEADER, Links
from .worker.run import JobRun

if TYPE_CHECKING:
    from .core import Core4
    from .eager import EagerRun, MemoryCookie
    from .store.cookies import Cookie
    from .store.document import JobDoc

log = logging.getLogger(__name__)

# Celery calling options that have a core4 meaning; anything else is refused
CALL_OPTIONS = ("priority", "countdown", "eta", "queue")
# what Celery's canvas passes a member (see core4celery.canvas); "dependency" is core4's
CANVAS_OPTIONS = ("task_id", "group_id", "chain", "chord", "link", "dependency")
# the canvas's bookkeeping for its own result messages: results are read from the registry instead
CANVAS_BOOKKEEPING = ("reply_to", "root_id", "parent_id", "group_index", "add_to_parent", "stamped_headers")
# how a message would travel: the ticket is published later by the dispatcher, so these say nothing here
# (celery beat passes a producer and headers on every tick)
TRANSPORT_OPTIONS = ("producer", "headers", "exchange", "routing_key", "serializer", *CANVAS_BOOKKEEPING)
BEAT_HEADERS = ("celery_beat_task", "periodic_task_name")  # celery beat's, django-celery-beat's


class Core4Task(Task):
    """Base class for core4 jobs: set ``base=Core4Task`` or subclass it.

    Subclasses that are only shared bases set ``abstract = True``; concrete
    tasks must name an ``author`` in their own definition (core4's rule).
    """

    abstract = True
    acks_late = True
    # a pool process that dies (crash or kill) must not be reported as the job's failure:
    # the registry decides (recovered or killed); the ticket is requeued and ignored
    reject_on_worker_lost = True
    typing = False
    author: ClassVar[str | None] = None
    attempts = JobOptions.attempts
    priority = JobOptions.priority
    max_parallel = JobOptions.max_parallel
    defer_time = JobOptions.defer_time
    defer_max = JobOptions.defer_max
    error_time = JobOptions.error_time
    zombie_time = JobOptions.zombie_time
    wall_time = JobOptions.wall_time
    progress_interval = JobOptions.progress_interval
    force = JobOptions.force
    core4_options: ClassVar[JobOptions] = JobOptions()
    schedule: ClassVar[str | None] = None  # cron (UTC); never inherited, as in core4
    core4_schedule: ClassVar[Cron | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract", False):
            return
        check_author(cls)
        refuse_meaningless(cls)
        try:
            cls.core4_options = JobOptions.from_class(cls)
            cls.core4_schedule = schedule_of(cls)
            cls.schedule = cls.core4_schedule.expression if cls.core4_schedule else None
        except ValueError as exc:
            name = cls.__dict__.get("name") or cls.__qualname__
            raise type(exc)(f"task {name}: {exc}") from None
        cls.time_limit = None  # the worker kills the run (see worker/node.py), not Celery's pool

    # -- Celery plumbing -------------------------------------------------
    @property
    def core4(self) -> Core4:
        core4 = getattr(self.app, "core4celery", None)
        if core4 is None:
            raise ConfigurationError(
                f"task {self.name}: its app has no core4celery handle; call Core4(app) before defining tasks"
            )
        return core4

    @property
    def backend(self) -> Any:
        return self.core4.backend

    @backend.setter
    def backend(self, value: Any) -> None:
        """Celery may assign a backend; core4 tasks always read the registry."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly or not request.id:
            return super().__call__(*args, **kwargs)  # a plain local call
        if request.is_eager:  # task.apply() or task_always_eager: an in-memory job (core4celery/eager.py)
            from .eager import call_eagerly
            return call_eagerly(self, request)
        core4 = self.core4
        if not ObjectId.is_valid(request.id):
            return self._adopt(request.id, args, kwargs)
        hostname = request.hostname or ""
        run = JobRun(core4.store, core4.events, request.id, self.name, core4.worker_id(hostname), hostname,
                     core4.settings.run_lease, after_end=core4.handovers.submit,
                     settle=core4.dependencies.settle, data=core4.job_data, loggers=(self.name, type(self).__module__),
                     wake=core4.store.wake_mother)
        request.core4_run = run
        return run.execute(self.body, kwargs, getattr(request, TICKET_HEADER, None))

    def _adopt(self, message_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A message from a plain Celery client (``app.send_task``, ``celery call``, another language):
        its id is no job's, so it becomes a registry job with the same arguments and runs under core4's
        rules; ``AsyncResult(message_id)`` finds it through the id it keeps."""
        arguments = self.bind_arguments(tuple(args), dict(kwargs))
        try:
            job_id = self.core4.submit(self, arguments, links=Links(celery_id=message_id))
        except JobExists as exc:  # the same job waits or runs (or this message came twice)
            log.info("%s: message %s not adopted, its job %s exists", self.name, message_id, exc.job_id)
            return
        log.info("%s: message %s from a plain Celery client adopted as job %s", self.name, message_id, job_id)

    def body(self, **kwargs: Any) -> Any:
        """The user's code: ``run`` for function tasks, ``execute`` for core4-style classes."""
        self.request.retries = max(0, self.trial - 1)  # Celery's autoretry backs off by it
        return self.run(**kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self.execute(*args, **kwargs)

    def execute(self, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{self.name} defines neither run() nor execute()")

    def apply_async(
        self, args: Any = None, kwargs: Any = None, **options: Any
    ) -> AsyncResult:
        headers = options.get("headers") or {}
        canvas = {key: options.pop(key) for key in CANVAS_OPTIONS if options.get(key) is not None}
        unsupported = sorted(k for k, v in options.items()
                             if k not in CALL_OPTIONS and k not in TRANSPORT_OPTIONS and v is not None)
        if unsupported:
            raise InvalidArguments(f"{self.name}: calling option(s) not supported by core4 tasks: {unsupported}"
                                   f"{option_hint(unsupported, CALL_OPTIONS)}")
        if args is not None and not isinstance(args, (list, tuple)):
            raise InvalidArguments(f"{self.name}: args must be a list or tuple, got {args!r} ({type(args).__name__})")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise InvalidArguments(f"{self.name}: kwargs must be a dict, got {kwargs!r} ({type(kwargs).__name__})")
        call = {k: options.get(k) for k in CALL_OPTIONS}
        if canvas.get("chain") or canvas.get("link"):
            return self._apply_chain(tuple(args or ()), dict(kwargs or {}), call, canvas)
        arguments = self.bind_arguments(tuple(args or ()), dict(kwargs or {}))
        if self.app.conf.task_always_eager:  # checked above as a registry job would be
            return self.apply(args, kwargs, **options)
        try:
            job_id = self.core4.submit(self, arguments, links=self._member_links(canvas),
                                       dependency=canvas.get("dependency"), **call)
        except JobExists as exc:
            if not isinstance(headers, dict) or not any(key in headers for key in BEAT_HEADERS):
                raise
            # a schedule's tick while its last job still waits or runs: core4 queues it once (not an error)
            log.info("%s: skipped a scheduled tick, its job %s still exists", self.name, exc.job_id)
            return self.AsyncResult(exc.job_id or "")
        return self.AsyncResult(canvas.get("task_id") or job_id)

    def _member_links(self, canvas: dict[str, Any]) -> Links | None:
        """A group's or chord's member answers to its frozen Celery id and is unique only within its group."""
        task_id = canvas.get("task_id")
        if task_id is not None and not isinstance(task_id, str):
            raise InvalidArguments(f"{self.name}: task_id must be a str, got {task_id!r}")
        if canvas.get("chord") is not None:
            member = self.core4.chord_member(task_id)
            if member is not None:
                return member
        group_id = canvas.get("group_id")
        return Links(celery_id=task_id, scope=group_id, group_id=group_id)

    def _apply_chain(self, args: tuple[Any, ...], kwargs: dict[str, Any], call: dict[str, Any],
                     canvas: dict[str, Any]) -> AsyncResult:
        """The first step of a chain (or a task with ``link`` callbacks): every later step is written now,
        waiting for the one before it, instead of travelling in the message."""
        if canvas.get("dependency") is not None:
            raise InvalidArguments(f"{self.name}: dependency= applies to single jobs, not to a chain's first step")
        head = self.signature(args, kwargs, **{k: v for k, v in call.items() if v is not None},
                              task_id=canvas.get("task_id"), chain=canvas.get("chain"), link=canvas.get("link"))
        plan = Plan(self.app, Core4Task)
        plan.add(head, Tails())
        scope = canvas.get("task_id") or str(plan.steps[0].job_id)
        self.core4.submit_plan(plan, scope=scope, group_id=canvas.get("group_id"))
        return self.AsyncResult(canvas.get("task_id") or str(plan.steps[0].job_id))

    def map(self, it: Any) -> Any:
        """One job per item and a collector: ``get()`` returns the results as a list, as Celery's map does."""
        return map_signature(self, it, star=False)

    def starmap(self, it: Any) -> Any:
        return map_signature(self, it, star=True)

    def chunks(self, it: Any, n: int) -> Any:
        return chunks_signature(self, it, n)

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Run the body here, on an in-memory job (no server): see :mod:`core4celery.eager`."""
        from .eager import apply_eagerly
        return apply_eagerly(self, args, kwargs, options)

    def bind_fed(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """A canvas step is fed the previous result as its first positional argument (as in Celery):
        the arguments without it, and the name of the parameter that will receive it."""
        fed = object()
        named = self.bind_arguments((fed, *args), kwargs)
        param = next((key for key, value in named.items() if value is fed), None)
        if param is None:
            raise InvalidArguments(f"{self.name}: a canvas step needs a positional parameter for the previous "
                                   "step's result (or use .si() for an immutable signature)")
        named[param] = None
        return named, param

    def bind_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """core4 passes arguments by name, so positional ones are named here."""
        func: Callable[..., Any] = self.run if type(self).run is not Core4Task.run else self.execute
        try:
            bound = inspect.signature(func).bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"{self.name}: {exc}{option_hint(kwargs, ENQUEUE_OPTIONS)}") from None
        named: dict[str, Any] = {}
        for key, value in bound.arguments.items():
            kind = bound.signature.parameters[key].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise InvalidArguments(f"{self.name}: *{key} cannot be passed to a core4 job")
            elif kind is inspect.Parameter.VAR_KEYWORD:
                named.update(value)
            else:
                named[key] = value
        return named

    # -- the job-side API ------------------------------------------------
    @property
    def _run(self) -> JobRun | EagerRun | None:
        return getattr(self.request, "core4_run", None)

    @property
    def job_id(self) -> str | None:
        run = self._run
        return run.job_id if run else None

    @property
    def trial(self) -> int:
        run = self._run
        return run.trial if run else 0

    @property
    def logger(self) -> logging.Logger:
        """The job's logger (Celery's task logger of its name): its records are stored with the run."""
        return get_task_logger(self.name)

    @property
    def cookie(self) -> Cookie | MemoryCookie:
        """core4's ``sys.cookie``: small persistent values per job name (``get``, ``set``, ``inc``, ...).

        ``last_runtime`` is set after each completed run that used the cookie (core4 sets it after
        every one; a job that never reads it would pay a write per run for nothing).
        """
        run = self._run
        if isinstance(run, JobRun):
            run.uses_cookie = True
        elif run is not None:
            return run.cookie  # an eager run's, in memory
        return self.core4.job_data.cookies.cookie(self.name)

    def progress(self, value: float, message: str | None = None, force: bool = False) -> bool:
        """Report progress (0..1); written at most once per progress_interval unless forced."""
        run = self._run
        return run.progress(value, message, force) if run else False

    def update_state(self, task_id: str | None = None, state: str | None = None, meta: Any = None,
                     **kwargs: Any) -> None:
        """Celery's progress idiom, ``update_state(state="PROGRESS", meta={...})``, as ``progress()``.

        ``meta`` gives ``percent`` (0-100) or ``current`` and ``total``, and
        optionally ``message``; other states are the registry's to set.
        """
        if state != "PROGRESS" or (task_id is not None and task_id != self.job_id):
            raise InvalidArguments(f"{self.name}: update_state() of a core4 job supports state='PROGRESS' for the "
                                   f"running job only (got state={state!r}); the registry sets every other state")
        meta = meta if isinstance(meta, dict) else {}
        if meta.get("percent") is not None:
            fraction = float(meta["percent"]) / 100
        elif meta.get("total"):
            fraction = float(meta.get("current") or 0) / float(meta["total"])
        else:
            fraction = 0.0
        self.progress(min(1.0, max(0.0, fraction)), meta.get("message"), force=True)

    def retry(self, args: Any = None, kwargs: Any = None, exc: BaseException | None = None, throw: bool = True,
              eta: datetime | None = None, countdown: float | None = None, max_retries: int | None = None,
              **options: Any) -> Any:
        """Celery's retry on core4's terms: this run fails (using an attempt) and the job is due again
        after ``countdown`` (or at ``eta``; default ``error_time``) while attempts are left, then it
        ends in error with ``exc``. The number of trials is the task's ``attempts`` (``max_retries``
        + 1 when the task sets ``max_retries``); a job keeps its arguments."""
        if self._run is None:
            if self.request.called_directly:  # task(...) called as a function (a unit test): Celery's own behaviour
                return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)
            raise InvalidArguments(f"{self.name}: retry() needs a running job")
        if args is not None or kwargs is not None:
            raise InvalidArguments(f"{self.name}: retry() cannot change a core4 job's arguments")
        delay = countdown
        if eta is not None:
            moment = eta.astimezone(timezone.utc).replace(tzinfo=None) if eta.tzinfo else eta
            delay = max(0.0, (moment - now()).total_seconds())
        if delay is not None:
            check_seconds("countdown", delay, InvalidArguments, zero=True)
        raise JobRetry(exc, delay)

    def defer(self, message: str = "", *args: Any) -> None:
        """End this run; the job returns after defer_time without using an attempt."""
        raise JobDeferred(message % args if args else message)

    def enqueue(self, task: Task | str, **kwargs: Any) -> str:
        """Enqueue a child job tagged with this job's id as its ``mid``."""
        run = self._run
        if run is None:
            raise InvalidArguments("enqueue() of a child needs a running job; use Core4.enqueue()")
        if not isinstance(run, JobRun):
            return run.enqueue(task, kwargs)  # an eager run's in-memory child
        return self.core4.enqueue_child(run.job_id, task, **kwargs)

    def children(self) -> list[JobDoc]:
        """Live (not yet journaled) child jobs of this job."""
        run = self._run
        if run is not None and not isinstance(run, JobRun):
            return run.children()
        job_id = self.job_id
        return list(self.core4.store.children(job_id)) if job_id else []
