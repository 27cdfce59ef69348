"""Counting the MongoDB commands every process sends, by command and by code path.

Opt-in: with ``CORE4CELERY_COUNT_COMMANDS=<directory>`` in the environment, the
first import of core4celery registers a pymongo command listener (before any
client exists, so kombu's and Celery's clients are counted too) and every
process (client, worker, each pool child) writes its counts to
``<directory>/<pid>.json`` twice a second and at exit. The benchmarks sum the
files; nothing is sent to the server for it.

The code path is whatever :func:`code_path` named around the command;
commands outside any (kombu polling and publishing for plain tasks, Celery's
result backend, events) are counted as ``celery``.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from pymongo import monitoring

ENV = "CORE4CELERY_COUNT_COMMANDS"
OUTSIDE = "celery"
FLUSH_INTERVAL = 0.5
TIME_PREFIX = "us:"  # keys holding microseconds waited, not command counts

_path: ContextVar[str] = ContextVar("core4celery_code_path", default=OUTSIDE)


@contextmanager
def code_path(name: str) -> Iterator[None]:
    """Label the commands sent inside (the innermost label wins)."""
    token = _path.set(name)
    try:
        yield
    finally:
        _path.reset(token)


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self.counts[f"{_path.get()}/{event.command_name}"] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._timed(event.command_name, event.duration_micros)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._timed(event.command_name, event.duration_micros)

    def _timed(self, command: str, micros: int) -> None:
        """Time waited for replies, under ``us:<path>/<command>`` (kept apart from the counts)."""
        with self._lock:
            self.counts[f"{TIME_PREFIX}{_path.get()}/{command}"] += micros

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may have been held by its flusher at the fork)."""
        self._lock = threading.Lock()
        self.counts = Counter()


class _Flusher:
    """Writes this process's counts to ``<directory>/<pid>.json``; a forked child starts its own."""

    def __init__(self, counter: CommandCounter, directory: Path) -> None:
        self._counter = counter
        self._directory = directory
        self._pid = 0
        self._wake = threading.Event()

    def ensure(self) -> None:
        if self._pid == os.getpid():
            return
        if self._pid:  # a forked child counts only its own commands, under a lock of its own
            self._counter.after_fork()
            self._wake = threading.Event()
        self._pid = os.getpid()
        threading.Thread(target=self._loop, name="core4celery-count", daemon=True).start()

    def _loop(self) -> None:
        while True:
            self.flush()
            self._wake.wait(FLUSH_INTERVAL)

    def flush(self) -> None:
        path = self._directory / f"{os.getpid()}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._counter.snapshot()))
        temporary.replace(path)


_installed: _Flusher | None = None


def install_from_env() -> None:
    global _installed
    directory = os.environ.get(ENV)
    if not directory or _installed is not None:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    counter = CommandCounter()
    monitoring.register(counter)
    _installed = _Flusher(counter, Path(directory))
    _installed.ensure()
    os.register_at_fork(after_in_child=_installed.ensure)
    atexit.register(_installed.flush)


def read_counts(directory: str | Path) -> Counter[str]:
    """The sum over every process that wrote into ``directory``."""
    total: Counter[str] = Counter()
    for path in Path(directory).glob("*.json"):
        try:
            total.update(json.loads(path.read_text()))
        except (OSError, ValueError):  # a file being replaced right now: its next version counts
            continue
    return total
