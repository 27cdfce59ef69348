"""This worker's care for the jobs it runs (core4's ``flag_jobs``).

Only the worker that owns a running job renews its lease, sets its flags and
carries out a kill request, because only it can see and signal the pool
process. It renews only runs that are really in progress in its pool (Celery
still holds their request): a run whose ending could not be written stops
being renewed and is recovered through its lease, never held for ever. A kill
signals a pool process only while that process runs the job.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from datetime import datetime

from bson import ObjectId

from ..clock import now
from ..store.document import JobDoc, lock_of
from ..store.jobs import JobStore
from .flags import due_flags

log = logging.getLogger(__name__)

# job id -> pid of the pool process running it (None while not yet accepted by a process)
InProgress = Callable[[], dict[str, int | None]]


def celery_in_progress() -> dict[str, int | None]:
    """Requests this worker holds from receipt until their result is in (main process only)."""
    from celery.worker import state

    return {job_id: getattr(request, "worker_pid", None) for job_id, request in list(state.requests.items())}


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
    def __init__(self, store: JobStore, worker_id: str, run_lease: float,
                 in_progress: InProgress = celery_in_progress, request_dispatch: Callable[[], object] = lambda: 0) -> None:
        self._store = store
        self.worker_id = worker_id
        self._run_lease = run_lease
        self._in_progress = in_progress
        self._request_dispatch = request_dispatch

    def tend(self, active: list[ObjectId]) -> None:
        """Kill what was asked to die, recover what died, flag and renew what really runs.

        ``active``: the slot holders; with the jobs this worker's pool holds
        they are every job that can run here, looked up by id.
        """
        renew = []
        stamp = now()
        in_progress = self._in_progress()
        among = {*active, *(ObjectId(job_id) for job_id in in_progress if ObjectId.is_valid(job_id))}
        for doc in self._store.running_on(self.worker_id, among):
            pid = lock_of(doc).get("pid")
            if doc.get("killed_at"):
                self.kill(doc)
            elif not pid_alive(pid):
                self._store.recover(doc, f"pool process {pid} of {self.worker_id} died")
            elif str(doc["_id"]) in in_progress:
                self._flag(doc, stamp)
                renew.append(doc["_id"])
            else:
                log.warning("job %s is not in progress in its pool any more; its lease is left to expire", doc["_id"])
        if renew:
            self._store.renew(self.worker_id, renew, self._run_lease)

    def _flag(self, doc: JobDoc, stamp: datetime) -> None:
        for flag in due_flags(doc, stamp):
            if self._store.flag(doc, flag, stamp):
                log.warning("job %s (%s) flagged %s", doc["_id"], doc["name"], flag.removesuffix("_at"))

    def kill(self, doc: JobDoc) -> None:
        """Record the kill first, then SIGKILL the pool process only if it still runs this job."""
        pid = lock_of(doc).get("pid")
        if not self._store.kill(doc, "killed on request"):
            return
        runs = self._in_progress().get(str(doc["_id"]), 0)
        if not pid or pid == os.getpid():
            log.warning("job %s runs in the worker process itself (solo pool); it is not interrupted", doc["_id"])
        elif runs == pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        self._request_dispatch()
