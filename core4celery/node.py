"""This worker's registration, heartbeat, and care for the jobs it runs.

Only the worker that owns a running job renews its lease, sets its flags
and carries out a kill request, because only it can see and signal the pool
process (core4's ``flag_jobs``). Jobs of workers that vanished are recovered
by every worker through :mod:`core4celery.maintenance`.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import TYPE_CHECKING

from .clock import later, now
from .flags import FLAG_FIELDS, set_flags
from .maintenance import RUN_FIELDS, Maintenance
from .registry import Doc
from .states import State

if TYPE_CHECKING:
    from .core import Core4

log = logging.getLogger(__name__)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class Node:
    def __init__(self, core4: Core4, worker_id: str, hostname: str, concurrency: int) -> None:
        self.core4 = core4
        self.registry = core4.registry
        self.worker_id = worker_id
        self.hostname = hostname
        self.concurrency = concurrency
        self.started_at = now()

    def beat(self, draining: bool = False) -> None:
        self.registry.workers.update_one(
            {"_id": self.worker_id},
            {"$set": {
                "hostname": self.hostname, "pid": os.getpid(), "heartbeat": now(),
                "concurrency": 0 if draining else self.concurrency, "slots": self.concurrency,
                "draining": draining, "started_at": self.started_at,
            }},
            upsert=True,
        )

    def running(self) -> list[Doc]:
        return list(self.registry.jobs.find(
            {"locked.worker": self.worker_id, "state": State.RUNNING.value}, {**RUN_FIELDS, **FLAG_FIELDS}
        ))

    def tend(self, maintenance: Maintenance) -> None:
        """Kill what was asked to die, recover what died, flag and renew the rest."""
        alive = []
        stamp = now()
        for doc in self.running():
            pid = (doc.get("locked") or {}).get("pid")
            if doc.get("killed_at"):
                self.kill(doc, maintenance)
            elif not pid_alive(pid):
                maintenance.recover(doc, f"pool process {pid} of {self.worker_id} died")
            else:
                set_flags(self.registry, doc, stamp)
                alive.append(doc["_id"])
        if alive:
            self.registry.jobs.update_many(
                {"_id": {"$in": alive}, "state": State.RUNNING.value, "locked.worker": self.worker_id},
                {"$set": {"locked.lease_until": later(self.registry.settings.run_lease)}},
            )

    def kill(self, doc: Doc, maintenance: Maintenance) -> None:
        """Record the kill first, then SIGKILL the pool process unless it already moved on to another job."""
        if not maintenance.kill(doc, "killed on request"):
            return
        self.core4.events.send("killed", doc["_id"], exception="JobKilled('killed on request')")
        pid = (doc.get("locked") or {}).get("pid")
        if not pid or pid == os.getpid():
            log.warning("job %s runs in the worker process itself (solo pool); it is not interrupted", doc["_id"])
        elif pid_alive(pid) and not self.registry.jobs.find_one(
            {"locked.pid": pid, "locked.worker": self.worker_id, "state": State.RUNNING.value}, {"_id": 1}
        ):
            os.kill(pid, signal.SIGKILL)
        self.core4.dispatch()

    def leave(self) -> None:
        self.registry.workers.delete_one({"_id": self.worker_id})
