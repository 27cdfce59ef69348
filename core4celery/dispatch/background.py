"""Dispatcher passes on a thread of this process, requested by ``kick()``.

Used inside a running job: the job's process is free for its next ticket at
once, and tickets are published outside the job's Celery context, so Celery
does not record unrelated jobs as the job's children.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..process import PerProcess

log = logging.getLogger(__name__)


class BackgroundDispatch:
    def __init__(self, run: Callable[[], object]) -> None:
        self._run = run
        self._wanted = threading.Event()
        self._thread: PerProcess[threading.Thread] = PerProcess(self._start)

    def _start(self) -> threading.Thread:
        self._wanted = threading.Event()  # a forked copy of the parent's event is not ours
        thread = threading.Thread(target=self._loop, args=(self._wanted,), name="core4celery-dispatch", daemon=True)
        thread.start()
        return thread

    def kick(self) -> None:
        if not self._thread.get().is_alive():
            self._thread.reset()
            self._thread.get()
        self._wanted.set()

    def _loop(self, wanted: threading.Event) -> None:
        while True:
            wanted.wait()
            wanted.clear()
            try:
                self._run()
            except Exception:
                log.exception("core4celery dispatch failed; the worker's ticker retries")
