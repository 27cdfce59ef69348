"""The queue gate: turns due registry jobs into Celery tickets, in order.

It issues at most as many tickets as the cluster has idle worker slots (per
queue: only workers consuming a queue count for it), so the broker never holds
work a busy worker could prefetch out of priority order, and each ticket's
``max_parallel`` slot is taken before the ticket exists (``JobStore.claim``).

The sorted candidate scan is the one query whose cost grows with the backlog
(the test server materialises every match, even with a limit), so each
dispatcher keeps the scan's result and reuses it until it is used up, older
than ``candidate_ttl``, or a job became due out of turn: the store bumps a
generation counter whenever that happens, and every pass reads it. Stale
entries are harmless: each claim is still one guarded update.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery import Celery

from ..clock import now
from ..config.settings import Settings
from ..store.connection import Doc
from ..store.jobs import Claim, JobStore
from ..store.nodes import Nodes
from ..store.states import State
from .capacity import Capacity
from .control import Control
from .mutex import Mutex

log = logging.getLogger(__name__)

MUTEX = "dispatch"
SLOW_SCAN_FACTOR = 10


class Dispatcher:
    def __init__(self, store: JobStore, nodes: Nodes, control: Control, mutex: Mutex, app: Celery,
                 settings: Settings, default_queue: str) -> None:
        self._store = store
        self._nodes = nodes
        self._control = control
        self._mutex = mutex
        self._app = app
        self._settings = settings
        self._default_queue = default_queue
        self._candidates: list[Doc] = []
        self._scanned: tuple[object, float] = (None, 0.0)  # (generation, monotonic time)
        self._ttl = settings.candidate_ttl

    def _fresh(self, current: object) -> bool:
        generation, scanned_at = self._scanned
        return bool(self._candidates) and generation == current and time.monotonic() - scanned_at < self._ttl

    def _candidates_for(self, stamp: datetime, current: object | None) -> list[Doc]:
        if current is None:
            current = self._store.generation()
        if not self._fresh(current):
            self._scan(stamp, current)
        return self._candidates

    def _scan(self, stamp: datetime, generation: object) -> None:
        began = time.monotonic()
        self._candidates = self._store.due(stamp, self._settings.dispatch_scan)
        took = time.monotonic() - began
        # a slow scan (a big backlog on a server that reads every match) is repeated less often;
        # jobs made due out of turn still force a rescan through the generation
        self._ttl = max(self._settings.candidate_ttl, SLOW_SCAN_FACTOR * took)
        self._scanned = (generation, time.monotonic())

    def _prefetch(self) -> object:
        """Refresh a stale scan before taking the mutex, so a slow scan holds up no other dispatcher."""
        current = self._store.generation()
        if not (self._fresh(current) or self._control.paused() or self.capacity().free <= 0):
            self._scan(now(), current)
        return current

    def run(self, before: Callable[[], object] | None = None) -> int:
        """One or more passes under the cluster mutex; returns the tickets issued.

        ``before`` runs under the mutex too, for repairs that must not race a pass.
        """
        current: object | None = self._prefetch()
        token = self._mutex.acquire()
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
                if self._mutex.release(token):
                    return issued
        except BaseException:
            self._mutex.force_release(token)
            raise

    def pause(self) -> bool:
        """Once this returns no pass issues tickets: passes check the switch under the mutex."""
        paused = self._control.pause()
        self._mutex.wait_free()
        return paused

    def capacity(self) -> Capacity:
        return Capacity.of(self._nodes.alive(), self._store.busy_by_queue())

    def _pass(self, current: object | None = None) -> int:
        if self._control.paused():
            return 0
        capacity = self.capacity()
        if capacity.free <= 0:
            return 0
        issued = 0
        blocked: set[tuple[str, str]] = set()  # (name, queue) whose slots or queue are full
        stamp = now()
        used: set[object] = set()
        for doc in self._candidates_for(stamp, current):
            queue = doc.get("queue") or self._default_queue
            if (doc["name"], queue) in blocked:
                continue
            if not capacity.has_room(queue):
                blocked.add((doc["name"], queue))
                continue
            used.add(doc["_id"])  # whatever happens next, this entry is spent
            if self._due_inactive(doc, stamp):
                self._store.inactivate(doc, stamp)
                continue
            claim = self._store.claim(doc, stamp, self._settings.ticket_lease)
            if claim is Claim.FULL:
                blocked.add((doc["name"], queue))
                used.discard(doc["_id"])  # still waiting for a slot
            elif claim is Claim.TICKET:
                self._publish(doc, queue)
                capacity.take(queue)
                issued += 1
                if capacity.free <= 0:
                    break
        self._candidates = [doc for doc in self._candidates if doc["_id"] not in used]
        return issued

    @staticmethod
    def _due_inactive(doc: Doc, stamp: datetime) -> bool:
        """core4: a deferred job due again after its defer_max window is inactive, not run."""
        inactive_at = doc.get("inactive_at")
        return doc["state"] == State.DEFERRED.value and inactive_at is not None and inactive_at <= stamp

    def _publish(self, doc: Doc, queue: str) -> None:
        options: dict[str, Any] = {"task_id": str(doc["_id"]), "queue": queue}
        if doc.get("mid"):  # monitors (Flower) show the mother-child tree
            options["parent_id"] = options["root_id"] = doc["mid"]
        try:
            self._app.send_task(doc["name"], kwargs=doc.get("args") or {}, **options)
        except Exception:
            # the registry still says "dispatched": the ticket lease re-issues it
            log.exception("could not publish ticket for job %s; it is re-issued after the lease", doc["_id"])
