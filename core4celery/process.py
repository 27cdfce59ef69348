"""Per-process values: what must not cross a fork.

pymongo clients, event dispatchers and background threads belong to the
process that made them; a prefork pool child needs its own. This one helper
is the only place that compares pids.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: T | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def get(self) -> T:
        with self._lock:
            if self._value is None or self._pid != os.getpid():
                self._value = self._factory()
                self._pid = os.getpid()
            return self._value

    def close_with(self, close: Callable[[T], object]) -> None:
        """``close`` this process's value if it made one, and forget it (the next get() makes a new one)."""
        with self._lock:
            value = self._value if self._pid == os.getpid() else None
            self._value = None
        if value is not None:
            close(value)

    def reset(self) -> None:
        """Forget this process's value (e.g. a thread that died); the next get() makes a new one."""
        with self._lock:
            self._value = None
