"""Why a due job gets no ticket, where its own document cannot tell.

A worker's slots count only for the queues it consumes (see
:mod:`core4celery.store.slots`), so a job for a queue no alive worker consumes
waits without taking a slot; the CLI says so.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..store.connection import Doc


def why_waiting(queue: str, workers: Iterable[Doc]) -> str | None:
    """A reason a due job cannot get a ticket that its own document does not show, or None."""
    alive = list(workers)
    if not alive:
        return "no alive worker"
    if not any(queue in (w.get("queues") or ()) for w in alive):
        return f"no alive worker consumes queue {queue!r}"
    return None
