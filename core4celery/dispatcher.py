"""The queue gate: turns due registry jobs into Celery tickets, in order.

It issues at most as many tickets as the cluster has idle worker slots, so
the broker never holds work a busy worker could prefetch out of priority
order, and it takes each job's ``max_parallel`` slot before the ticket exists.

The sorted candidate scan is the one query whose cost grows with the backlog
(the test server materialises every match, even with a limit), so each
dispatcher keeps the scan's result and reuses it until it is used up, older
than ``candidate_ttl``, or a job became due out of turn: everything that makes
a job due "now" (enqueue, restart, recovery) bumps a generation counter that
every pass reads. Stale entries are harmless: each ticket is still one
guarded update.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from .clock import EPOCH, later, now
from .control import Control
from .events import JobEvents
from .gates import Gates, Slot
from .mutex import Mutex
from .registry import DISPATCH_INDEX, DISPATCH_ORDER, Doc, Registry
from .states import DISPATCH, INACTIVATE, State

log = logging.getLogger(__name__)

MUTEX = "dispatch"
SLOW_SCAN_FACTOR = 10
CANDIDATE_FIELDS = {"name": 1, "state": 1, "max_parallel": 1, "inactive_at": 1, "args": 1, "queue": 1, "mid": 1}


def nudge(registry: Registry) -> None:
    """A job became due out of turn: every dispatcher rescans on its next pass.

    No upsert: until the mutex document exists no dispatcher has cached anything.
    """
    registry.control.update_one({"_id": MUTEX}, {"$inc": {"generation": 1}})


class BackgroundDispatch:
    """Dispatcher passes on a thread of this process, requested by ``kick()``.

    Used inside a running job: the job's process is free for its next ticket
    at once, and tickets are published outside the job's Celery context, so
    Celery does not record unrelated jobs as the job's children.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def kick(self) -> None:
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, name="core4celery-dispatch", daemon=True)
                self._thread.start()
        self._wanted.set()

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                self.dispatcher.run()
            except Exception:
                log.exception("core4celery dispatch failed; the worker's ticker retries")


