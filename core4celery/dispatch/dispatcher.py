"""The queue gate: turns due registry jobs into Celery tickets, in order.

A ticket exists only for a job holding an idle worker slot of its queue and
one of its task's ``max_parallel`` slots (see :mod:`core4celery.store.slots`),
so the broker never holds work a busy worker could prefetch out of priority
order. Tickets are issued on three paths, each a few guarded commands:

* **offer** (enqueue): a job due now takes its slots and is inserted already
  dispatched when a worker slot is idle;
* **hand over** (a run ended): the finishing process gives its slots straight
  to the next due job in dispatch order, so a freed slot never idles while
  work waits and no broker poll stands between two jobs;
* **tick** (every worker's timer): jobs that became due by the clock, or slots
  that became free (a new worker, a reconcile) are filled.

The sorted candidate scan is the one query whose cost grows with the backlog,
so each process keeps the scan's result and reuses it until it is used up,
older than ``candidate_ttl``, or a job became due out of turn (the slots
document's generation moved). Stale entries are harmless: every claim is a
guarded update.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from celery import Celery

from ..clock import now
from ..config.settings import Settings
from ..metrics import code_path
from ..store.connection import Doc
from ..store.document import TICKET_HEADER, JobDoc, ticket_header
from ..store.jobs import Claim, JobStore, holder_of, rank_of
from ..store.nodes import Nodes, slots_by_queue
from ..store.slots import Holder, SlotState
from ..store.states import State
from .control import Control
from .routing import Router, is_routed

log = logging.getLogger(__name__)

SLOW_SCAN_FACTOR = 10
SLOW_SCAN = 0.25  # seconds: a scan this slow reads SLOW_SCAN_FACTOR times more candidates next time
CLAIM_WINDOW = 8  # candidates the server chooses among in one claim
FULL_PAUSE = 0.05  # seconds an enqueuing process assumes the cluster stays full after a failed take
SPILL_TTL = 0.5  # seconds an enqueuing process trusts the front's spill rank it last read (see front.py)


class Dispatcher:
    def __init__(self, store: JobStore, nodes: Nodes, control: Control, app: Celery, settings: Settings,
                 ring: Callable[[str], object] | None = None, nudge: Callable[[], object] = lambda: None) -> None:
        self._store = store
        self._ring = ring  # wakes workers waiting for wake-ups (core4celery.wakeups)
        self._nudge = nudge  # wakes this worker's own consumer between polls (core4celery.nudges)
        self._nodes = nodes
        self._control = control
        self._app = app
        self._settings = settings
        self._candidates: list[Doc] = []
        self._scanned: tuple[int, float] = (-1, 0.0)  # (generation, monotonic time)
        self._ranks: dict[str, int] = {}  # the rank generations the cached list reflects
        self._ttl = settings.candidate_ttl
        self._scan_limit = settings.dispatch_scan
        self._full_until = 0.0  # monotonic: enqueues until then skip the take (the cluster was full)
        self._spill: tuple[tuple[bool, int] | None, float] = (None, -SPILL_TTL)  # (spill rank, monotonic when read)
        self._router = Router(nodes)

    # -- the three paths -------------------------------------------------------
    def offer(self, doc: JobDoc) -> bool:
        """Enqueue ``doc`` (due now) with its ticket if a worker slot is idle; else it waits.

        After a take found no idle slot, enqueues skip the attempt for a moment
        (a burst into a full cluster); the next hand-over or tick picks them up.
        """
        with code_path("enqueue"):
            if time.monotonic() < self._full_until or is_routed(doc):  # a routed job's worker is chosen at claim
                self._store.enqueue(doc, self._admits(doc))
                return False
            dispatched = self._store.enqueue_dispatched(doc, self._settings.ticket_lease, lambda: self._admits(doc))
            if not dispatched:
                self._full_until = time.monotonic() + FULL_PAUSE
        if dispatched:
            with code_path("dispatch"):
                self._publish(doc, ring=True)  # it took an idle slot: that worker may be asleep
        return dispatched

    def _admits(self, doc: Mapping[str, Any]) -> bool:
        """Does a new waiting job join the front (it outranks every job left outside)?"""
        spill, read_at = self._spill
        if time.monotonic() - read_at >= SPILL_TTL:
            spill = self._seen(self._store.slots()).spill
        return spill is None or rank_of(doc) > spill

    def _seen(self, state: SlotState) -> SlotState:
        self._spill = (state.spill, time.monotonic())
        return state

    def hand_over(self, finished: Holder, ring: bool = False) -> None:
        """A run ended: its slots go to the next due job, or back when nothing waits.

        ``ring``: the run was long, so the consumer it frees may be waiting for a wake-up.
        """
        with code_path("dispatch"):
            if self._nothing_due():  # the common idle case: one command, no read before
                after = self._store.give_and_read(finished)
                if after is not None and not self._fresh(after):
                    self._fill_idle(after)  # a job became due meanwhile: the slot just given goes to it
                return
            state = self._seen(self._store.slots())
            left: Holder | None = finished
            if not state.paused:
                _, left = self._fill(state, finished, limit=1, ring=ring, by_clock=False)
            if left is not None:
                self._store.give(left)

    def tick(self) -> int:
        """Fill idle slots with due jobs; returns the tickets issued."""
        with code_path("dispatch"):
            return self._fill_idle(self._store.slots())

    def _fill_idle(self, state: SlotState) -> int:
        self._seen(state)
        free = sum(max(0, n) for n in state.free.values())
        if state.paused or free == 0:
            return 0
        issued, _ = self._fill(state, None, limit=free, ring=True, by_clock=True)
        return issued

    # -- filling ---------------------------------------------------------------
    def _fill(self, state: SlotState, handed: Holder | None, limit: int, ring: bool,
              by_clock: bool) -> tuple[int, Holder | None]:
        """Claim candidates in order while slots allow; ``handed``: slots to give away first.

        Each claim lets the server pick the first still-due job of a small
        window of the cached list (other processes walk the same list).
        Returns the tickets issued and the handed slots if nobody took them.
        """
        issued = 0
        stamp = now()
        candidates = self._candidates_for(stamp, state, by_clock)
        used: set[object] = set()
        while issued < limit:
            window = self._window(candidates, used, state, handed, stamp)
            if not window:
                break
            claim, doc = self._store.claim_first(window, stamp, self._settings.ticket_lease, handed=handed)
            used.update(self._passed(window, doc, claim))
            if claim is Claim.FULL:
                # the snapshot was stale (others took the slots, or the handed ones are gone):
                # every further try would cost three commands for nothing; the next tick rereads
                break
            if claim is Claim.TICKET and doc is not None:
                self._publish(doc, ring or self._elsewhere(doc, handed))
                handed = None
                issued += 1
        self._candidates = [doc for doc in self._candidates if doc["_id"] not in used]
        return issued, handed

    @staticmethod
    def _elsewhere(doc: Doc, handed: Holder | None) -> bool:
        """A handed-over ticket for another queue than the finished job's: the finishing worker's nudge
        reaches only its own consumer, which may not consume that queue, so it rings."""
        return handed is not None and holder_of(doc).queue != handed.queue

    def _window(self, candidates: list[Doc], used: set[object], state: SlotState, handed: Holder | None,
                stamp: datetime) -> list[Doc]:
        """The next few unused candidates of one rank the slots could serve.

        One rank, because the claim lets the server choose the oldest of them;
        due-inactive candidates are settled on the way. Nothing ranked below
        the front's spill rank: jobs outside the front go first.
        """
        window: list[Doc] = []
        for doc in candidates:
            if len(window) >= CLAIM_WINDOW or (window and rank_of(doc) != rank_of(window[0])):
                break
            if state.spill is not None and rank_of(doc) < state.spill:
                break
            if doc["_id"] in used or (handed is not None and doc["_id"] == handed.job_id):
                continue
            forced = not is_routed(doc) and bool(doc.get("force")) and not state.room(holder_of(doc), handed)
            if is_routed(doc) or forced:
                if window:
                    break  # a routed job is claimed alone: its worker queue is its own
                # force: past a closed resource gate (that worker's shared slots are withdrawn)
                route = self._router.route(doc, state, handed, gated_only=forced)
                if route is None:
                    continue
                window.append({**doc, "route": route})
                break
            if not state.room(holder_of(doc), handed):
                continue
            if self._due_inactive(doc, stamp):
                used.add(doc["_id"])
                self._store.inactivate(doc, stamp)
                continue
            window.append(doc)
        return window

    @staticmethod
    def _passed(window: list[Doc], claimed: Doc | None, claim: Claim) -> list[object]:
        """Entries spent by a claim: every one before the claimed job (none of those was due) and,
        unless it is waiting again (FULL), the claimed job itself."""
        ids = [doc["_id"] for doc in window]
        if claimed is None or claimed["_id"] not in ids:
            return ids
        end = ids.index(claimed["_id"])
        return ids[: end if claim is Claim.FULL else end + 1]

    def _candidates_for(self, stamp: datetime, state: SlotState, by_clock: bool) -> list[Doc]:
        """``by_clock``: also rescan once ``candidate_ttl`` passed (jobs that became due by the clock).

        Only the timer pass does: with every pool process of every worker
        rescanning each ``candidate_ttl``, scans (which cost in proportion to
        the backlog on SecantusDB) took the whole server at 1,000 pending jobs.
        A hand-over keeps its list until it is used up or outranked.
        """
        if not self._fresh(state, by_clock):
            began = time.monotonic()
            self._candidates = self._store.due(stamp, self._scan_limit)
            took = time.monotonic() - began
            # a slow scan (a big backlog on a server that reads every match) is repeated less often
            # and reads more, so it lasts longer; jobs made due out of turn still force a rescan
            # through the generation
            self._ttl = max(self._settings.candidate_ttl, SLOW_SCAN_FACTOR * took)
            slow = took >= SLOW_SCAN
            self._scan_limit = self._settings.dispatch_scan * (SLOW_SCAN_FACTOR if slow else 1)
            self._scanned = (state.generation, time.monotonic())
            self._ranks = dict(state.ranks)
        return self._candidates

    def _nothing_due(self) -> bool:
        """This process's last scan found nothing due, and it is recent enough to trust."""
        return not self._candidates and time.monotonic() - self._scanned[1] < self._ttl

    def _fresh(self, state: SlotState, by_clock: bool = True) -> bool:
        """Reuse the list unless too old, or a job became due that ranks before the next candidate."""
        generation, scanned_at = self._scanned
        if time.monotonic() - scanned_at >= self._ttl and (by_clock or not self._candidates):
            return False
        if generation == state.generation:
            return True  # an empty list is fresh too: nothing was due and nothing became due out of turn
        if not self._candidates:
            return False
        head = self._candidates[0]
        return not state.outranks(self._ranks, rank_of(head))

    @staticmethod
    def _due_inactive(doc: Doc, stamp: datetime) -> bool:
        """core4: a deferred job due again after its defer_max window is inactive, not run."""
        inactive_at = doc.get("inactive_at")
        return doc["state"] == State.DEFERRED.value and inactive_at is not None and inactive_at <= stamp

    def _publish(self, doc: Any, ring: bool) -> None:
        options: dict[str, Any] = {"task_id": str(doc["_id"]), "queue": holder_of(doc).queue,
                                   "headers": {TICKET_HEADER: ticket_header(doc)}}
        if doc.get("mid"):  # monitors (Flower) show the mother-child tree
            options["parent_id"] = options["root_id"] = doc["mid"]
        try:
            self._app.send_task(doc["name"], kwargs=doc.get("args") or {}, **options)
        except Exception:
            # the registry still says "dispatched": the ticket lease re-issues it
            log.exception("could not publish ticket for job %s; it is re-issued after the lease", doc["_id"])
            return
        self._nudge()
        if ring and self._ring is not None:
            self._ring(options["queue"])

    # -- upkeep ----------------------------------------------------------------
    def reconcile(self) -> bool:
        """Idle worker slots per queue follow the alive workers (one came, went or died)."""
        return self._store.reconcile(slots_by_queue(self._nodes.alive()))

    def pause(self, project: str | None = None) -> bool:
        """Once this returns no slot is taken or handed over: every take checks the switch.

        ``project``: only the jobs whose names are under it (``project.``), as core4's project maintenance.
        """
        if project is not None:
            paused = self._control.pause_project(project)
            self._store.pause_project(project, True)
            return paused
        paused = self._control.pause()
        self._store.pause(True)
        return paused

    def resume(self, project: str | None = None) -> bool:
        if project is not None:
            resumed = self._control.resume_project(project)
            self._store.pause_project(project, False)
        else:
            resumed = self._control.resume()
            self._store.pause(False)
        self.tick()
        return resumed
