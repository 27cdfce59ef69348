"""Control-flow signals raised inside a job body.

They derive from ``BaseException`` on purpose: a job's own ``except Exception``
must not swallow a deferral, just as it does not swallow ``KeyboardInterrupt``.
"""

from __future__ import annotations


class JobDeferred(BaseException):
    """Ends the current run; the job comes back after its ``defer_time``."""

    def __init__(self, message: str = "") -> None:
        self.message = message
        super().__init__(message)
