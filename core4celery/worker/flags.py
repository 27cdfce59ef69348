"""core4's zombie and wall flags: set once, never cleared, never stop the job.

``zombie_at`` marks a run whose progress heartbeat (``progress()``) is older
than ``zombie_time``; ``wall_at`` marks a run longer than ``wall_time``. Only
the worker that runs the job sets them (through the job store), in its
housekeeping round.
"""

from __future__ import annotations

from datetime import datetime

from ..clock import later
from ..store.document import JobDoc, lock_of


def due_flags(doc: JobDoc, stamp: datetime) -> list[str]:
    due = []
    heartbeat = lock_of(doc).get("heartbeat")
    if doc.get("zombie_at") is None and heartbeat is not None and heartbeat < later(-doc["zombie_time"], stamp):
        due.append("zombie_at")
    started = doc.get("started_at")
    wall_time = doc.get("wall_time")
    if doc.get("wall_at") is None and wall_time and started is not None and started < later(-wall_time, stamp):
        due.append("wall_at")
    return due
