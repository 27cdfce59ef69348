"""core4 job options: defaults, validation and enqueue-time overrides.

Validation happens when a task class is created, so a typo such as
``max_parallel=0`` fails at import time rather than on some worker at 3 a.m.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import InvalidOption

ENQUEUE_OPTIONS = (
    "attempts", "priority", "max_parallel", "defer_time", "defer_max", "error_time",
    "zombie_time", "wall_time", "progress_interval", "force",
)


def _positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidOption(f"{name} must be a number > 0, got {value!r}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidOption(f"{name} must be an int > 0, got {value!r}")


@dataclass(frozen=True)
class JobOptions:
    """core4's defaults (core4.yaml ``job:``), durations in seconds."""

    attempts: int = 1
    priority: int = 0
    max_parallel: int = 15
    defer_time: float = 300
    defer_max: float = 3600
    error_time: float = 600
    zombie_time: float = 1800
    wall_time: float | None = None
    progress_interval: float = 5
    force: bool = False

    def __post_init__(self) -> None:
        _positive_int("attempts", self.attempts)
        _positive_int("max_parallel", self.max_parallel)
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise InvalidOption(f"priority must be an int, got {self.priority!r}")
        for name in ("defer_time", "defer_max", "error_time", "zombie_time", "progress_interval"):
            _positive(name, getattr(self, name))
        _positive("wall_time", self.wall_time, allow_none=True)
        if not isinstance(self.force, bool):
            raise InvalidOption(f"force must be True or False, got {self.force!r}")

    @classmethod
    def from_class(cls, task_cls: type) -> JobOptions:
        """Collect options from class attributes, own or inherited."""
        values = {f.name: getattr(task_cls, f.name) for f in fields(cls) if hasattr(task_cls, f.name)}
        return cls(**values)

    def override(self, values: dict[str, Any]) -> JobOptions:
        unknown = set(values) - set(ENQUEUE_OPTIONS)
        if unknown:
            raise InvalidOption(f"unknown job option(s): {', '.join(sorted(unknown))}")
        return replace(self, **values)

    def as_document(self) -> dict[str, Any]:
        return asdict(self)


def check_author(task_cls: type) -> None:
    """core4 requires ``author`` in the concrete class itself, never inherited."""
    author = task_cls.__dict__.get("author")
    if not isinstance(author, str) or not author.strip():
        name = getattr(task_cls, "name", None) or task_cls.__qualname__
        raise InvalidOption(f"task {name} needs an author (a non-empty str) in its own definition")
