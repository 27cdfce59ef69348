"""Column formatting shared by the listing commands (core4's ``coco`` layout)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..clock import now
from ..store.states import State

FLAGS = (("zombie_at", "Z"), ("wall_at", "W"), ("removed_at", "R"), ("killed_at", "K"))
HEADER = (
    f"{'id':24} {'state':8} flag {'prog':>4} prio attempt {'enqueued (UTC)':19} {'age':>8} {'runtime':>8} "
    f"{'worker':24} name"
)


def duration(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def age(stamp: datetime | None) -> str:
    return "-" if stamp is None else duration(max(0.0, (now() - stamp).total_seconds()))


def flags(doc: Mapping[str, Any]) -> str:
    return "".join(char if doc.get(key) else "." for key, char in FLAGS)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def attempt(doc: Mapping[str, Any]) -> str:
    """core4 counts the running trial as used."""
    used = doc["attempts"] - doc["attempts_left"] + (1 if doc["state"] == State.RUNNING.value else 0)
    return f"{used}/{doc['attempts']}"


def row(doc: Mapping[str, Any]) -> str:
    running = doc["state"] == State.RUNNING.value
    runtime = age(doc.get("started_at")) if running else duration(float(doc.get("runtime") or 0.0))
    priority = f"{doc['priority']:3d}{'F' if doc.get('force') else ' '}"
    worker = (doc.get("locked") or {}).get("worker") or "-"
    return (
        f"{doc['_id']!s:24} {doc['state']:8} {flags(doc)} {percent(doc.get('prog', {}).get('value')):>4} "
        f"{priority} {attempt(doc):>7} {doc['enqueued']['at']:%Y-%m-%d %H:%M:%S} {age(doc['enqueued']['at']):>8} "
        f"{runtime:>8} {worker[:24]:24} {doc['name']}"
    )
