"""Riding out a server outage: retry with backoff, then give up to lease recovery.

A connection error on a job's path is not the job's fault and usually lasts
seconds (a restart, a failover). Every store command runs through
:meth:`Outage.call`, which retries transient errors for up to
``outage_timeout`` and then raises :class:`RegistryUnavailable`; the run that
could not be ended is then recovered through its lease like a dead worker's.

A write whose reply was lost may have been applied: callers learn that a retry
happened (``Attempt.retried``) and check whether their write landed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pymongo.errors import ConnectionFailure

from ..errors import RegistryUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_DELAY = 0.05
MAX_DELAY = 2.0


@dataclass(frozen=True)
class Attempt(Generic[T]):
    value: T
    retried: bool


class Outage:
    """Retry policy shared by every command of one process."""

    def __init__(self, timeout: float, describe: Callable[[], str]) -> None:
        self.timeout = timeout
        self._describe = describe  # the masked server address, for messages
        self.last_failure = 0.0  # monotonic time of the latest transient error, 0 if none

    def call(self, command: Callable[[], T], what: str) -> Attempt[T]:
        deadline = time.monotonic() + self.timeout
        delay = FIRST_DELAY
        retried = False
        while True:
            try:
                return Attempt(command(), retried)
            except ConnectionFailure as exc:
                self.last_failure = time.monotonic()
                if self.last_failure + delay > deadline:
                    raise RegistryUnavailable(
                        f"{what}: MongoDB at {self._describe()} unreachable for {self.timeout:g} s "
                        f"({type(exc).__name__})"
                    ) from None
                if not retried:
                    log.warning("%s: MongoDB unreachable (%s); retrying for up to %g s",
                                what, type(exc).__name__, self.timeout)
                retried = True
                time.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)

    def note(self) -> None:
        """A command outside :meth:`call` met the outage (a read, say)."""
        self.last_failure = time.monotonic()

    def run(self, command: Callable[[], T], what: str) -> T:
        return self.call(command, what).value

    def recent(self, window: float) -> bool:
        """True when a command of this process failed within the last ``window`` seconds."""
        return self.last_failure > 0 and time.monotonic() - self.last_failure < window
