"""Housekeeping that keeps the registry honest; any worker may run it at any time.

Every repair is one job-store transition, guarded, so several workers doing
the same round concurrently change each job at most once.

Recovering another worker's runs waits for ``run_lease`` after this process
saw the server unreachable (and after it started): during an outage nobody
could renew a lease, and the runs' own workers need one round to renew them
before anyone may take them for dead.
"""

from __future__ import annotations

import logging
import time

from bson import ObjectId

from ..clock import now
from ..store.jobs import JobStore
from ..store.outage import Outage

log = logging.getLogger(__name__)

FULL_ROUND = 30.0  # seconds between rounds that query every job, not only the slot holders
FULL_ROUND_SHARE = 50  # a full round that took t seconds waits at least this many times t for the next


class Housekeeping:
    def __init__(self, store: JobStore, outage: Outage, run_lease: float) -> None:
        self._store = store
        self._outage = outage
        self._run_lease = run_lease
        self._started = time.monotonic()
        self._next_full = 0.0

    def round(self, active: list[ObjectId]) -> None:
        """``active``: the slot holders (every job with a ticket out or running).

        Those are all a round has to look at, by id. A round that queries the
        whole jobs collection runs only every ``FULL_ROUND`` seconds (or less
        often when it is slow: on SecantusDB such a query reads every waiting
        job) and catches what the holders miss: a job flagged for removal
        whose operator died before moving it, a slot holder repaired away.
        """
        stamp = now()
        full = time.monotonic() >= self._next_full
        among = None if full else active
        began = time.monotonic()
        self._store.requeue_lost(stamp, among)
        if self.may_recover():
            self.recover_expired_runs(among)
        self._store.sweep_removed(among)
        if full:
            took = time.monotonic() - began
            self._next_full = time.monotonic() + max(FULL_ROUND, FULL_ROUND_SHARE * took)

    def may_recover(self) -> bool:
        settled = time.monotonic() - self._started >= self._run_lease
        return settled and not self._outage.recent(self._run_lease)

    def recover_expired_runs(self, among: list[ObjectId] | None = None) -> int:
        """A running job whose lease was not renewed lost its worker (or its ending): settle it."""
        expired = self._store.expired_runs(now(), among)
        return sum(self._store.recover(doc, "lease expired") for doc in expired)
