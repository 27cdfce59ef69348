"""``Core4``: the handle that wires core4 semantics into one Celery app.

It builds every service once (connection, job store, worker directory,
dispatcher, operations, result backend) and passes each the services it
needs; nothing reaches through another object. Everything is created lazily
so importing an app module does not connect to MongoDB.
"""

from __future__ import annotations

import base64
import os
import re
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from bson import ObjectId
from celery import Celery, Task, signals
from celery.result import AsyncResult
from kombu.utils.json import dumps as kombu_dumps

from . import nudges
from .backend import RegistryBackend
from .broker import prepare_broker
from .canvas import COLLECT, Plan, Tails
from .clock import later, now
from .config.numbers import check_seconds
from .config.options import ENQUEUE_OPTIONS
from .config.settings import CONF_PREFIX, Settings, mask_url
from .dispatch.background import BackgroundHandover
from .dispatch.control import Control
from .dispatch.dependencies import Dependencies, failed_ending
from .dispatch.dispatcher import Dispatcher
from .errors import DependencyFailed, InvalidArguments, JobNotFound, UnknownTask
from .events import JobEvents
from .inspection import mask_remote_inspection
from .metrics import code_path
from .operations import Operations, Outcome
from .store.connection import Connection, Doc
from .store.cookies import CookieStore
from .store.document import TICKET_HEADER, JobDoc, Links, new_job
from .store.groups import Groups
from .store.jobs import JobStore
from .store.logs import LogStore
from .store.nodes import Nodes
from .store.outage import Outage
from .store.queries import JobQueries
from .store.schedules import ScheduleStore
from .store.states import State
from .store.stdout import StdoutStore
from .store.values import MAX_BSON_SIZE, check_json
from .transport import TRANSPORT, on_purge
from .wakeups import Wakeups, broker_database
from .worker.jobdata import JobData

APP_DEFAULTS = {
    "worker_prefetch_multiplier": 1,
    "accept_content": ["json"],
    "task_serializer": "json",
    "result_serializer": "json",
    "event_serializer": "json",
    "broker_transport_options": {"ttl": True, "polling_interval": 0.05},
    # a killed or crashed pool process frees its slot after this, not Celery's 10 s: the job's
    # outcome is already in the registry, so there is no late result worth waiting for
    "worker_lost_wait": 1.0,
    # app.AsyncResult(id), `celery result ID` and Flower's result column read the registry
    # (an app that configures its own result_backend keeps it, for its plain tasks)
    "result_backend": "core4celery.backend:RegistryBackend",
}
URL_SETTING = CONF_PREFIX + "mongodb_url"
# headers, properties and the kwargs repr Celery adds around the body of a ticket
TICKET_OVERHEAD = 16 * 1024


def use_core4_transport(app: Celery) -> None:
    """A MongoDB broker gets kombu's transport without its repeated lookups (see :mod:`core4celery.transport`)."""
    conf = app.conf
    if not conf.broker_transport and str(conf.broker_url or "").startswith(("mongodb://", "mongodb+srv://")):
        conf.broker_transport = TRANSPORT


