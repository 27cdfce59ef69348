"""What a run leaves besides its outcome: its log records, its stdout/stderr, its cookie's ``last_runtime``.

:class:`JobData` holds the stores (one per concept) and the settings;
:meth:`JobData.capture` wraps the job's body in a pool process. Nothing here
may change a run's outcome: a write that fails is logged and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from bson import ObjectId

from ..config.settings import Settings
from ..metrics import code_path
from ..store.cookies import CookieStore
from ..store.logs import LogStore, RunLog
from ..store.stdout import StdoutStore
from .joblog import RunCapture
from .stdout import StreamCapture

log = logging.getLogger(__name__)
CODE_PATH = "job_data"  # how the benchmarks' command counts label these writes


@dataclass
class Capture:
    """One run's captures; ``failed`` is set by the run when its body failed (the debug trail is kept)."""

    data: JobData
    job_id: ObjectId
    trial: int
    hostname: str
    loggers: tuple[str, ...]
    failed: bool = False
    _records: RunCapture | None = field(default=None, repr=False)
    _streams: StreamCapture | None = field(default=None, repr=False)

    def __enter__(self) -> Capture:
        settings = self.data.settings
        run_log = RunLog(self.data.logs, self.job_id, self.trial, self.hostname, settings.log_level,
                         settings.log_max_records)
        self._records = RunCapture(run_log, self.loggers).start()
        self._streams = StreamCapture(settings.stdout_max_bytes).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Runs however the body ended: the real streams come back first."""
        if self._streams is not None:
            self._streams.stop()
        with code_path(CODE_PATH):
            if self._records is not None:
                self._records.stop(self.failed)
            if self._streams is not None:
                tail = self._streams.tail
                self.data.save_stdout(self.job_id, self.trial, tail.text(), tail.cut, self.hostname)


class JobData:
    def __init__(self, settings: Settings, logs: LogStore, stdout: StdoutStore, cookies: CookieStore) -> None:
        self.settings = settings
        self.logs = logs
        self.stdout = stdout
        self.cookies = cookies

    def capture(self, job_id: ObjectId, trial: int, hostname: str, loggers: Iterable[str]) -> Capture:
        return Capture(self, job_id, trial, hostname, tuple(loggers))

    def save_stdout(self, job_id: ObjectId, trial: int, text: str, cut: int, hostname: str) -> None:
        try:
            self.stdout.save(job_id, trial, text, hostname, self.settings.stdout_max_bytes, cut)
        except Exception as exc:  # the run's outcome is not the stdout's to decide
            log.warning("job %s: stdout of run %d could not be stored (%s: %s)", job_id, trial,
                        type(exc).__name__, exc)

    def completed(self, name: str, finished_at: datetime) -> None:
        """core4's ``last_runtime`` in the job's cookie, after a completed run."""
        try:
            with code_path(CODE_PATH):
                self.cookies.completed(name, finished_at)
        except Exception as exc:
            log.warning("%s: cookie's last_runtime could not be set (%s: %s)", name, type(exc).__name__, exc)
