"""Jobs that must run on particular workers: pinned (``worker=``), capped per worker (``max_per_node``),
or forced past a worker's closed resource gate.

Every worker also consumes a queue of its own (``core4.w.<node name>``), and
its idle slots are counted for that queue as for its shared ones. Such a job
is routed when it is claimed: the dispatcher picks one alive worker that may
run it and has room, and the job takes a slot of that worker's own queue
(``route``), so its ticket can reach no other worker. A per-node cap is
checked in the same guarded update as the cluster cap (see
:meth:`core4celery.store.slots.Slots.take`). A pinned job whose workers are all
away is not routed at all: it waits and takes no capacity.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from ..store.connection import Doc
from ..store.jobs import holder_of
from ..store.nodes import Nodes
from ..store.slots import Holder, SlotState

PERSONAL_PREFIX = "core4.w."
WORKERS_TTL = 1.0  # seconds a dispatcher reuses its read of the worker directory


def personal_queue(node_name: str) -> str:
    return f"{PERSONAL_PREFIX}{node_name}"


def is_routed(doc: Mapping[str, Any]) -> bool:
    return bool(doc.get("worker") or doc.get("max_per_node"))


def may_run(doc: Mapping[str, Any], worker: Mapping[str, Any]) -> bool:
    """A pinned job runs on a worker its pins name; any other routed job on a worker serving its queue.
    A closed resource gate admits only ``force`` jobs."""
    pins = doc.get("worker") or ()
    if pins:
        if not any(fnmatchcase(str(worker.get("hostname")), pin) for pin in pins):
            return False
    elif doc.get("queue") not in (worker.get("serves") or ()):
        return False
    return bool(doc.get("force")) or (worker.get("gate") or {}).get("open", True)


def pinned_away(doc: Mapping[str, Any], workers: list[Doc]) -> bool:
    """Does no alive worker match the job's pins (it waits for one to come)?"""
    pins = doc.get("worker") or ()
    return bool(pins) and not any(fnmatchcase(str(w.get("hostname")), pin) for w in workers for pin in pins)


class Router:
    def __init__(self, nodes: Nodes) -> None:
        self._nodes = nodes
        self._workers: list[Doc] = []
        self._read_at = -WORKERS_TTL

    def route(self, doc: Mapping[str, Any], state: SlotState, handed: Holder | None = None,
              gated_only: bool = False) -> str | None:
        """The own queue of a worker that may run the job and has room for it now, or None.

        The worker whose slot is being handed on wins (no slot moves), then the one with most idle slots.
        ``gated_only``: a ``force`` job that found no room in its shared queue goes only to a worker whose
        gate is closed (the others' slots are the shared queue's, which is full).
        """
        best: tuple[tuple[bool, int], str] | None = None
        for worker in self._alive():
            queue = worker.get("personal")
            if not queue or not may_run(doc, worker):
                continue
            if gated_only and (worker.get("gate") or {}).get("open", True):
                continue
            if not state.room(holder_of({**doc, "route": queue}), handed):
                continue
            score = (handed is not None and handed.queue == queue, state.free.get(queue, 0))
            if best is None or score > best[0]:
                best = (score, queue)
        return best[1] if best else None

    def _alive(self) -> list[Doc]:
        if time.monotonic() - self._read_at >= WORKERS_TTL:
            self._workers = self._nodes.alive()
            self._read_at = time.monotonic()
        return self._workers
