"""Why a due job gets no ticket, where its own document cannot tell.

A worker's slots count only for the queues it consumes (see
:mod:`core4celery.store.slots`), so a job for a queue no alive worker consumes
waits without taking a slot; so does a job pinned to workers that are away, a
job whose workers all have their resource gate closed, and a job that waits
for others (``dependency``, a canvas). The CLI says which.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..store.connection import Doc
from .routing import pinned_away


def why_waiting(doc: Mapping[str, Any], queue: str, workers: Iterable[Doc]) -> str | None:
    """A reason a due job cannot get a ticket that its own document does not show, or None."""
    if doc.get("blocked_at") is not None:
        return "waiting for the jobs it depends on"
    alive = list(workers)
    if not alive:
        return "no alive worker"
    if pinned_away(doc, alive):
        return f"pinned to worker {', '.join(doc['worker'])}, none of them alive"
    if doc.get("worker"):
        return None
    if not any(queue in (w.get("queues") or ()) for w in alive):
        if doc.get("force") or not any(queue in (w.get("serves") or ()) for w in alive):
            return f"no alive worker consumes queue {queue!r}"
        return f"every worker of queue {queue!r} has its resource gate closed (not enough CPU or memory)"
    return None