class Dispatcher:
    def __init__(self, registry: Registry, app: Celery, events: JobEvents | None = None) -> None:
        self.registry = registry
        self.app = app
        self.events = events
        self.gates = Gates(lambda: registry.gates)
        self.mutex = Mutex(lambda: registry.control, MUTEX, lease=registry.settings.dispatch_lease)
        self.control = Control(registry)
        self._candidates: list[Doc] = []
        self._scanned: tuple[object, float] = (None, 0.0)  # (generation, monotonic time)
        self._ttl = registry.settings.candidate_ttl

    def nudge(self) -> None:
        nudge(self.registry)

    def _generation(self) -> object:
        doc = self.registry.control.find_one({"_id": MUTEX}, {"generation": 1})
        return (doc or {}).get("generation", 0)

    def candidates(self, stamp: Any, current: object = None) -> list[Doc]:
        """The cached scan; rescanned when used up, older than its ttl, or a job became due out of turn.

        ``current`` is a generation the caller has just read; otherwise it is read here.
        """
        if current is None:
            current = self._generation()
        if not self._fresh(current):
            self._scan(stamp, current)
        return self._candidates

    def _fresh(self, current: object) -> bool:
        generation, scanned_at = self._scanned
        return bool(self._candidates) and generation == current and time.monotonic() - scanned_at < self._ttl

    def _scan(self, stamp: Any, generation: object) -> None:
        began = time.monotonic()
        self._candidates = list(
            self.registry.jobs.find({"query_at": {"$lte": stamp}}, CANDIDATE_FIELDS)
            .sort(DISPATCH_ORDER)
            .hint(DISPATCH_INDEX)  # equality-sort-range index; small collections would plan a COLLSCAN
            .limit(self.registry.settings.dispatch_scan)
        )
        took = time.monotonic() - began
        # a slow scan (a big backlog on a server that reads every match) is repeated less often;
        # jobs made due out of turn still force a rescan through the generation
        self._ttl = max(self.registry.settings.candidate_ttl, SLOW_SCAN_FACTOR * took)
        self._scanned = (generation, time.monotonic())

    def _prefetch(self) -> object:
        """Refresh a stale scan before taking the mutex, so a slow scan holds up no other dispatcher.

        Returns the generation it read, for the first pass of this run.
        """
        current = self._generation()
        if not (self._fresh(current) or self.control.paused() or self.capacity() <= 0):
            self._scan(now(), current)
        return current

    def run(self, before: Callable[[], object] | None = None) -> int:
        """One or more passes under the cluster mutex; returns the tickets issued.

        ``before`` runs under the mutex too, for repairs that must not race a pass.
        """
        current = self._prefetch()
        token = self.mutex.acquire()
        if token is None:
            return 0
        issued = 0
        try:
            if before is not None:
                before()
            while True:
                # a later pass runs because someone asked for it: read the generation afresh
                issued += self._pass(current)
                current = None
                if self.mutex.release(token):
                    return issued
        except BaseException:
            self.mutex.force_release(token)
            raise

    def pause(self) -> bool:
        """Once this returns no pass issues tickets: passes check the switch under the mutex."""
        paused = self.control.pause()
        self.mutex.wait_free()
        return paused

    def capacity(self) -> int:
        slots = sum(int(w.get("concurrency") or 0) for w in self.registry.alive_workers({"concurrency": 1}))
        if slots <= 0:
            return 0
        jobs = self.registry.jobs
        busy = jobs.count_documents({"state": State.RUNNING.value})
        busy += jobs.count_documents({"dispatched_until": {"$gt": EPOCH}})
        return slots - busy

    def _pass(self, current: object = None) -> int:
        if self.control.paused():
            return 0
        free = self.capacity()
        if free <= 0:
            return 0
        issued = 0
        full: set[str] = set()
        stamp = now()
        used: set[object] = set()
        for doc in self.candidates(stamp, current):
            if doc["name"] in full:
                continue
            used.add(doc["_id"])  # whatever happens next, this entry is spent
            if self._inactivate(doc, stamp):
                continue
            slot = self.gates.acquire(doc["name"], doc["_id"], doc["max_parallel"])
            if slot is Slot.FULL:
                full.add(doc["name"])
                used.discard(doc["_id"])  # still waiting for a slot
                continue
            if slot is Slot.HELD:  # dispatched by someone else since our scan
                continue
            if not self._mark(doc, stamp):
                self.gates.release(doc["name"], doc["_id"])
                continue
            self._publish(doc)
            issued += 1
            if issued >= free:
                break
        self._candidates = [doc for doc in self._candidates if doc["_id"] not in used]
        return issued

    def _inactivate(self, doc: Doc, stamp: Any) -> bool:
        """core4: a deferred job due again after its defer_max window is inactive, not run."""
        inactive_at = doc.get("inactive_at")
        if doc["state"] != State.DEFERRED.value or inactive_at is None or inactive_at > stamp:
            return False
        done = self.registry.transition(
            doc["_id"], INACTIVATE, {"query_at": None, "finished_at": stamp}, where={"query_at": {"$lte": stamp}}
        )
        if done:
            log.error("done execution with [inactive] - [%s] with [%s]", doc["name"], doc["_id"])
            if self.events is not None:
                self.events.send("inactive", doc["_id"], exception="inactive: still deferred after defer_max")
        return True

    def _mark(self, doc: Doc, stamp: Any) -> bool:
        lease = later(self.registry.settings.ticket_lease)
        return self.registry.transition(
            doc["_id"], DISPATCH, {"dispatched_until": lease, "query_at": None},
            where={"query_at": {"$lte": stamp}, "removed_at": None, "killed_at": None},
        )

    def _publish(self, doc: Doc) -> None:
        options: dict[str, Any] = {"task_id": str(doc["_id"])}
        if doc.get("queue"):
            options["queue"] = doc["queue"]
        if doc.get("mid"):  # monitors (Flower) show the mother-child tree
            options["parent_id"] = options["root_id"] = doc["mid"]
        try:
            self.app.send_task(doc["name"], kwargs=doc.get("args") or {}, **options)
        except Exception:
            # the registry still says "dispatched": the ticket lease re-issues it
            log.exception("could not publish ticket for job %s; it is re-issued after the lease", doc["_id"])
