"""What may be stored: job arguments, results and progress messages.

Arguments travel as JSON in the ticket and are stored as BSON in the registry,
so a value must survive a JSON round trip *and* be something the server can
store. Checking both before any write means an unstorable value is refused at
the door (enqueue) or ends a run as that job's failure (a result), instead of
raising inside the final write and stranding the job.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import bson

from ..config.numbers import INT64_MAX, INT64_MIN
from ..errors import InvalidArguments

# the server's document limit; a job document carries more than the value itself
MAX_BSON_SIZE = 16 * 1024 * 1024
DOCUMENT_MARGIN = 64 * 1024
MAX_DEPTH = 90  # MongoDB refuses documents nested deeper than 100 levels


def check_json(value: Any, what: str = "job arguments") -> None:
    """JSON-safe, unchanged by a round trip, and storable by the server."""
    _walk(value, what, 0, finite=True)  # first: it also bounds the depth json.dumps would recurse into
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArguments(f"{what} must be JSON-serialisable: {exc}") from None
    if json.loads(text) != value:
        raise InvalidArguments(
            f"{what} change in a JSON round trip (use lists, not tuples or sets, and str keys)"
        )
    _check_size(value, what, MAX_BSON_SIZE - DOCUMENT_MARGIN)


def check_storable(value: Any, what: str, limit: int = MAX_BSON_SIZE - DOCUMENT_MARGIN) -> None:
    """Raise InvalidArguments naming the first part of ``value`` MongoDB could not store."""
    _walk(value, what, 0)
    _check_size(value, what, limit)


def _check_size(value: Any, what: str, limit: int) -> None:
    try:
        size = len(bson.encode({"v": value}))
    except Exception as exc:  # anything _walk did not foresee still gets a clear message
        raise InvalidArguments(f"{what}: cannot be stored by MongoDB: {exc}") from None
    if size > limit:
        raise InvalidArguments(f"{what}: {size:,} bytes exceed the storable size of {limit:,} bytes")


def _walk(value: Any, path: str, depth: int, finite: bool = False) -> None:
    """``finite``: refuse NaN and infinity too (JSON has no form for them; BSON has)."""
    if depth > MAX_DEPTH:
        raise InvalidArguments(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        _check_number(value, path, finite)
    elif isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_key(key, path)
            _walk(item, f"{path}[{key!r}]", depth + 1, finite)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _walk(item, f"{path}[{index}]", depth + 1, finite)


def _check_number(value: float, path: str, finite: bool) -> None:
    if isinstance(value, float):
        if finite and not math.isfinite(value):
            raise InvalidArguments(f"{path}: {value!r} has no JSON form (NaN and infinity are not JSON)")
    elif not INT64_MIN <= value <= INT64_MAX:
        shown = str(value) if value.bit_length() <= 256 else f"of {value.bit_length()} bits"
        raise InvalidArguments(f"{path}: int {shown} exceeds MongoDB's 8-byte range")


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArguments(
            f"{path}: {text[exc.start:exc.end]!r} at position {exc.start} is not valid UTF-8 (a lone surrogate)"
        ) from None


def _check_key(key: Any, path: str) -> None:
    if not isinstance(key, str):
        raise InvalidArguments(f"{path}: key {key!r} is a {type(key).__name__}; keys must be str")
    _check_text(key, path)
    if "\x00" in key:
        raise InvalidArguments(f"{path}: key {key!r} contains a NUL character")
    if key.startswith("$") or "." in key:
        raise InvalidArguments(f"{path}: key {key!r} may not start with '$' or contain '.'")


def args_hash(name: str, args: dict[str, Any], mid: str | None, scope: str | None = None) -> str:
    """core4's uniqueness key: the same name and arguments (and mother) is one job.

    ``scope``: a canvas (group, chain, chord) is its own scope, so equal members of
    one group are distinct jobs, while the same call twice outside a canvas is not.
    """
    key: dict[str, Any] = {"name": name, "args": args, "mid": mid}
    if scope is not None:
        key["scope"] = scope
    text = json.dumps(key, sort_keys=True)
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()
