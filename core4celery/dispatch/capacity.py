"""How many tickets may go out now, in all and per queue.

A worker's slots count only for the queues it consumes, so a job for a queue
no alive worker consumes never takes a slot (and can say why it waits).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..store.connection import Doc
from ..store.nodes import slots_by_queue


@dataclass
class Capacity:
    free: int
    free_by_queue: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, workers: Iterable[Doc], busy_by_queue: dict[str | None, int]) -> Capacity:
        alive = list(workers)
        total = sum(int(w.get("concurrency") or 0) for w in alive)
        slots = slots_by_queue(alive)
        free_by_queue = {queue: n - busy_by_queue.get(queue, 0) for queue, n in slots.items()}
        return cls(free=total - sum(busy_by_queue.values()), free_by_queue=free_by_queue)

    def has_room(self, queue: str) -> bool:
        return self.free > 0 and self.free_by_queue.get(queue, 0) > 0

    def take(self, queue: str) -> None:
        self.free -= 1
        self.free_by_queue[queue] = self.free_by_queue.get(queue, 0) - 1


def why_waiting(queue: str, workers: Iterable[Doc]) -> str | None:
    """A reason a due job cannot get a ticket that its own document does not show, or None."""
    alive = list(workers)
    if not alive:
        return "no alive worker"
    if not any(queue in (w.get("queues") or ()) for w in alive):
        return f"no alive worker consumes queue {queue!r}"
    return None
