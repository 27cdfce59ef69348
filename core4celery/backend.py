"""A read-only Celery result backend over the registry.

core4 tasks keep their results with the job (journal), so ``AsyncResult.get()``
reads the job document instead of a separate result store. ``Core4(app)``
makes it the app's result backend unless the app configured one, so
``app.AsyncResult(id)`` and ``celery result ID`` find core4 jobs too; plain
Celery tasks in an app with its own backend keep using that one.

A failed job's ``get()`` raises the task's own exception type, rebuilt from
Celery's JSON exception protocol (type, module, arguments; only real exception
classes, never unpickling), with ``job_id``, ``job_state`` and ``trial``
attached; a running job with progress reports ``PROGRESS`` and
``{"percent", "message"}``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from bson import ObjectId
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


PROGRESS = "PROGRESS"


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


class RegistryBackend(BaseBackend):
    def __init__(self, app: Any, store: JobStore | None = None, **kwargs: Any) -> None:
        """``store``: given by ``Core4``; Celery builds this class from ``result_backend`` without one."""
        kwargs.pop("url", None)
        super().__init__(app, **kwargs)
        self._given = store

    @property
    def _store(self) -> JobStore:
        if self._given is None:
            self._given = self.app.core4celery.store
        return self._given

    @property
    def _core4(self) -> Any:
        return self.app.core4celery

    def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        """Celery's chord: the body is written as jobs waiting for the header's members (no unlock task
        polling a backend; nothing is lost when a worker or the broker restarts)."""
        group_id, members = header_result_args[0], header_result_args[1]
        self._core4.plan_chord(str(group_id), [str(member.id) for member in members], body)

    def _save_group(self, group_id: str, result: Any) -> Any:
        self._core4.groups.save(group_id, [str(member.id) for member in result.results])
        return result

    def _restore_group(self, group_id: str) -> dict[str, Any] | None:
        members = self._core4.groups.restore(group_id)
        if members is None:
            return None
        results = [self.app.AsyncResult(member) for member in members]
        return {"result": self.app.GroupResult(group_id, results)}

    def _delete_group(self, group_id: str) -> None:
        self._core4.groups.forget(group_id)

    def store_result(self, *args: Any, **kwargs: Any) -> None:
        """The worker side writes the registry itself; Celery's writes are not needed."""

    def _forget(self, task_id: str) -> None:
        """Results live as long as the job's journal entry."""

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        """A job id names a job from its enqueue on (live, then journaled), so an id found
        nowhere is an error, not a job that is PENDING for ever as Celery would have it."""
        if ObjectId.is_valid(task_id):
            doc = self._store.find(task_id)
        elif is_uuid(task_id):  # a message of a plain Celery client (send_task): adopted as a job by a worker
            doc = self._store.find_adopted(task_id)
            if doc is None:  # not adopted yet (still in the broker), as Celery reports a message in flight
                return {"status": celery_states.PENDING, "result": None, "task_id": task_id}
        else:
            raise JobNotFound(f"{task_id!r} is neither a core4celery job id nor a Celery task id")
        if doc is None:
            raise JobNotFound(f"no job has the id {task_id!r} (neither waiting, running nor journaled)")
        task_id = str(doc["_id"])
        state = CELERY_STATE.get(doc["state"], celery_states.PENDING)
        meta: dict[str, Any] = {"status": state, "task_id": task_id, "result": None, "traceback": None}
        if state == celery_states.SUCCESS:
            meta["result"] = doc.get("result")
        elif state == celery_states.STARTED and (doc.get("prog") or {}).get("value") is not None:
            progress = doc.get("prog") or {}  # reported by this run (a new job's progress is None)
            meta["status"] = PROGRESS
            meta["result"] = {"percent": round(float(progress.get("value") or 0) * 100, 2),
                              "message": progress.get("message")}
        elif state in celery_states.PROPAGATE_STATES:
            meta["result"] = self._failure(task_id, doc)
            meta["traceback"] = "".join((doc.get("last_error") or {}).get("traceback") or []) or None
        return meta

    def _failure(self, task_id: str, doc: Mapping[str, Any]) -> BaseException:
        """The task's own exception when the job ended in error with one, else JobFailed."""
        error = doc.get("last_error") or {}
        exc: BaseException | None = None
        if doc["state"] == State.ERROR.value and error.get("exc_type"):
            rebuilt = self.exception_to_python({"exc_type": error["exc_type"], "exc_module": error.get("exc_module"),
                                                "exc_message": error.get("exc_args") or []})
            exc = rebuilt if isinstance(rebuilt, BaseException) else None
        if exc is None:
            exc = JobFailed(f"job {task_id} ({doc['name']}) ended {doc['state']}: {error.get('exception')}")
        exc.job_id = task_id  # type: ignore[attr-defined]
        exc.job_state = doc["state"]  # type: ignore[attr-defined]
        exc.trial = int(doc.get("trial") or 0)  # type: ignore[attr-defined]
        return exc
