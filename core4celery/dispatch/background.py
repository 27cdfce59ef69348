"""Hand-overs on a thread of the pool process, requested by ``submit()``.

A finished run's slots are handed to the next job off the job's critical
path: the pool process is free for its next ticket at once, and the ticket is
published outside the job's Celery context (Celery would record the next job
as the finished one's child).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from ..process import PerProcess
from ..store.slots import Holder

log = logging.getLogger(__name__)


class BackgroundHandover:
    def __init__(self, hand_over: Callable[[Holder, bool], object]) -> None:
        self._hand_over = hand_over
        self._queue: PerProcess[queue.SimpleQueue[tuple[Holder, bool]]] = PerProcess(self._start)

    def _start(self) -> queue.SimpleQueue[tuple[Holder, bool]]:
        pending: queue.SimpleQueue[tuple[Holder, bool]] = queue.SimpleQueue()  # a forked copy of the parent's is not ours
        threading.Thread(target=self._loop, args=(pending,), name="core4celery-handover", daemon=True).start()
        return pending

    def submit(self, finished: Holder, ring: bool) -> None:
        """``ring``: the run was long enough for this worker's consumer to be waiting for a wake-up."""
        self._queue.get().put((finished, ring))

    def _loop(self, pending: queue.SimpleQueue[tuple[Holder, bool]]) -> None:
        while True:
            finished, ring = pending.get()
            try:
                self._hand_over(finished, ring)
            except Exception:
                log.exception("core4celery: handing over the slot of job %s failed; slot repair frees it",
                              finished.job_id)
