"""Control-flow signals raised inside a job body.

They derive from ``BaseException`` on purpose: a job's own ``except Exception``
must not swallow a deferral, just as it does not swallow ``KeyboardInterrupt``.
"""

from __future__ import annotations


class JobRetry(BaseException):
    """``self.retry()`` (Celery's, or ``autoretry_for``): this run fails, using an attempt.

    The job is due again after ``countdown`` seconds (None: its ``error_time``)
    while attempts are left; then it ends in error with ``exc``.
    """

    def __init__(self, exc: BaseException | None, countdown: float | None) -> None:
        self.exc = exc
        self.countdown = countdown
        super().__init__(repr(exc) if exc is not None else "retry requested")


class JobDeferred(BaseException):
    """Ends the current run; the job comes back after its ``defer_time``."""

    def __init__(self, message: str = "") -> None:
        self.message = message
        super().__init__(message)
