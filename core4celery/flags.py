"""core4's zombie and wall flags: set once, never cleared, never stop the job.

``zombie_at`` marks a run whose progress heartbeat (``progress()``) is older
than ``zombie_time``; ``wall_at`` marks a run longer than ``wall_time``. Only
the worker that runs the job sets them, in its housekeeping round.
"""

from __future__ import annotations

import logging
from datetime import datetime

from .clock import later
from .registry import Doc, Registry
from .states import State

log = logging.getLogger(__name__)

FLAG_FIELDS = {"zombie_time": 1, "wall_time": 1, "zombie_at": 1, "wall_at": 1, "started_at": 1}


def due_flags(doc: Doc, stamp: datetime) -> list[str]:
    due = []
    heartbeat = (doc.get("locked") or {}).get("heartbeat")
    if doc.get("zombie_at") is None and heartbeat is not None and heartbeat < later(-doc["zombie_time"], stamp):
        due.append("zombie_at")
    started = doc.get("started_at")
    wall_time = doc.get("wall_time")
    if doc.get("wall_at") is None and wall_time and started is not None and started < later(-wall_time, stamp):
        due.append("wall_at")
    return due


def set_flags(registry: Registry, doc: Doc, stamp: datetime) -> list[str]:
    """Each flag is one update guarded by the run and by the flag still being unset."""
    done = []
    for flag in due_flags(doc, stamp):
        result = registry.jobs.update_one(
            {"_id": doc["_id"], "state": State.RUNNING.value, "locked.run": doc["locked"]["run"], flag: None},
            {"$set": {flag: stamp}},
        )
        if result.modified_count:
            log.warning("job %s (%s) flagged %s", doc["_id"], doc["name"], flag.removesuffix("_at"))
            done.append(flag)
    return done
