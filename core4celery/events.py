"""Celery task events for what happens to a job outside a task call.

Celery's own events cover a run (received, started, succeeded, failed,
retried). Progress, kills and inactivation happen elsewhere (a heartbeat
thread, the dispatcher), so they are sent here as custom task events, which
Flower shows as the task's state: ``PROGRESS`` (with the percentage and
message in the result field), ``KILLED`` and ``INACTIVE``. Sending is best
effort: monitoring must never break a job.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .process import PerProcess

log = logging.getLogger(__name__)


class JobEvents:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.hostname: str | None = None
        self._enabled: bool | None = None
        self._dispatcher: PerProcess[Any] = PerProcess(self._connect)
        self._lock = threading.Lock()

    def enable(self, hostname: str) -> None:
        """Called in a worker started with ``-E``; pool processes inherit it when forked."""
        self._enabled = True
        self.hostname = hostname

    @property
    def enabled(self) -> bool:
        if self._enabled is None:
            self._enabled = bool(self.app.conf.worker_send_task_events)
        return self._enabled

    def send(self, kind: str, job_id: object, **fields: Any) -> None:
        if not self.enabled:
            return
        try:
            with self._lock:
                self._dispatcher.get().send(f"task-{kind}", uuid=str(job_id), **fields)
        except Exception as exc:  # the broker may be briefly unreachable; the registry has the truth
            log.warning("could not send task-%s event for job %s: %r", kind, job_id, exc)

    def _connect(self) -> Any:
        connection = self.app.connection_for_write()
        return self.app.events.Dispatcher(connection, hostname=self.hostname, enabled=True)
