"""The queue gate: turns due registry jobs into Celery tickets, in order.

It issues at most as many tickets as the cluster has idle worker slots, so
the broker never holds work a busy worker could prefetch out of priority
order, and it takes each job's ``max_parallel`` slot before the ticket exists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery

from .clock import EPOCH, later, now
from .control import Control
from .gates import Gates
from .mutex import Mutex
from .registry import DISPATCH_ORDER, Doc, Registry
from .states import DISPATCH, INACTIVATE, State

log = logging.getLogger(__name__)

CANDIDATE_FIELDS = {"name": 1, "state": 1, "max_parallel": 1, "inactive_at": 1, "args": 1, "queue": 1}


class Dispatcher:
    def __init__(self, registry: Registry, app: Celery) -> None:
        self.registry = registry
        self.app = app
        self.gates = Gates(lambda: registry.gates)
        self.mutex = Mutex(lambda: registry.control, "dispatch", lease=registry.settings.dispatch_lease)
        self.control = Control(registry)

    def run(self, before: Callable[[], object] | None = None) -> int:
        """One or more passes under the cluster mutex; returns the tickets issued.

        ``before`` runs under the mutex too, for repairs that must not race a pass.
        """
        token = self.mutex.acquire()
        if token is None:
            return 0
        issued = 0
        try:
            if before is not None:
                before()
            while True:
                issued += self._pass()
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
        settings = self.registry.settings
        alive = self.registry.workers.find(
            {"heartbeat": {"$gte": later(-settings.worker_timeout)}}, {"concurrency": 1}
        )
        slots = sum(int(w.get("concurrency") or 0) for w in alive)
        if slots <= 0:
            return 0
        jobs = self.registry.jobs
        busy = jobs.count_documents({"state": State.RUNNING.value})
        busy += jobs.count_documents({"dispatched_until": {"$gt": EPOCH}})
        return slots - busy

    def _pass(self) -> int:
        if self.control.paused():
            return 0
        free = self.capacity()
        if free <= 0:
            return 0
        issued = 0
        full: set[str] = set()
        stamp = now()
        cursor = (
            self.registry.jobs.find({"query_at": {"$lte": stamp}}, CANDIDATE_FIELDS)
            .sort(DISPATCH_ORDER)
            .limit(self.registry.settings.dispatch_scan)
        )
        for doc in cursor:
            if doc["name"] in full:
                continue
            if self._inactivate(doc, stamp):
                continue
            if not self.gates.acquire(doc["name"], doc["_id"], doc["max_parallel"]):
                full.add(doc["name"])
                continue
            if not self._mark(doc, stamp):
                self.gates.release(doc["name"], doc["_id"])
                continue
            self._publish(doc)
            issued += 1
            if issued >= free:
                break
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
        try:
            self.app.send_task(doc["name"], kwargs=doc.get("args") or {}, **options)
        except Exception:
            # the registry still says "dispatched": the ticket lease re-issues it
            log.exception("could not publish ticket for job %s; it is re-issued after the lease", doc["_id"])
