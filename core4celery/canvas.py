"""Celery's canvas (chain, group, chord, map, starmap, chunks) as registry jobs.

Celery carries a chain's remaining steps inside the message and counts a
chord's finished members in its result backend; a lost message or a
restarted Redis loses the rest of the canvas. Here every step of a canvas is
a job from the moment it is called: a later step waits (``after``) for the
jobs before it and is fed their results the way Celery feeds them (the
previous step's result as first argument; a list of a group's results), and
each awaited job names its ``successors`` so its run releases them when it
ends (see :mod:`core4celery.dispatch.dependencies`). ``max_parallel``,
priority and defer apply to every member, because every member is a job.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from celery.canvas import Signature, _chain, _chord, chord, group, maybe_signature

from .errors import InvalidArguments
from .store.document import Links

if TYPE_CHECKING:
    from celery import Celery

COLLECT = "core4celery.collect"  # the body of map/starmap: returns its members' results as a list


@dataclass
class Step:
    """One job of a canvas, before it is written."""

    task: Any  # the Core4Task
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    celery_id: str | None
    after: list[ObjectId]
    fed: str | None  # None, "one" (the previous step's result) or "list" (a group's results)
    job_id: ObjectId = field(default_factory=ObjectId)
    successors: list[ObjectId] = field(default_factory=list)

    def links(self, scope: str, group_id: str | None) -> Links:
        return Links(after=tuple(self.after), successors=tuple(self.successors), scope=scope,
                     group_id=group_id, celery_id=self.celery_id, job_id=self.job_id)


@dataclass(frozen=True)
class Tails:
    """The jobs the next step waits for; ``many`` when they are a group's (then it is fed a list)."""

    ids: tuple[ObjectId, ...] = ()
    many: bool = False

    def fed(self, immutable: bool) -> str | None:
        if not self.ids or immutable:
            return None
        return "list" if self.many else "one"


class Plan:
    """The jobs of one canvas, in the order they were met (a step's dependencies come before it)."""

    def __init__(self, app: Celery, core4_task: type) -> None:
        self._app = app
        self._core4_task = core4_task
        self.steps: list[Step] = []

    def add(self, sig: Any, tails: Tails = Tails(), role: str = "canvas step") -> Tails:
        """``role``: what the caller named it (a link, a chain step), for the error message."""
        if not isinstance(sig, (Signature, dict)):
            raise InvalidArguments(f"{role}: {sig!r} ({type(sig).__name__}) is not a signature (task.s(...))")
        sig = maybe_signature(sig, app=self._app)
        if isinstance(sig, _chain):
            for member in sig.tasks:
                tails = self.add(member, tails)
            return tails
        if isinstance(sig, _chord):
            return self.add(sig.body, self.add(group(sig.tasks, app=self._app), tails))
        if isinstance(sig, group):
            ids: list[ObjectId] = []
            for member in sig.tasks:
                ids.extend(self.add(member, tails).ids)
            return Tails(tuple(ids), many=True)
        return self._task(sig, tails)

    def _task(self, sig: Signature, tails: Tails) -> Tails:
        task = self._app.tasks.get(sig.task)
        if not isinstance(task, self._core4_task):
            raise InvalidArguments(f"canvas step {sig.task!r} is not a core4 task: every step of a core4 canvas is a "
                                   "registry job")
        options = dict(sig.options)
        step = Step(task, tuple(sig.args), dict(sig.kwargs), options, options.get("task_id"), list(tails.ids),
                    tails.fed(bool(sig.immutable)))
        self.steps.append(step)
        after = Tails((step.job_id,))
        rest = options.get("chain") or []  # steps Celery put in this step's options (reversed)
        for follower in reversed(list(rest)):
            after = self.add(follower, after, "chain step")
        for link in _listed(options.get("link")):  # callbacks: fed the result like a chain's next step
            self.add(link, Tails((step.job_id,)), "link")
        return after

    def link_successors(self) -> None:
        by_id = {step.job_id: step for step in self.steps}
        for step in self.steps:
            for job_id in step.after:
                if job_id in by_id:
                    by_id[job_id].successors.append(step.job_id)

    def waiting_first(self) -> list[Step]:
        """Blocked steps before due ones: no job can end before the jobs that wait for it exist."""
        return [step for step in reversed(self.steps) if step.after] + [step for step in self.steps if not step.after]


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def map_signature(task: Any, items: Iterable[Any], star: bool) -> chord:
    """``task.map(it)``/``task.starmap(it)``: one job per item and a collector returning their results as a list."""
    members = [task.s(*item) if star else task.s(item) for item in items]
    return chord(group(members, app=task.app), task.app.tasks[COLLECT].s(), app=task.app)


def chunks_signature(task: Any, items: Iterable[Any], size: int) -> group:
    """``task.chunks(it, n)``: a group of starmaps of n items each (a list of lists, as Celery's)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InvalidArguments(f"chunks: the chunk size must be an int >= 1, got {size!r}")
    return group([map_signature(task, chunk, star=True) for chunk in _chunked(items, size)], app=task.app)


def _chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
