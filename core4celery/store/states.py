"""core4's job states and every allowed transition, in one table.

Each transition is applied as one guarded ``update_one`` whose filter names
the states it may start from, so two processes racing for the same job can
never both win (see :class:`core4celery.store.jobs.JobStore`, the only code
that applies them).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class State(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    DEFERRED = "deferred"
    FAILED = "failed"
    COMPLETE = "complete"
    ERROR = "error"
    INACTIVE = "inactive"
    KILLED = "killed"

    def __str__(self) -> str:
        return self.value


WAITING = (State.PENDING, State.DEFERRED, State.FAILED)
STOPPED = (State.ERROR, State.INACTIVE, State.KILLED)
FINAL = (State.COMPLETE, *STOPPED)


@dataclass(frozen=True)
class Transition:
    name: str
    sources: tuple[State, ...]
    target: State | None  # None keeps the state and only changes fields

    def filter(self) -> dict[str, object]:
        return {"state": {"$in": [s.value for s in self.sources]}}


# dispatch: a waiting job gets a ticket; it stays in its state until a worker starts it
DISPATCH = Transition("dispatch", WAITING, None)
# requeue: a ticket was issued but never started within the lease (lost ticket)
REQUEUE = Transition("requeue", WAITING, None)
START = Transition("start", WAITING, State.RUNNING)
# complete: the final copy goes to the journal, then the live document is deleted (no live "complete")
COMPLETE = Transition("complete", (State.RUNNING,), State.COMPLETE)
DEFER = Transition("defer", (State.RUNNING,), State.DEFERRED)
FAIL = Transition("fail", (State.RUNNING,), State.FAILED)
ERROR = Transition("error", (State.RUNNING,), State.ERROR)
INACTIVATE = Transition("inactivate", (State.DEFERRED,), State.INACTIVE)
# recover: the worker running the job died; the job goes back to the queue
RECOVER = Transition("recover", (State.RUNNING,), State.PENDING)
# flag: zombie/wall marks on a running job (the state stays)
FLAG = Transition("flag", (State.RUNNING,), None)
# kill: waiting jobs stop at once; a running job is flagged and its owning worker ends the process
KILL_WAITING = Transition("kill_waiting", WAITING, State.KILLED)
REQUEST_KILL = Transition("request_kill", (State.RUNNING,), None)
KILL_RUNNING = Transition("kill_running", (State.RUNNING,), State.KILLED)
# restart: waiting jobs become due now; stopped jobs are claimed, journaled and enqueued anew
RESTART_WAITING = Transition("restart_waiting", (State.DEFERRED, State.FAILED), None)
CLAIM_RESTART = Transition("claim_restart", STOPPED, None)
# remove: any live job is flagged; it is journaled as soon as it is not running
REQUEST_REMOVE = Transition("request_remove", tuple(s for s in State if s is not State.COMPLETE), None)

# release: a pending job whose dependencies all completed becomes due (a chain's next step, a chord's body)
RELEASE = Transition("release", (State.PENDING,), None)
# a pending job whose dependency ended without completing can never run: it ends in error
ABANDON = Transition("abandon", (State.PENDING,), State.ERROR)
# wake: the last of a deferred mother's children ended, so she is due now rather than after defer_time
WAKE = Transition("wake", (State.DEFERRED,), None)

TRANSITIONS = {
    t.name: t
    for t in (
        DISPATCH, REQUEUE, START, COMPLETE, DEFER, FAIL, ERROR, INACTIVATE, RECOVER, FLAG,
        KILL_WAITING, REQUEST_KILL, KILL_RUNNING, RESTART_WAITING, CLAIM_RESTART, REQUEST_REMOVE,
        RELEASE, ABANDON,
    )
}
