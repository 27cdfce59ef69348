"""Capture of a job's log records while it runs, into its :class:`~core4celery.store.logs.RunLog`.

Installed in the pool process for the duration of one run and removed after
it. Which records are the job's:

* every record of the job's own loggers: the logger named after the task
  (``self.logger``, ``get_task_logger(task.name)``) and its module's logger
  (``logging.getLogger(__name__)`` / ``get_task_logger(__name__)``). While the
  run lasts they pass DEBUG, so the debug trail exists for a failed run; a
  filter on them keeps what the worker's console shows as before (only what
  their configured level let through goes on to the console);
* records of any other logger emitted by the run (what the job's helpers and
  libraries log at their configured levels), caught by a handler on the root
  and ``celery.task`` loggers (Celery's task loggers do not propagate to root).
  Records of core4celery, Celery, kombu, billiard, amqp and pymongo are not
  the job's.

Logging is process-global, so the installation is too: one handler and one
filter per logger, counted, for however many runs a process has at once. A
record goes to the run of the thread that logged it; when a process runs
exactly one job (the prefork pool), threads the job started are its too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from ..metrics import code_path
from ..store.connection import Doc
from ..store.logs import RunLog, bounded_text

INFRASTRUCTURE = ("core4celery", "celery", "kombu", "billiard", "amqp", "pymongo")
TASK_LOGGER = "celery.task"
CAPTURED = "_core4celery_captured"  # set on a record taken by a job logger's filter (the handler skips it)
log = logging.getLogger(__name__)


def infrastructure(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in INFRASTRUCTURE)


def entry_of(record: logging.LogRecord) -> Doc:
    """The stored fields of one record (the run adds job, trial, order and host)."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string must not lose the record
        message = f"{record.msg!r} % {record.args!r}"
    entry: Doc = {"level": record.levelname, "levelno": record.levelno, "logger": record.name,
                  "created": datetime.fromtimestamp(record.created, timezone.utc).replace(tzinfo=None),
                  "message": bounded_text(message)}
    if record.exc_info:
        entry["exception"] = bounded_text(logging.Formatter().formatException(record.exc_info))
    return entry


class _Captures:
    """The runs capturing in this process, by thread, and what is installed for them."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.runs: dict[int, RunCapture] = {}
        self.handler = _Handler(self)
        self.handler_users = 0
        self.loggers: dict[str, tuple[int, int, _JobFilter]] = {}  # name -> (users, own level, filter)
        self.local = threading.local()  # guards against a record logged while one is taken

    def route(self, record: logging.LogRecord) -> RunCapture | None:
        with self.lock:
            run = self.runs.get(record.thread or 0)
            if run is None and len(self.runs) == 1:
                run = next(iter(self.runs.values()))
            return run

    def take(self, record: logging.LogRecord) -> None:
        if getattr(self.local, "busy", False):
            return
        run = self.route(record)
        if run is None:
            return
        self.local.busy = True
        try:
            run.take(record)
        finally:
            self.local.busy = False

    def install(self, run: RunCapture, names: Iterable[str]) -> None:
        with self.lock:
            self.runs[run.thread] = run
            if not self.handler_users:
                for logger in (logging.getLogger(), _celery_task_logger()):
                    logger.addHandler(self.handler)
            self.handler_users += 1
            for name in names:
                self._lower(name)

    def remove(self, run: RunCapture, names: Iterable[str]) -> None:
        with self.lock:
            self.runs.pop(run.thread, None)
            self.handler_users -= 1
            if not self.handler_users:
                for logger in (logging.getLogger(), _celery_task_logger()):
                    logger.removeHandler(self.handler)
            for name in names:
                self._restore(name)

    def _lower(self, name: str) -> None:
        """The job's logger passes DEBUG to the capture; its filter keeps the console as configured."""
        if name in self.loggers:
            users, level, job_filter = self.loggers[name]
            self.loggers[name] = (users + 1, level, job_filter)
            return
        logger = logging.getLogger(name)
        console_level = logger.getEffectiveLevel()
        job_filter = _JobFilter(self, console_level)
        self.loggers[name] = (1, logger.level, job_filter)
        logger.addFilter(job_filter)
        logger.setLevel(min(console_level, logging.DEBUG))

    def _restore(self, name: str) -> None:
        users, level, job_filter = self.loggers[name]
        if users > 1:
            self.loggers[name] = (users - 1, level, job_filter)
            return
        del self.loggers[name]
        logger = logging.getLogger(name)
        logger.removeFilter(job_filter)
        logger.setLevel(level)


def _celery_task_logger() -> logging.Logger:
    return logging.getLogger(TASK_LOGGER)


class _Handler(logging.Handler):
    """On root and ``celery.task``: records of other loggers the run emits."""

    def __init__(self, captures: _Captures) -> None:
        super().__init__(logging.NOTSET)
        self._captures = captures

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, CAPTURED, False) or infrastructure(record.name):
            return
        setattr(record, CAPTURED, True)  # once, even where celery.task propagates to root
        self._captures.take(record)


class _JobFilter(logging.Filter):
    """On the job's own loggers: takes every record, lets on only what the logger's level allowed."""

    def __init__(self, captures: _Captures, console_level: int) -> None:
        super().__init__()
        self._captures = captures
        self._console_level = console_level

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, CAPTURED, False):
            setattr(record, CAPTURED, True)
            self._captures.take(record)
        return record.levelno >= self._console_level


CAPTURES = _Captures()  # logging is per process; so is what is installed into it


class RunCapture:
    """One run's log capture; a flusher thread writes batches while the job goes on."""

    def __init__(self, run_log: RunLog, loggers: Iterable[str], interval: float = 0.5) -> None:
        self._log = run_log
        self._names = tuple(dict.fromkeys(name for name in loggers if name and not infrastructure(name)))
        self._interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="core4celery-joblog", daemon=True)
        self.thread = threading.get_ident()

    def start(self) -> RunCapture:
        CAPTURES.install(self, self._names)
        self._flusher.start()
        return self

    def take(self, record: logging.LogRecord) -> None:
        if self._log.add(entry_of(record)):
            self._wake.set()

    def _flush_loop(self) -> None:
        with code_path("job_data"):
            self._flush_while_running()

    def _flush_while_running(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._log.due():
                self._write(self._log.flush)

    def stop(self, failed: bool) -> None:
        """Uninstall, then write the rest (a failed run's debug trail too)."""
        CAPTURES.remove(self, self._names)
        self._stop.set()
        self._wake.set()
        self._flusher.join()
        self._write(lambda: self._log.close(failed))

    def _write(self, write: Any) -> None:
        try:
            write()
        except Exception as exc:  # logs are best effort: the job's outcome is not theirs to decide
            log.warning("job logs could not be written (%s: %s); records lost", type(exc).__name__, exc)
