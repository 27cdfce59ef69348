"""Capture of a run's ``sys.stdout``/``sys.stderr`` (core4's ``sys.stdout``), the tail kept in memory.

During a run both streams are replaced by tees into the run's :class:`Tail`
(interleaved as a terminal would show them) that also pass everything on to
the stream they replaced, so the worker's own output (Celery logs a pool process's prints)
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
    """Stands in for ``sys.stdout`` or ``sys.stderr``: into the tail of the run that writes, and on to the
    stream it replaced."""

    def __init__(self, streams: _Streams, passes_to: Any) -> None:
        super().__init__()
        self._streams = streams
        self._next = passes_to

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        tail = self._streams.tail_of(threading.get_ident())
        if tail is not None:
            tail.keep(text)
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


class _Streams:
    """The process's streams while runs capture them: swapped once for however many runs a process has
    at once (a thread pool), each write kept by the run of its thread (any thread's, with one run)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tails: dict[int, Tail] = {}
        self._saved: tuple[Any, Any] | None = None

    def tail_of(self, thread: int) -> Tail | None:
        with self._lock:
            tail = self._tails.get(thread)
            if tail is None and len(self._tails) == 1:
                tail = next(iter(self._tails.values()))
            return tail

    def add(self, thread: int, tail: Tail) -> None:
        with self._lock:
            if not self._tails:
                self._saved = (sys.stdout, sys.stderr)
                sys.stdout = TeeStream(self, sys.stdout)
                sys.stderr = TeeStream(self, sys.stderr)
            self._tails[thread] = tail

    def remove(self, thread: int) -> None:
        with self._lock:
            self._tails.pop(thread, None)
            if not self._tails and self._saved is not None:
                sys.stdout, sys.stderr = self._saved
                self._saved = None


STREAMS = _Streams()  # sys.stdout is per process; so is its stand-in


class StreamCapture:
    """One run's capture; ``stop`` always puts the real streams back once no run captures them."""

    def __init__(self, max_bytes: int) -> None:
        self.tail = Tail(max_bytes)
        self._thread = threading.get_ident()

    def start(self) -> StreamCapture:
        STREAMS.add(self._thread, self.tail)
        return self

    def stop(self) -> None:
        STREAMS.remove(self._thread)
