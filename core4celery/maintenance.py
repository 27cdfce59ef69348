"""Housekeeping that keeps the registry honest; any worker may run it at any time.

Every repair is a guarded update, so several workers doing the same round
concurrently change each job at most once.
"""

from __future__ import annotations

import logging

from .clock import EPOCH, now
from .gates import Gates
from .registry import Doc, Registry
from .states import RECOVER, REQUEUE, State

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, registry: Registry, gates: Gates) -> None:
        self.registry = registry
        self.gates = gates

    def requeue_lost_tickets(self) -> int:
        """A ticket whose job did not start within the lease was lost with its worker."""
        stamp = now()
        lost = self.registry.jobs.find(
            {"dispatched_until": {"$gt": EPOCH, "$lt": stamp}}, {"name": 1, "dispatched_until": 1}
        )
        count = 0
        for doc in lost:
            if self.registry.transition(
                doc["_id"], REQUEUE, {"query_at": stamp},
                where={"dispatched_until": doc["dispatched_until"]}, unset=("dispatched_until",),
            ):
                self.gates.release(doc["name"], doc["_id"])
                log.warning("ticket for job %s was lost; re-issuing it", doc["_id"])
                count += 1
        return count

    def recover_expired_runs(self) -> int:
        """A running job whose lease was not renewed lost its worker: run it again."""
        expired = self.registry.jobs.find(
            {"state": State.RUNNING.value, "locked.lease_until": {"$lt": now()}}, {"name": 1, "locked": 1}
        )
        return sum(self.recover(doc, "lease expired") for doc in expired)

    def recover(self, doc: Doc, reason: str) -> bool:
        """running → pending for another trial; the attempt is not used (it was not the job's fault)."""
        stamp = now()
        locked = doc.get("locked") or {}
        error = {"exception": f"WorkerLost({reason!r})", "traceback": None, "at": stamp,
                 "worker": locked.get("worker")}
        if not self.registry.transition(
            doc["_id"], RECOVER, {"query_at": stamp, "locked": None, "last_error": error},
            where={"locked.run": locked.get("run")},
        ):
            return False
        self.gates.release(doc["name"], doc["_id"])
        log.warning("job %s lost its worker %s (%s); it runs again", doc["_id"], locked.get("worker"), reason)
        return True

    def repair_gates(self) -> int:
        """Free slots whose holder is neither dispatched nor running (call under the dispatch mutex)."""
        freed = 0
        for gate in self.gates.all():
            for holder in gate.get("holders", []):
                doc = self.registry.jobs.find_one({"_id": holder}, {"state": 1, "dispatched_until": 1})
                if doc and (doc["state"] == State.RUNNING.value or doc.get("dispatched_until")):
                    continue
                self.gates.release(gate["_id"], holder)
                freed += 1
        return freed
