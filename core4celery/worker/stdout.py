"""Capture of a run's ``sys.stdout``/``sys.stderr`` (core4's ``sys.stdout``), the tail kept in memory.

During a run both streams are replaced by tees into one :class:`Tail` (interleaved
as a terminal would show them) that also passes everything on to the stream
it replaced, so the worker's own output (Celery logs a pool process's prints)
is unchanged. Only what goes through ``sys.stdout``/``sys.stderr`` is caught:
output of subprocesses and C code writing to the file descriptors is not
(core4 redirected the descriptor of its per-job process; a pool process's
descriptors are the worker's).
"""

from __future__ import annotations

import io
import sys
import threading
from collections import deque
from typing import Any


class Tail:
    """The latest text written, at most about ``max_bytes`` of UTF-8; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._chunks: deque[str] = deque()
        self._size = 0
        self.cut = 0  # bytes dropped from the front
        self._lock = threading.Lock()

    def keep(self, text: str) -> None:
        size = len(text.encode("utf-8", "backslashreplace"))
        with self._lock:
            self._chunks.append(text)
            self._size += size
            while self._size > self._max and len(self._chunks) > 1:
                dropped = len(self._chunks.popleft().encode("utf-8", "backslashreplace"))
                self._size -= dropped
                self.cut += dropped

    def text(self) -> str:
        """What was kept; the store cuts it to ``max_bytes`` exactly (one chunk can be larger)."""
        with self._lock:
            return "".join(self._chunks)


class TeeStream(io.TextIOBase):
    """Stands in for ``sys.stdout`` or ``sys.stderr``: into the run's tail, and on to the stream it replaced."""

    def __init__(self, tail: Tail, passes_to: Any) -> None:
        super().__init__()
        self._tail = tail
        self._next = passes_to

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._tail.keep(text)
        if self._next is not None:
            try:
                self._next.write(text)
            except Exception:  # the worker's stream failing must not fail the job
                self._next = None
        return len(text)

    def flush(self) -> None:
        if self._next is not None and hasattr(self._next, "flush"):
            self._next.flush()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def isatty(self) -> bool:
        return False


class StreamCapture:
    """Swaps ``sys.stdout``/``sys.stderr`` for tees into one :class:`Tail`; ``stop`` always puts the real ones back."""

    def __init__(self, max_bytes: int) -> None:
        self.tail = Tail(max_bytes)
        self._saved: tuple[Any, Any] | None = None

    def start(self) -> StreamCapture:
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = TeeStream(self.tail, sys.stdout)
        sys.stderr = TeeStream(self.tail, sys.stderr)
        return self

    def stop(self) -> None:
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
            self._saved = None
