"""A read-only Celery result backend over the registry.

core4 tasks keep their results with the job (journal), so ``AsyncResult.get()``
reads the job document instead of a separate result store; plain Celery tasks
in the same app keep using the app's own backend.
"""

from __future__ import annotations

from typing import Any

from celery import states as celery_states
from celery.backends.base import BaseBackend

from .errors import Core4Error, JobNotFound
from .store.jobs import JobStore
from .store.states import State


class JobFailed(Core4Error):
    """Raised by ``AsyncResult.get()`` for a job that ended in error, inactive or killed."""


CELERY_STATE = {
    State.PENDING.value: celery_states.PENDING,
    State.DEFERRED.value: celery_states.RETRY,
    State.FAILED.value: celery_states.RETRY,
    State.RUNNING.value: celery_states.STARTED,
    State.COMPLETE.value: celery_states.SUCCESS,
    State.ERROR.value: celery_states.FAILURE,
    State.INACTIVE.value: celery_states.FAILURE,
    State.KILLED.value: celery_states.REVOKED,
}


class RegistryBackend(BaseBackend):
    def __init__(self, app: Any, store: JobStore, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._store = store

    def store_result(self, *args: Any, **kwargs: Any) -> None:
        """The worker side writes the registry itself; Celery's writes are not needed."""

    def _forget(self, task_id: str) -> None:
        """Results live as long as the job's journal entry."""

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        """A job id names a job from its enqueue on (live, then journaled), so an id found
        nowhere is an error, not a job that is PENDING for ever as Celery would have it."""
        doc = self._store.find(task_id)  # JobNotFound for a string that is not an id
        if doc is None:
            raise JobNotFound(f"no job has the id {task_id!r} (neither waiting, running nor journaled)")
        state = CELERY_STATE.get(doc["state"], celery_states.PENDING)
        meta: dict[str, Any] = {"status": state, "task_id": task_id, "result": None, "traceback": None}
        if state == celery_states.SUCCESS:
            meta["result"] = doc.get("result")
        elif state in celery_states.PROPAGATE_STATES:
            error = doc.get("last_error") or {}
            meta["result"] = JobFailed(
                f"job {task_id} ({doc['name']}) ended {doc['state']}: {error.get('exception')}"
            )
            meta["traceback"] = "".join(error.get("traceback") or []) or None
        return meta
