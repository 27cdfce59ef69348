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

from ..clock import now
from ..store.jobs import JobStore
from ..store.outage import Outage

log = logging.getLogger(__name__)


class Housekeeping:
    def __init__(self, store: JobStore, outage: Outage, run_lease: float) -> None:
        self._store = store
        self._outage = outage
        self._run_lease = run_lease
        self._started = time.monotonic()

    def round(self) -> None:
        stamp = now()
        self._store.requeue_lost(stamp)
        if self.may_recover():
            self.recover_expired_runs()
        self._store.sweep_removed()

    def may_recover(self) -> bool:
        settled = time.monotonic() - self._started >= self._run_lease
        return settled and not self._outage.recent(self._run_lease)

    def recover_expired_runs(self) -> int:
        """A running job whose lease was not renewed lost its worker (or its ending): settle it."""
        expired = self._store.expired_runs(now())
        return sum(self._store.recover(doc, "lease expired") for doc in expired)
