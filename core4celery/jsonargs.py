"""Job arguments must survive a JSON round trip unchanged.

The registry stores them as a document and Celery carries them as JSON, so
anything that would silently change shape (tuples, sets, datetimes, objects)
is refused at the call site instead of failing on a worker later.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .errors import InvalidArguments


def check_json(value: Any, what: str = "job arguments") -> None:
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArguments(f"{what} must be JSON-serialisable: {exc}") from None
    if json.loads(text) != value:
        raise InvalidArguments(f"{what} change in a JSON round trip (use lists, not tuples or sets)")
    _check_keys(value, what)


def _check_keys(value: Any, what: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key.startswith("$") or "." in key:
                raise InvalidArguments(f"{what}: key {key!r} may not start with '$' or contain '.'")
            _check_keys(item, what)
    elif isinstance(value, list):
        for item in value:
            _check_keys(item, what)


def args_hash(name: str, args: dict[str, Any], mid: str | None) -> str:
    """core4's uniqueness key: the same name and arguments (and mother) is one job."""
    text = json.dumps({"name": name, "args": args, "mid": mid}, sort_keys=True)
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()
