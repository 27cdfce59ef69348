"""The store tier: JobStore against a real MongoDB-wire server, no workers, no mocks.

Every test gets a fresh database on the session's SecantusDB (``db_url``) and
builds ``Settings`` → ``Connection`` → ``JobStore`` itself, the way a worker
process does. Helpers that drive a job to a given state use only the store's
public transitions, so a broken transition fails the tests that need it.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from bson import ObjectId
from pymongo import monitoring

from core4celery.clock import later, now
from core4celery.config.options import JobOptions
from core4celery.config.settings import Settings, database_of
from core4celery.store.connection import Connection
from core4celery.store.document import new_job
from core4celery.store.jobs import Claim, JobStore

TICKET_LEASE = 30.0
RUN_LEASE = 15.0
_serial = itertools.count()

# A job document as the tests hold it. JobStore takes some as ``JobDoc`` (a TypedDict) and some as ``Doc``
# (a plain dict), which no single static type satisfies; the tests read fields of stored documents freely.
Job = Any


# -- interleaving ---------------------------------------------------------------
class CommandHook(monitoring.CommandListener):
    """Run an action in the middle of a store method: right after one of its commands is acknowledged.

    pymongo calls listeners synchronously in the thread that issued the command,
    so an action armed for ``insert`` into the journal runs after the server
    applied the insert and before the store method sees the reply — the exact
    window between two commands of a transition. Only commands issued by the
    arming thread match; the action's own commands (from another client, or
    the same thread) do not re-trigger it because it is disarmed first.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[tuple[int, str, str, Callable[[], object]]] = []
        self._pending: dict[tuple[int, object], Callable[[], object]] = {}
        self.errors: list[BaseException] = []
        self.fired = 0

    def arm(self, command: str, collection: str, action: Callable[[], object]) -> None:
        with self._lock:
            self._armed.append((threading.get_ident(), command, collection, action))

    def disarm(self) -> None:
        with self._lock:
            self._armed.clear()
            self._pending.clear()
            self.errors.clear()
            self.fired = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        with self._lock:
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


class Registry:
    """One process's view of the registry: its own client, a JobStore over it, raw reads for assertions."""

    def __init__(self, settings: Settings) -> None:
        self.connection = Connection(settings)
        self.store = JobStore(self.connection)

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

    def holders(self, name: str) -> list[ObjectId]:
        gate = self.connection.gates.find_one({"_id": name})
        return list(gate["holders"]) if gate else []

    def generation(self) -> int:
        return self.store.generation()

    # drive a job through the store's own transitions ---------------------------
    def enqueue(self, name: str = "job", args: dict[str, Any] | None = None, **options: Any) -> Job:
        doc = new_job(name, {"n": next(_serial)} if args is None else args, JobOptions(**options), query_at=now())
        self.store.enqueue(doc)
        return doc

    def dispatched(self, name: str = "job", **options: Any) -> Job:
        doc = self.enqueue(name, **options)
        assert self.store.claim(doc, now(), TICKET_LEASE) is Claim.TICKET
        return doc

    def running(self, name: str = "job", worker: str = "w1", **options: Any) -> Job:
        doc = self.dispatched(name, **options)
        started = self.store.start(doc["_id"], lock(worker))
        assert started is not None
        return started

    def claim_and_start(self, doc: Job, worker: str = "w1") -> Job:
        """Due again (deferred, failed, recovered): a new ticket and a new run."""
        live = self.live(doc["_id"])
        assert live is not None
        assert self.store.claim(live, later(1), TICKET_LEASE) is Claim.TICKET
        started = self.store.start(doc["_id"], lock(worker))
        assert started is not None
        return started


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
def reg(registries: Callable[[], Registry]) -> Registry:
    registry = registries()
    registry.connection.ensure_indexes()
    return registry


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
