"""One notion of time for the registry.

MongoDB stores milliseconds and returns naive UTC datetimes; using the same
shape everywhere keeps comparisons between stored and fresh values exact.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

EPOCH = datetime(1970, 1, 1)


def now() -> datetime:
    stamp = datetime.now(timezone.utc).replace(tzinfo=None)
    return stamp.replace(microsecond=stamp.microsecond // 1000 * 1000)


def later(seconds: float, start: datetime | None = None) -> datetime:
    base = start or now()
    stamp = base + timedelta(seconds=seconds)
    return stamp.replace(microsecond=stamp.microsecond // 1000 * 1000)
