"""The store tier: JobStore against a real MongoDB-wire server, no workers, no mocks.

Every test gets a fresh database on the session's SecantusDB (``db_url``) and
builds ``Settings`` → ``Connection`` → ``JobStore`` itself, the way a worker
process does. Helpers that drive a job to a given state use only the store's
public transitions, so a broken transition fails the tests that need it.

Worker slots come from ``JobStore.reconcile`` (as if alive workers had them):
each test starts with ``CAPACITY`` idle slots on the default queue, and after
it the slots document must still account for every one of them (idle + held =
the workers' slots, per queue). Endings of a run do not free its slots; the
finishing process gives them (``Registry.give``) or hands them over.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from bson import ObjectId
from celery import Celery
from pymongo import monitoring

from core4celery.clock import later, now
from core4celery.config.options import JobOptions
from core4celery.config.settings import Settings, database_of
from core4celery.dispatch.control import Control
from core4celery.dispatch.dispatcher import Dispatcher
from core4celery.store.connection import Connection
from core4celery.store.document import Run, new_job, ticket_header
from core4celery.store.jobs import DEFAULT_QUEUE, Claim, JobStore
from core4celery.store.journal import Journal
from core4celery.store.nodes import Nodes
from core4celery.store.slots import SLOTS, Holder, SlotState
from core4celery.store.states import State

TICKET_LEASE = 30.0
RUN_LEASE = 15.0
CAPACITY = 50  # idle worker slots of the default queue each test starts with
_serial = itertools.count()

# A job document as the tests hold it. JobStore takes some as ``JobDoc`` (a TypedDict) and some as ``Doc``
# (a plain dict), which no single static type satisfies; the tests read fields of stored documents freely.
Job = Any


# -- interleaving ---------------------------------------------------------------
class CommandHook(monitoring.CommandListener):
    """Run an action in the middle of a store method: right after one of its commands is acknowledged.

    pymongo calls listeners synchronously in the thread that issued the command,
    so an action armed for ``aggregate`` on the jobs collection (the completion's
    server-side ``$merge`` into the journal) runs after the server applied it and
    before the store method sees the reply — the exact window between two
    commands of a transition. Only commands issued by the arming thread match;
    the action's own commands (from another client, or the same thread) do not
    re-trigger it because it is disarmed first — but they can match another
    armed entry, so a second window of the same thread is armed from inside
    the first one's action.

    ``record()`` lists the commands the calling thread issues meanwhile, as
    ``(command, collection)``: how many round trips a hot path costs;
    ``queries`` holds the filters of the recorded finds and updates.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[tuple[int, str, str, Callable[[], object]]] = []
        self._pending: dict[tuple[int, object], Callable[[], object]] = {}
        self.errors: list[BaseException] = []
        self.fired = 0
        self._recording: dict[int, list[tuple[str, object]]] = {}
        self.queries: list[tuple[str, object, Any]] = []  # (command, collection, filter) while recording

    @contextlib.contextmanager
    def record(self) -> Iterator[list[tuple[str, object]]]:
        seen: list[tuple[str, object]] = []
        with self._lock:
            self._recording[threading.get_ident()] = seen
        try:
            yield seen
        finally:
            with self._lock:
                self._recording.pop(threading.get_ident(), None)

    def arm(self, command: str, collection: str, action: Callable[[], object]) -> None:
        with self._lock:
            self._armed.append((threading.get_ident(), command, collection, action))

    def disarm(self) -> None:
        with self._lock:
            self._armed.clear()
            self._pending.clear()
            self._recording.clear()
            self.queries.clear()
            self.errors.clear()
            self.fired = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        with self._lock:
            seen = self._recording.get(threading.get_ident())
            if seen is not None:
                seen.append((event.command_name, target))
                query = event.command.get("filter")
                for update in event.command.get("updates") or []:
                    query = update.get("q")
                self.queries.append((event.command_name, target, query))
            for entry in self._armed:
                thread, command, collection, action = entry
                if thread == threading.get_ident() and command == event.command_name and target == collection:
                    self._armed.remove(entry)
                    self._pending[(event.request_id, event.connection_id)] = action
                    return

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        with self._lock:
            action = self._pending.pop((event.request_id, event.connection_id), None)
        if action is None:
            return
        self.fired += 1
        try:
            action()
        except BaseException as exc:  # pymongo swallows listener errors; the test re-raises them
            self.errors.append(exc)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        with self._lock:
            self._pending.pop((event.request_id, event.connection_id), None)


