"""Housekeeping that keeps the registry honest; any worker may run it at any time.

Every repair is a guarded update, so several workers doing the same round
concurrently change each job at most once.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from .clock import EPOCH, now
from .dispatcher import nudge
from .gates import Gates
from .registry import Doc, Registry
from .states import KILL_RUNNING, KILL_WAITING, RECOVER, REQUEUE, State

RUN_FIELDS = {"name": 1, "state": 1, "locked": 1, "killed_at": 1, "started_at": 1, "runtime": 1}

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
        if count:
            nudge(self.registry)
        return count

    def recover_expired_runs(self) -> int:
        """A running job whose lease was not renewed lost its worker: run it again."""
        expired = self.registry.jobs.find(
            {"state": State.RUNNING.value, "locked.lease_until": {"$lt": now()}}, RUN_FIELDS
        )
        return sum(self.recover(doc, "lease expired") for doc in expired)

    def recover(self, doc: Doc, reason: str) -> bool:
        """running → pending for another trial; the attempt is not used (it was not the job's fault).

        A job whose kill was requested is not run again: it ends killed.
        """
        if doc.get("killed_at"):
            return self.kill(doc, f"killed on request; its worker was lost ({reason})")
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
        nudge(self.registry)
        log.warning("job %s lost its worker %s (%s); it runs again", doc["_id"], locked.get("worker"), reason)
        return True

    def kill(self, doc: Doc, reason: str) -> bool:
        """End a job as killed (no retry, no attempt used); the caller stops its process, if any."""
        stamp = now()
        fields = killed_fields(doc, stamp, reason)
        if doc["state"] == State.RUNNING.value:
            done = self.registry.transition(
                doc["_id"], KILL_RUNNING, fields, where={"locked.run": (doc.get("locked") or {}).get("run")}
            )
        else:
            done = self.registry.transition(doc["_id"], KILL_WAITING, fields, unset=("dispatched_until",))
        if done:
            self.gates.release(doc["name"], doc["_id"])
            log.error("done execution with [killed] - [%s] with [%s]: %s", doc["name"], doc["_id"], reason)
        return done

    def sweep_removed(self) -> int:
        """Journal every job flagged for removal that is not running (core4's remove_jobs)."""
        query = {"removed_at": {"$gt": EPOCH}, "state": {"$ne": State.RUNNING.value}}
        count = 0
        for doc in self.registry.jobs.find(query, {"name": 1}):
            if self.registry.archive(doc["_id"], where=query) is not None:
                self.gates.release(doc["name"], doc["_id"])
                log.info("removed job %s (%s)", doc["_id"], doc["name"])
                count += 1
        return count

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


def killed_fields(doc: Doc, stamp: datetime, reason: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "locked": None, "query_at": None, "killed_at": doc.get("killed_at") or stamp,
        "last_error": {"exception": f"JobKilled({reason!r})", "traceback": None, "at": stamp},
    }
    started = doc.get("started_at")
    if doc["state"] == State.RUNNING.value and started is not None:
        fields["runtime"] = float(doc.get("runtime") or 0.0) + (stamp - started).total_seconds()
    return fields
