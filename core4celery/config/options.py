"""core4 job options: defaults, validation and enqueue-time overrides.

Validation happens when a task class is created, so a typo such as
``max_parallel=0`` fails at import time rather than on some worker at 3 a.m.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import InvalidOption
from .numbers import check_number, check_seconds

ENQUEUE_OPTIONS = (
    "attempts", "priority", "max_parallel", "defer_time", "defer_max", "error_time",
    "zombie_time", "wall_time", "progress_interval", "force", "time_limit", "worker", "max_per_node",
)


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
    time_limit: float | None = None  # Celery's hard limit: a run still going after this is killed
    worker: tuple[str, ...] | None = None  # runs only on these workers (node names or fnmatch patterns)
    max_per_node: int | None = None  # at most this many at once on one worker, beside max_parallel

    def __post_init__(self) -> None:
        check_number("attempts", self.attempts, InvalidOption, integer=True, above=0)
        check_number("max_parallel", self.max_parallel, InvalidOption, integer=True, above=0)
        check_number("priority", self.priority, InvalidOption, integer=True)
        for name in ("defer_time", "defer_max", "error_time", "zombie_time", "progress_interval"):
            check_seconds(name, getattr(self, name), InvalidOption)
        for name in ("wall_time", "time_limit"):
            if getattr(self, name) is not None:
                check_seconds(name, getattr(self, name), InvalidOption)
        if self.max_per_node is not None:
            check_number("max_per_node", self.max_per_node, InvalidOption, integer=True, above=0)
        object.__setattr__(self, "worker", check_worker_pin(self.worker))
        if not isinstance(self.force, bool):
            raise InvalidOption(f"force must be True or False, got {self.force!r}")

    @classmethod
    def from_class(cls, task_cls: type) -> JobOptions:
        """Collect options from class attributes, own or inherited, and Celery's retry settings.

        A task's own ``max_retries`` (or ``retry_kwargs["max_retries"]``) sets
        ``attempts`` to one more, and its own ``default_retry_delay`` sets
        ``error_time``, unless the task sets those core4 options itself. Only
        the task's own: every Celery task inherits ``max_retries=3``.
        """
        values = {f.name: getattr(task_cls, f.name) for f in fields(cls) if hasattr(task_cls, f.name)}
        return cls(**{**values, **celery_retry_options(task_cls)})

    def override(self, values: dict[str, Any]) -> JobOptions:
        unknown = set(values) - set(ENQUEUE_OPTIONS)
        if unknown:
            raise InvalidOption(f"unknown job option(s): {', '.join(sorted(unknown))}"
                                f"{option_hint(unknown, ENQUEUE_OPTIONS)}")
        return replace(self, **values)

    def as_document(self) -> dict[str, Any]:
        return asdict(self)


def check_worker_pin(value: object) -> tuple[str, ...] | None:
    """``worker="w1@host"``, a list of names, or fnmatch patterns (``"*@gpu-*"``): each a non-empty node name."""
    if value is None:
        return None
    pins = [value] if isinstance(value, str) else value
    if not isinstance(pins, (list, tuple)) or not pins:
        raise InvalidOption(f"worker must be a worker name, a pattern or a non-empty list of them, got {value!r}")
    for pin in pins:
        if not isinstance(pin, str) or not pin.strip() or len(pin) > 255 or any(c.isspace() for c in pin):
            raise InvalidOption(f"worker: {pin!r} is not a worker name or pattern (like 'w1@host' or '*@host')")
    return tuple(pins)


def celery_retry_options(task_cls: type) -> dict[str, Any]:
    own = task_cls.__dict__
    mapped: dict[str, Any] = {}
    retry_kwargs = own.get("retry_kwargs") or {}
    max_retries = retry_kwargs.get("max_retries", own.get("max_retries", 0)) if isinstance(retry_kwargs, dict) else 0
    if "attempts" not in own and ("max_retries" in own or "max_retries" in retry_kwargs):
        if max_retries is None or isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidOption(f"max_retries must be an int >= 0 (a core4 job has a finite number of attempts), "
                                f"got {max_retries!r}")
        mapped["attempts"] = max_retries + 1
    if "error_time" not in own and own.get("default_retry_delay") is not None:
        mapped["error_time"] = own["default_retry_delay"]
    return mapped


# Celery task options that mean nothing for a core4 job, refused at definition with the reason
MEANINGLESS = {
    "acks_late": "a ticket is always acknowledged after its run; the registry, not the broker, brings a job back",
    "reject_on_worker_lost": "a job whose worker died is recovered by the registry (run again, no attempt used)",
    "acks_on_failure_or_timeout": "a failed run is recorded in the registry; its ticket is always acknowledged",
    "rate_limit": "core4 limits jobs by max_parallel (running at once), not by a per-worker rate",
    "ignore_result": "a core4 job's result is kept with the job in the registry",
    "store_errors_even_if_ignored": "a core4 job's error is always kept with the job in the registry",
}


def refuse_meaningless(task_cls: type) -> None:
    """A Celery option set on a core4 task that would silently do nothing is an error, said with why."""
    own = task_cls.__dict__
    for name, reason in MEANINGLESS.items():
        if own.get(name) is not None:
            task = own.get("name") or task_cls.__qualname__
            raise InvalidOption(f"task {task}: {name}={own[name]!r} has no meaning for a core4 job: {reason}")


def option_hint(given: Iterable[str], known: Iterable[str]) -> str:
    """``" (did you mean max_parallel?)"`` for a name close to a known option (a typo), else ``""``."""
    names = list(known)
    for name in sorted(given):
        if name in names:
            continue
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.75)
        if close:
            return f" (did you mean the option {close[0]} instead of {name}?)"
    return ""


def check_author(task_cls: type) -> None:
    """core4 requires ``author`` in the concrete class itself, never inherited."""
    author = task_cls.__dict__.get("author")
    if not isinstance(author, str) or not author.strip():
        name = getattr(task_cls, "name", None) or task_cls.__qualname__
        raise InvalidOption(f"task {name} needs an author (a non-empty str) in its own definition")
