"""One rule for every number a user can set: finite, in range, and not a bool.

Options, calling arguments and settings all go through :func:`check_number`,
so ``defer_time=inf`` fails where it is written instead of in a heartbeat an
hour later, and an int that MongoDB cannot store is refused before any write.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

from ..errors import Core4Error

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# durations beyond this are typos (1e12 s is 31,000 years) and overflow datetime arithmetic
MAX_SECONDS = 10 * 365 * 24 * 3600.0

E = TypeVar("E", bound=Core4Error)


def check_number(
    name: str,
    value: Any,
    error: type[E],
    *,
    integer: bool = False,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
) -> None:
    """Raise ``error`` naming the value unless it is a finite number within the bounds."""
    kind = "an int" if integer else "a number"
    allowed = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise error(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value!r}")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise error(f"{name} {value} exceeds MongoDB's 8-byte int range")
    if above is not None and not value > above:
        raise error(f"{name} must be {kind} > {above:g}, got {value!r}")
    if minimum is not None and value < minimum:
        raise error(f"{name} must be {kind} >= {minimum:g}, got {value!r}")
    if maximum is not None and value > maximum:
        raise error(f"{name} must be at most {maximum:g}, got {value!r}")


def check_seconds(name: str, value: Any, error: type[E], *, zero: bool = False) -> None:
    """A duration: finite, positive (or >= 0 with ``zero``), at most ten years."""
    if zero:
        check_number(name, value, error, minimum=0, maximum=MAX_SECONDS)
    else:
        check_number(name, value, error, above=0, maximum=MAX_SECONDS)