HOOK = CommandHook()
monitoring.register(HOOK)  # clients made from now on report to it; it does nothing unless armed


@pytest.fixture
def hook() -> Iterator[CommandHook]:
    HOOK.disarm()
    yield HOOK
    errors = list(HOOK.errors)
    HOOK.disarm()
    if errors:
        raise errors[0]


# -- registry -------------------------------------------------------------------
def settings_for(url: str, **values: Any) -> Settings:
    return Settings(mongodb_url=url, database=database_of(url), **values)


def untokened(entries: list[Any]) -> list[dict[str, Any]]:
    """Holder entries without their claim tokens (random per claim), for comparing with expected ones."""
    return [{key: value for key, value in entry.items() if key != "t"} for entry in entries]


def holder_of_run(run: Run) -> Holder:
    """The slots a finished run hands on (what the worker passes to ``Dispatcher.hand_over``)."""
    return Holder(job_id=run.job_id, name=run.name, queue=run.queue, limit=run.max_parallel, token=run.slot)


class Registry:
    """One process's view of the registry: its own client, a JobStore over it, raw reads for assertions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.connection = Connection(settings)
        self.store = JobStore(self.connection)
        # alive worker slots per queue as last reconciled; the slots document must account for each of them
        self.capacity: dict[str, int] | None = None

    def close(self) -> None:
        self.connection.db.client.close()

    def live(self, job_id: ObjectId) -> Job:
        """The live document, None when there is none."""
        return self.connection.jobs.find_one({"_id": job_id})

    def journaled(self, job_id: ObjectId) -> Job:
        """The journal copy, None when there is none."""
        return self.connection.journal.find_one({"_id": job_id})

    def journal_count(self, job_id: ObjectId) -> int:
        return self.connection.journal.count_documents({"_id": job_id})

    # the slots document -----------------------------------------------------------
    def slots(self) -> SlotState:
        return self.store.slots()

    def raw_slots(self) -> Job:
        """The slots document as stored (names encoded with ``field_key``)."""
        return self.connection.gates.find_one({"_id": SLOTS})

    def tokens(self, name: str) -> list[Any]:
        """The claim tokens of the holders of ``name``."""
        return [entry.get("t") for entry in self.slots().holders.get(name, [])]

    def holders(self, name: str) -> list[ObjectId]:
        """The jobs holding a slot of ``name``, in the order they took it."""
        return [entry["id"] for entry in self.slots().holders.get(name, [])]

    def free(self, queue: str = DEFAULT_QUEUE) -> int:
        return self.slots().free.get(queue, 0)

    def generation(self) -> int:
        return self.slots().generation

    def provide(self, slots: dict[str, int]) -> None:
        """Alive workers with these slots per queue: idle slots = slots - holders (what reconcile computes)."""
        assert self.store.reconcile(slots)
        self.capacity = dict(slots)
        self.check_slots()

    def check_slots(self) -> None:
        """No slot leaked or counted twice: per queue, idle + held = the workers' slots; no job holds twice."""
        assert self.capacity is not None
        state = self.slots()
        held = state.held_by_queue()
        for queue in {*self.capacity, *held, *state.free}:
            assert state.free.get(queue, 0) + held.get(queue, 0) == self.capacity.get(queue, 0), (queue, state)
        ids = [entry["id"] for entries in state.holders.values() for entry in entries]
        assert len(ids) == len(set(ids)), state.holders

    def give(self, run: Run) -> bool:
        """The finishing process returns the run's slots (nothing waits for them)."""
        return self.store.give(holder_of_run(run))

    # drive a job through the store's own transitions ---------------------------
    def enqueue(self, name: str = "job", args: dict[str, Any] | None = None, queue: str | None = None,
                **options: Any) -> Job:
        doc = new_job(name, {"n": next(_serial)} if args is None else args, JobOptions(**options), query_at=now(),
                      queue=queue)
        self.store.enqueue(doc)
        return doc

    def dispatched(self, name: str = "job", args: dict[str, Any] | None = None, queue: str | None = None,
                   **options: Any) -> Job:
        doc = self.enqueue(name, args, queue=queue, **options)
        assert self.store.claim(doc, now(), TICKET_LEASE) is Claim.TICKET
        return doc

    def start(self, doc: Job, worker: str = "w1") -> Run:
        """The ticket of a dispatched job arrives: start it with the fields the ticket carries."""
        live = self.live(doc["_id"])
        assert live is not None
        run = self.store.start(doc["_id"], doc["name"], lock(worker), ticket_header(live))
        assert run is not None
        return run

    def running(self, name: str = "job", worker: str = "w1", queue: str | None = None,
                **options: Any) -> tuple[Job, Run]:
        """A started job: (its live document, the run as its process knows it)."""
        doc = self.dispatched(name, None, queue=queue, **options)
        run = self.start(doc, worker)
        return self.live(doc["_id"]), run

    def claim_and_start(self, doc: Job, worker: str = "w1") -> tuple[Job, Run]:
        """Due again (deferred, failed, recovered): a new ticket and a new run."""
        live = self.live(doc["_id"])
        assert live is not None
        assert self.store.claim(live, later(1), TICKET_LEASE) is Claim.TICKET
        run = self.start(live, worker)
        return self.live(doc["_id"]), run


