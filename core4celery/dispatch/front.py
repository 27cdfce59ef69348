"""The front: the bounded set of waiting jobs that dispatchers scan.

On SecantusDB a query costs in proportion to the documents it matches, with
or without a limit, so a scan of every waiting job for the next due ones took
seconds at 100,000 of them, and every process scanned. Dispatchers scan only
the front instead: jobs carrying ``front_at`` (their ``query_at``) under a
single-field index, at most a few hundred of them.

How it stays right:

* An old job waiting again (deferred, failed, recovered, re-queued) joins the
  front at once: it is older than any job left outside.
* A new job joins it unless the front has spilled at its rank or above
  (``spill`` in the slots document): one that outranks every job left outside
  still goes first; one that does not queues behind them (FIFO).
  Enqueuers know ``spill`` from a slots read at most ``SPILL_TTL`` old.
* While ``spill`` is set, dispatchers claim nothing ranked below it (those
  wait until the jobs outside have been brought in): strict priority holds.
* The cluster's keeper (one worker at a time, under a lease in the slots document, see worker/step.py)
  trims the front when it grew past twice its size (the lowest-ranked leave it;
  ``spill`` becomes the highest rank that left) and refills it from the jobs
  outside, in dispatch order, when fewer than half its size of due jobs ranked at or
  above ``spill`` are left in it (deferred mothers waiting for their children
  must not keep the children out, nor old jobs ranked below it); ``spill``
  then falls to the rank of the first job still outside; once nothing is
  outside it is cleared, and the keeper looks once more ``RECHECK`` seconds later for jobs
  enqueued outside by a process that had not yet seen it cleared.

The keeper reads the jobs outside once (``OUTSIDE_READ`` of them, the one
query that still costs in proportion to the backlog) and refills from that
list, rereading only when it is used up or a job ranking above its next
entry was enqueued since (the slots document's rank generations).
"""

from __future__ import annotations

import logging
import time

from ..clock import now
from ..store.connection import Doc
from ..store.jobs import JobStore, dispatch_key, rank_of
from ..store.slots import SlotState, rank_of_key

log = logging.getLogger(__name__)

FRONT_SIZE = 500  # jobs a refill or a trim leaves in the front; trimmed above twice that, refilled below half
OUTSIDE_READ = 20_000  # jobs outside the front read at once, in dispatch order
RECHECK = 2.0  # seconds after clearing the spill: enqueuers may have held it for SPILL_TTL


class FrontKeeper:
    def __init__(self, store: JobStore, size: int = FRONT_SIZE) -> None:
        self._store = store
        self._size, self._high, self._low = size, 2 * size, max(1, size // 2)
        self._outside: list[Doc] = []  # jobs outside the front in dispatch order, as last read
        self._read_all = False  # that read found every job outside
        self._ranks: dict[str, int] = {}  # rank generations when it was read
        self._recheck_at = 0.0  # monotonic: look for late spills then (0: no need)

    def keep(self) -> None:
        """Only by the holder of the keeper's lease (worker/step.py): one process keeps the front."""
        if self._recheck_at and time.monotonic() >= self._recheck_at:
            self._recheck_at = 0.0
            self._store.enter_front(self._store.outside_front(OUTSIDE_READ))
        state = self._store.slots()
        front = self._store.front()
        if len(front) > self._high:
            self._trim(front, state)
        elif state.spill is not None:
            relevant = self._due_at_or_above(front, state.spill)
            if relevant < self._low:
                self._refill(relevant, state)

    def forget(self) -> None:
        """Another process keeps the front: this one's list of the jobs outside goes stale."""
        self._outside = []

    @staticmethod
    def _due_at_or_above(front: list[Doc], spill: tuple[bool, int]) -> int:
        stamp = now()
        return sum(doc["front_at"] <= stamp and rank_of(doc) >= spill for doc in front)

    def _trim(self, front: list[Doc], state: SlotState) -> None:
        leaving = sorted(front, key=dispatch_key)[self._size:]
        spill = max([rank_of(doc) for doc in leaving] + ([state.spill] if state.spill else []))
        self._store.spill(spill)  # first: from now on new jobs of that rank queue behind those leaving
        self._store.leave_front([doc["_id"] for doc in leaving])
        self._outside = []
        log.info("front trimmed: %d jobs wait outside it; new jobs ranked %s or lower join them", len(leaving), spill)

    def _refill(self, relevant: int, state: SlotState) -> None:
        """Bring in the next jobs outside; ``relevant``: due jobs in the front ranked at or above the spill.

        The spill then falls to the rank of the first job still outside: a new
        job ranked above it outranks everything outside and may join the front.
        """
        if not self._outside or self._outranked(state):
            self._outside = self._store.outside_front(OUTSIDE_READ)
            self._read_all = len(self._outside) < OUTSIDE_READ
            self._ranks = dict(state.ranks)
        batch = self._outside[: max(0, self._size - relevant)]
        del self._outside[: len(batch)]
        self._store.enter_front(batch)
        if self._outside:
            if rank_of(self._outside[0]) != state.spill:
                self._store.spill(rank_of(self._outside[0]))
        elif self._read_all:
            self._store.spill(None)
            self._recheck_at = time.monotonic() + RECHECK
            log.info("front refilled with the last jobs outside it")

    def _outranked(self, state: SlotState) -> bool:
        """Was a job enqueued since the read that ranks above the list's next entry (it is not in the list)?"""
        head = rank_of(self._outside[0])
        return any(key != "any" and self._ranks.get(key) != n and rank_of_key(key) > head
                   for key, n in state.ranks.items())
