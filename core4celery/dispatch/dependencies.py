"""Jobs that wait for other jobs: ``dependency=[ids]``, a chain's next step, a chord's body.

The links live in the job documents (``after`` on the waiting job,
``successors`` on the awaited ones), so a process that dies anywhere loses
nothing. The run that ends an awaited job settles its successors at once;
every worker also sweeps the waiting jobs every few seconds, which catches
what no run could: a link added after the awaited job's ticket went out, a
run that died right after its ending, a kill or a removal.

A waiting job is *released* (due, with the results it is fed) when every job
it waits for completed, and *abandoned* (error) as soon as one of them ended
any other way — and then its own successors are abandoned in turn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from datetime import timedelta
from typing import Any

from bson import ObjectId
from pymongo.errors import DocumentTooLarge, WriteError

from ..clock import now
from ..store.document import JobDoc
from ..store.jobs import JobStore
from ..store.states import STOPPED, State

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 5.0  # seconds between sweeps of one process
SWEEP_LIMIT = 1000  # waiting jobs looked at per sweep
MISSING_GRACE = 60.0  # seconds a dependency may be no job yet (a chord's members are enqueued after its body)
FAILED_ENDINGS = {state.value for state in STOPPED}


class Dependencies:
    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._next_sweep = 0.0

    def settle(self, job_ids: Collection[ObjectId]) -> int:
        """Release or abandon those of these jobs whose dependencies have all ended (a run's successors)."""
        if not job_ids:
            return 0
        return self._settle(self._store.blocked(len(job_ids), among=job_ids))

    def sweep(self) -> int:
        """Every SWEEP_INTERVAL: settle every waiting job (the slow path)."""
        clock = time.monotonic()
        if clock < self._next_sweep:
            return 0
        self._next_sweep = clock + SWEEP_INTERVAL
        return self._settle(self._store.blocked(SWEEP_LIMIT))

    def _settle(self, docs: list[JobDoc]) -> int:
        settled = 0
        while docs:
            outcomes = self._store.outcomes({job for doc in docs for job in doc["after"]})
            abandoned: set[ObjectId] = set()
            for doc in docs:
                done, error = self._verdict(doc, outcomes)
                if error is not None:
                    if self._store.abandon(doc, error):
                        settled += 1
                        abandoned.update(doc.get("successors") or ())
                elif done:
                    settled += self._release(doc, outcomes)
            docs = self._store.blocked(len(abandoned), among=abandoned) if abandoned else []
        return settled

    def _verdict(self, doc: JobDoc, outcomes: Mapping[ObjectId, JobDoc]) -> tuple[bool, dict[str, Any] | None]:
        """(all completed, the error that abandons the job or None)."""
        done = True
        for job_id in doc["after"]:
            outcome = outcomes.get(job_id)
            if outcome is None:
                if now() - doc["blocked_at"] > timedelta(seconds=MISSING_GRACE):
                    return False, abandon_error(doc, f"job {job_id} it waits for does not exist")
                done = False
            elif (reason := failed_ending(outcome)) is not None:
                return False, abandon_error(doc, f"job {job_id} ({outcome.get('name')}) it waits for {reason}")
            elif outcome["state"] != State.COMPLETE.value:
                done = False
        return done, None

    def _release(self, doc: JobDoc, outcomes: Mapping[ObjectId, JobDoc]) -> int:
        feed = doc.get("feed")
        arguments: dict[str, Any] = {}
        if feed:
            results = [outcomes[job_id].get("result") for job_id in doc["after"]]
            arguments[feed["param"]] = results if feed.get("list") else results[0]
        try:
            return int(self._store.release(doc, arguments))
        except (DocumentTooLarge, WriteError) as exc:
            log.error("job %s: the results it is given do not fit in its document (%s)", doc["_id"], exc)
            message = "the results of the jobs it waits for do not fit in one document (16 MiB)"
            return int(self._store.abandon(doc, abandon_error(doc, message)))


def failed_ending(outcome: Mapping[str, Any]) -> str | None:
    """How an awaited job ended without completing ("ended error", "was removed"); None while it still may."""
    if outcome["state"] == State.COMPLETE.value:
        return None
    if outcome.get("journaled"):
        return "was removed"
    return f"ended {outcome['state']}" if outcome["state"] in FAILED_ENDINGS else None


def abandon_error(doc: JobDoc, reason: str) -> dict[str, Any]:
    """A chord's body raises Celery's ChordError, as Celery's own chords do; other jobs DependencyFailed."""
    chord = bool((doc.get("feed") or {}).get("list"))
    kind, module = ("ChordError", "celery.exceptions") if chord else ("DependencyFailed", "core4celery.errors")
    message = f"{doc['name']} cannot run: {reason}"
    return {"exception": f"{kind}({message!r})", "traceback": None, "exc_type": kind, "exc_module": module,
            "exc_args": [message]}