def cut_short_completion(reg: Registry, run: Run, result: object) -> ObjectId:
    """What JobStore.complete leaves when its process dies after the server-side journal copy, before the delete."""
    stamp = now()
    rev = ObjectId()
    fields = {**run.ended(stamp), "state": State.COMPLETE.value, "result": result,
              "prog": {"value": 1.0, "message": ""}, "attempts_left": run.attempts_left - 1,
              "rev": rev, "source_rev": run.rev}
    assert Journal(reg.connection).copy_live({"_id": run.job_id, "rev": run.rev}, fields)
    assert reg.journal_count(run.job_id) == 1
    return rev


def lock(worker: str = "w1", run_lease: float = RUN_LEASE) -> dict[str, Any]:
    """What a worker writes into ``locked`` at start: a fresh run token and its lease."""
    stamp = now()
    return {"worker": worker, "hostname": "store-tests", "pid": os.getpid(), "run": ObjectId(),
            "at": stamp, "heartbeat": stamp, "lease_until": later(run_lease, stamp)}


@pytest.fixture
def settings(db_url: str) -> Settings:
    return settings_for(db_url)


@pytest.fixture
def registries(settings: Settings) -> Iterator[Callable[[], Registry]]:
    """Make more registries (separate clients, as separate processes would have); all closed at the end."""
    made: list[Registry] = []

    def make() -> Registry:
        registry = Registry(settings)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


@pytest.fixture
def reg(registries: Callable[[], Registry]) -> Iterator[Registry]:
    """The test's registry, with CAPACITY idle worker slots on the default queue; the slots are checked after."""
    registry = registries()
    registry.connection.ensure_indexes()
    registry.provide({DEFAULT_QUEUE: CAPACITY})
    yield registry
    if registry.capacity is not None:  # a test that breaks the accounting on purpose sets it to None
        registry.check_slots()


@pytest.fixture
def other(reg: Registry, registries: Callable[[], Registry]) -> Registry:
    """A second process's registry on the same database."""
    return registries()


def race(*calls: Callable[[], Any], timeout: float = 60.0) -> list[Any]:
    """Run the calls in threads released together; their results in order (an exception is re-raised)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def body(index: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout)
            results[index] = call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i, call), daemon=True) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a racing call did not return"
    if errors:
        raise errors[0]
    return results


# -- a dispatcher as Core4 builds one ------------------------------------------------
@pytest.fixture
def app(db_url: str) -> Iterator[Celery]:
    celery = Celery("store-tests", broker=db_url)
    yield celery
    celery.close()


@pytest.fixture
def dispatcher(reg: Registry, app: Celery) -> Dispatcher:
    connection = reg.connection
    return Dispatcher(reg.store, Nodes(connection, reg.settings.worker_timeout), Control(connection), app,
                      reg.settings)