class Core4:
    def __init__(self, app: Celery, settings: Settings | None = None) -> None:
        from .worker.step import Core4WorkerStep

        self.app = app
        if settings is not None:
            self.__dict__["settings"] = settings
        self._worker_id: str | None = None
        self._conf_url: str | None = None  # core4celery_mongodb_url as configured; app.conf keeps it masked
        app.core4celery = self
        app.add_defaults(APP_DEFAULTS)
        mask_remote_inspection()
        if app.configured:
            self._configured(app)
        else:
            app.on_after_configure.connect(lambda sender, **_: self._configured(sender), weak=False)
        self._chord_members: dict[str, Links] = {}  # a chord's header members, planned with its body
        app.steps["worker"].add(Core4WorkerStep)
        define_collect(app)
        signals.after_task_publish.connect(self._ring_for_plain_task, weak=False)
        on_purge(self)
        # tasks defined from here on are created (and validated) at decoration time
        app.finalize()

    def _configured(self, app: Celery) -> None:
        use_core4_transport(app)
        self._hide_url()

    def _hide_url(self) -> None:
        """Keep the registry's URL out of ``app.conf``: that is what ``celery report`` prints and
        Flower's config tab shows, and Celery masks only settings whose names it knows."""
        conf = self.app.conf
        url = conf.get(URL_SETTING)
        if isinstance(url, str) and mask_url(url) != url:
            self._conf_url = url
            conf[URL_SETTING] = mask_url(url)

    def purge_queue(self, database: str, queue: str) -> int:
        """A purge of one of this app's task queues (on its broker) removes its waiting core4 jobs too."""
        broker = str(self.app.conf.broker_url or "")
        if not broker.startswith(("mongodb://", "mongodb+srv://")) or broker_database(broker) != database:
            return 0  # another app's broker
        if queue not in self.app.amqp.queues:
            return 0  # a reply or event queue
        return self.operations.purge(queue=queue)

    def purge(self, name: str | None = None, queue: str | None = None) -> int:
        """Remove the waiting jobs of a name or a queue (all with neither) into the journal."""
        return self.operations.purge(queue=queue, name=name)

    def _ring_for_plain_task(self, sender: str | None = None, routing_key: str | None = None,
                             headers: Mapping[str, Any] | None = None, **_: Any) -> None:
        """A plain Celery task of this app may go to a worker waiting for wake-ups; core4 tickets ring themselves."""
        if (headers or {}).get(TICKET_HEADER) is not None or sender not in self.app.tasks:
            return
        wakeups = self.wakeups
        if wakeups is not None and routing_key:
            wakeups.ring(routing_key)

    # -- services, built once ------------------------------------------------
    @cached_property
    def settings(self) -> Settings:
        self._hide_url()  # set after Core4(app) was made
        conf = self.app.conf
        if self._conf_url is None:
            return Settings.from_conf(conf)
        return Settings.from_conf(ChainMap({URL_SETTING: self._conf_url}, conf))

    @cached_property
    def connection(self) -> Connection:
        return Connection(self.settings)

    @property
    def outage(self) -> Outage:
        return self.connection.outage

    @cached_property
    def events(self) -> JobEvents:
        return JobEvents(self.app)

    @cached_property
    def store(self) -> JobStore:
        self.prepare()
        return JobStore(self.connection, self.events)

    @cached_property
    def queries(self) -> JobQueries:
        return JobQueries(self.connection)

    @cached_property
    def nodes(self) -> Nodes:
        return Nodes(self.connection, self.settings.worker_timeout)

    @cached_property
    def schedules(self) -> ScheduleStore:
        return ScheduleStore(self.connection)

    @cached_property
    def control(self) -> Control:
        return Control(self.connection)

    @cached_property
    def wakeups(self) -> Wakeups | None:
        """Rings for workers waiting on the MongoDB broker; None with any other broker."""
        url = str(self.app.conf.broker_url or "")
        return Wakeups(url) if url.startswith(("mongodb://", "mongodb+srv://")) else None

    @cached_property
    def dispatcher(self) -> Dispatcher:
        ring = self.wakeups.ring if self.wakeups is not None else None
        return Dispatcher(self.store, self.nodes, self.control, self.app, self.settings, ring, nudges.nudge)

    @cached_property
    def dependencies(self) -> Dependencies:
        return Dependencies(self.store)

    @cached_property
    def groups(self) -> Groups:
        return Groups(self.connection)

    @cached_property
    def job_data(self) -> JobData:
        """Job logs, stdout and cookies (one store each)."""
        connection = self.connection
        return JobData(self.settings, LogStore(connection), StdoutStore(connection), CookieStore(connection))

    @cached_property
    def handovers(self) -> BackgroundHandover:
        return BackgroundHandover(self.dispatcher.hand_over)

    @cached_property
    def operations(self) -> Operations:
        return Operations(self.store, self.dispatch)

    @cached_property
    def backend(self) -> RegistryBackend:
        return RegistryBackend(self.app)  # finds the store on first read: an eager run reaches the backend, never MongoDB

    def prepare(self) -> None:
        """Indexes and the broker's collections; idempotent, done once per process on first use."""
        if self.__dict__.get("_prepared"):
            return
        self.connection.ensure_indexes()
        conf = self.app.conf
        prepare_broker(str(conf.broker_url or ""), dict(conf.broker_transport_options or {}))
        self.__dict__["_prepared"] = True

    def close(self) -> None:
        """Close the MongoDB clients this process opened for core4celery (the app's broker is Celery's)."""
        if "connection" in self.__dict__:
            self.connection.close()
        wakeups = self.__dict__.get("wakeups")
        if wakeups is not None:
            wakeups.close()

    def ping(self) -> None:
        self.connection.ping()
        self.prepare()

    def attach_worker(self, worker_id: str) -> None:
        """Called in the worker's main process before the pool forks."""
        self._worker_id = worker_id

    def worker_id(self, hostname: str) -> str:
        return self._worker_id or f"{hostname}:{os.getpid()}"

    # -- enqueue -----------------------------------------------------------
    def task(self, task: Task | str) -> Any:
        """The registered core4 task for a task object or name."""
        from .task import Core4Task

        name = task if isinstance(task, str) else getattr(task, "name", None)
        found = self.app.tasks.get(name) if isinstance(name, str) else None
        if not isinstance(found, Core4Task):
            known = sorted(n for n, t in self.app.tasks.items() if isinstance(t, Core4Task))
            shown = repr(name) if isinstance(name, str) else f"{task!r} ({type(task).__name__})"
            raise UnknownTask(f"{shown} is not a registered core4 task; known: {', '.join(known) or 'none'}")
        return found

    def enqueue(self, task: Task | str, /, **kwargs: Any) -> str:
        """core4-style enqueue: option names set options, everything else is an argument."""
        if "_mid" in kwargs:
            raise InvalidArguments("_mid (a child's mother) is set by self.enqueue() in a running job, not passed")
        return self._enqueue(task, kwargs, mid=None)

    def enqueue_child(self, mother_id: str, task: Task | str, /, **kwargs: Any) -> str:
        """``enqueue`` of a child of the running job ``mother_id`` (``Core4Task.enqueue``)."""
        return self._enqueue(task, kwargs, mid=mother_id)

    def _enqueue(self, task: Task | str, kwargs: dict[str, Any], mid: str | None) -> str:
        dependency = kwargs.pop("dependency", None)
        found, arguments, options = self.enqueue_arguments(task, kwargs)
        return self.submit(found, arguments, options=options, mid=mid, dependency=dependency)

    def enqueue_arguments(self, task: Task | str, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """core4-style keywords split into (task, its named arguments, job options); eager runs use it too."""
        found = self.task(task)
        options = {key: kwargs.pop(key) for key in ENQUEUE_OPTIONS if key in kwargs}
        explicit = kwargs.pop("args", None) or {}
        if not isinstance(explicit, dict):
            raise InvalidArguments(f"args must be a dict, got {type(explicit).__name__}")
        return found, found.bind_arguments((), {**explicit, **kwargs}), options

    def submit(
        self,
        task: Any,
        arguments: dict[str, Any],
        *,
        options: dict[str, Any] | None = None,
        priority: int | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        queue: str | None = None,
        mid: str | None = None,
        links: Links | None = None,
        dependency: Any = None,
    ) -> str:
        """Validate everything, then write the job with one insert (nothing half-written).

        ``links``: its place in a canvas, or the id of the plain Celery message it adopts.
        ``dependency``: ids of jobs that must complete before this one is due.
        """
        awaited = self._awaited(dependency)
        if awaited:
            links = replace(links or Links(), after=awaited)
        doc = self.job_document(task, arguments, options=options, priority=priority, countdown=countdown, eta=eta,
                         queue=queue, mid=mid, links=links)
        job_id = self.insert(doc)
        if awaited:
            self._wait_for(doc["_id"], awaited)
        return job_id

    def job_document(self, task: Any, arguments: dict[str, Any], *, options: dict[str, Any] | None = None,
                     priority: int | None = None, countdown: float | None = None, eta: datetime | None = None,
                     queue: str | None = None, mid: str | None = None, links: Links | None = None) -> JobDoc:
        """Every check of an enqueue, without a write (nor a connection): an eager run is refused what
        the registry would refuse."""
        check_json(arguments, f"arguments of {task.name}")
        overrides = dict(options or {})
        if priority is not None:
            overrides["priority"] = priority
        job_options = task.core4_options.override(overrides)
        doc = new_job(task.name, arguments, job_options, query_at=self._first_due(countdown, eta),
                      mid=mid, queue=self._queue_of(task.name, queue), links=links)
        check_ticket(doc)
        return doc

    def insert(self, doc: JobDoc) -> str:
        """Write a built job: a due one may get its ticket at once; a blocked one waits for its dependencies."""
        query_at = doc["query_at"]
        if query_at is not None and query_at <= now():
            self.dispatcher.offer(doc)
        else:
            with code_path("enqueue"):
                self.store.enqueue(doc)
        return str(doc["_id"])

    def _awaited(self, dependency: Any) -> tuple[ObjectId, ...]:
        """The ids of ``dependency`` still to complete; every one must name a job that has not failed."""
        if dependency is None:
            return ()
        if isinstance(dependency, (str, ObjectId)):
            dependency = [dependency]
        if not isinstance(dependency, (list, tuple)):
            raise InvalidArguments(f"dependency must be a list of job ids, got {dependency!r}")
        ids = [_job_id(value) for value in dependency]
        outcomes = self.store.outcomes(ids)
        waiting = []
        for job_id in dict.fromkeys(ids):
            outcome = outcomes.get(job_id)
            if outcome is None:
                raise JobNotFound(f"dependency {job_id}: no job has this id")
            reason = failed_ending(outcome)
            if reason is not None:
                raise DependencyFailed(f"dependency {job_id} ({outcome['name']}) {reason}")
            if outcome["state"] != State.COMPLETE.value:
                waiting.append(job_id)
        return tuple(waiting)

    def _wait_for(self, job_id: ObjectId, awaited: tuple[ObjectId, ...]) -> None:
        """The awaited jobs learn their successor; one that ended meanwhile is settled here (else by a sweep)."""
        for awaited_id in awaited:
            self.store.add_successor(awaited_id, job_id)
        self.dependencies.settle([job_id])

    # -- canvas --------------------------------------------------------------
    def submit_plan(self, plan: Plan, scope: str, group_id: str | None = None) -> None:
        """Write every job of a canvas, validated first; the jobs that wait are written before the due ones."""
        plan.link_successors()
        docs = []
        for step in plan.waiting_first():
            named, param = _bound(step)
            links = replace(step.links(scope, step.options.get("group_id") or group_id),
                            feed={"param": param, "list": step.fed == "list"} if param else None)
            call = {key: step.options.get(key) for key in ("priority", "countdown", "eta", "queue")}
            docs.append(self.job_document(step.task, named, links=links, **call))
        for doc in docs:
            self.insert(doc)

    def plan_chord(self, group_id: str, member_ids: list[str], body: Any) -> None:
        """Celery's ``apply_chord``: the body waits for the header's members, which Celery enqueues next
        (each through ``apply_async`` with its frozen id: see :meth:`chord_member`)."""
        from .task import Core4Task

        members = {celery_id: ObjectId() for celery_id in member_ids}
        plan = Plan(self.app, Core4Task)
        plan.add(body, Tails(tuple(members.values()), many=True))
        firsts = tuple(step.job_id for step in plan.steps if set(step.after) & set(members.values()))
        self.submit_plan(plan, scope=group_id)
        for celery_id, job_id in members.items():
            self._chord_members[celery_id] = Links(job_id=job_id, successors=firsts, scope=group_id,
                                                   group_id=group_id, celery_id=celery_id)

    def chord_member(self, celery_id: str | None) -> Links | None:
        return self._chord_members.pop(celery_id, None) if celery_id else None

    def _queue_of(self, name: str, queue: Any) -> str:
        """The queue the ticket goes to, fixed at enqueue (capacity is counted per queue)."""
        if queue is not None and (not isinstance(queue, str) or not queue.strip()):
            raise InvalidArguments(f"queue must be a non-empty str, got {queue!r}")
        route = self.app.amqp.router.route({"queue": queue} if queue else {}, name)
        return str(route["queue"].name)

    @staticmethod
    def _first_due(countdown: float | None, eta: datetime | None) -> datetime:
        if countdown is not None and eta is not None:
            raise InvalidArguments("pass countdown or eta, not both")
        if countdown is not None:
            check_seconds("countdown", countdown, InvalidArguments, zero=True)
            return later(countdown)
        if eta is not None:
            if not isinstance(eta, datetime):
                raise InvalidArguments(f"eta must be a datetime, got {eta!r}")
            # naive datetimes are taken as UTC, like everything in the registry
            return eta.astimezone(timezone.utc).replace(tzinfo=None) if eta.tzinfo else eta
        return now()

    def dispatch(self) -> int:
        """Issue tickets for due jobs now instead of waiting for a worker's timer (slots brought up to date first)."""
        self.dispatcher.reconcile()
        return self.dispatcher.tick()

    # -- operate -----------------------------------------------------------
    def kill(self, job_id: str) -> Outcome:
        """A waiting job ends killed at once; a running one within a heartbeat of its worker."""
        return self.operations.kill(job_id)

    def restart(self, job_id: str) -> str:
        """Returns the id that will run: the same for deferred/failed, a new one for stopped jobs."""
        return self.operations.restart(job_id)

    def remove(self, job_id: str, hard: bool = False) -> Outcome:
        return self.operations.remove(job_id, hard=hard)

    def halt(self) -> datetime:
        """Workers started before now finish their running jobs and exit."""
        return self.control.halt()

    def pause(self, project: str | None = None) -> bool:
        """Stop dispatching cluster-wide (or only the jobs named ``project.*``); running jobs go on.
        False if already paused."""
        if project is not None and (not isinstance(project, str) or not PROJECT.fullmatch(project)):
            raise InvalidArguments(f"project must be a dotted name such as 'myproject', got {project!r}")
        return self.dispatcher.pause(project)

    def resume(self, project: str | None = None) -> bool:
        return self.dispatcher.resume(project)

    def workers(self) -> list[Doc]:
        """Workers whose heartbeat is recent, each with the ids of the jobs it runs."""
        alive = self.nodes.alive()
        for worker in alive:
            worker["running"] = [str(doc["_id"]) for doc in self.store.running_on(worker["_id"])]
        return alive

    # -- read --------------------------------------------------------------
    def get(self, job_id: str) -> JobDoc:
        doc = self.store.find(job_id)
        if doc is None:
            raise JobNotFound(f"no job with id {job_id}")
        doc["_id"] = str(doc["_id"])  # type: ignore[typeddict-item]
        return doc

    def AsyncResult(self, job_id: str) -> AsyncResult:
        return AsyncResult(job_id, backend=self.backend, app=self.app)


PROJECT = re.compile(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*")


def _job_id(value: Any) -> ObjectId:
    if isinstance(value, ObjectId):
        return value
    if isinstance(value, str) and ObjectId.is_valid(value):
        return ObjectId(value)
    raise InvalidArguments(f"dependency: {value!r} is not a job id")


def _bound(step: Any) -> tuple[dict[str, Any], str | None]:
    """A step's arguments by name, and the parameter it is fed (None when it is fed nothing)."""
    if step.fed:
        named, param = step.task.bind_fed(step.args, step.kwargs)
        return named, param
    return step.task.bind_arguments(step.args, step.kwargs), None


def define_collect(app: Celery) -> None:
    """The body of ``task.map``/``task.starmap``: returns the members' results, in order, as a list."""
    from .task import Core4Task

    if COLLECT in app.tasks:
        return

    @app.task(base=Core4Task, name=COLLECT, author="core4celery", shared=False)
    def collect(results: list[Any]) -> list[Any]:
        return results


def check_ticket(doc: JobDoc) -> None:
    """A ticket the broker could not store would be retried for ever: refuse the job instead.

    kombu's MongoDB transport stores the message as JSON with a base64 body,
    so the arguments grow by a third on the way (more for non-ASCII text,
    which kombu's JSON escapes).
    """
    body = kombu_dumps([[], doc["args"], {}]).encode()
    size = len(base64.b64encode(body)) + TICKET_OVERHEAD
    if size > MAX_BSON_SIZE:
        raise InvalidArguments(
            f"arguments of {doc['name']}: the ticket would be {size:,} bytes, over the broker's "
            f"{MAX_BSON_SIZE:,}-byte document limit (kombu base64-encodes the body)"
        )

