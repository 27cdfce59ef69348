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


def kill_process(pid: int) -> None:
    """Without a pool to ask (tests of the node alone): the pool logs the process's death as an error."""
    os.kill(pid, signal.SIGKILL)


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


def over_time_limit(doc: JobDoc, stamp: datetime) -> bool:
    """Celery's hard ``time_limit``: the run is killed, as ``kill`` would (core4's ``wall_time`` only flags)."""
    limit = doc.get("time_limit")
    started = doc.get("started_at")
    return bool(limit) and started is not None and (stamp - started).total_seconds() > float(limit or 0)


class Node:
    def __init__(self, store: JobStore, worker_id: str, run_lease: float,
                 in_progress: InProgress = celery_in_progress, request_dispatch: Callable[[], object] = lambda: 0,
                 terminate: Callable[[int], object] = kill_process) -> None:
        """``terminate``: ends a pool process as the pool's own controlled termination, so a requested kill
        is not reported as a lost worker (an ERROR line and a WorkerLostError traceback)."""
        self._store = store
        self.worker_id = worker_id
        self._run_lease = run_lease
        self._in_progress = in_progress
        self._request_dispatch = request_dispatch
        self._terminate = terminate

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
            elif str(doc["_id"]) in in_progress and over_time_limit(doc, stamp):
                self.kill(doc, f"time_limit of {doc['time_limit']:g} s exceeded")
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

    def kill(self, doc: JobDoc, reason: str = "killed on request") -> None:
        """Record the kill first, then SIGKILL the pool process only if it still runs this job."""
        pid = lock_of(doc).get("pid")
        if not self._store.kill(doc, reason):
            return
        runs = self._in_progress().get(str(doc["_id"]), 0)
        if not pid or pid == os.getpid():
            log.warning("job %s runs in the worker process itself (solo pool); it is not interrupted", doc["_id"])
        elif runs == pid and pid_alive(pid):
            self._terminate(pid)
            log.info("job %s (%s) %s: its pool process %d was ended", doc["_id"], doc["name"], reason, pid)
        self._request_dispatch()
