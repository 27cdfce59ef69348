"""The project's jobs, shared so that any app (the worker's, a test's ``core4_app``) has them."""

from __future__ import annotations

from celery import shared_task

from core4celery import Core4Task


class Refused(Exception):
    pass


@shared_task(base=Core4Task, bind=True, name="userproj.square", author="user")
def square(self: Core4Task, n: int) -> int:
    self.progress(0.5, "half way")
    return n * n


@shared_task(base=Core4Task, bind=True, name="userproj.refuse", author="user")
def refuse(self: Core4Task, why: str) -> None:
    raise Refused(why)


@shared_task(base=Core4Task, bind=True, name="userproj.fan_out", author="user", defer_time=1)
def fan_out(self: Core4Task, count: int) -> int:
    """Enqueues ``count`` children, then waits (deferred) until they are done."""
    if self.trial == 1:
        for n in range(count):
            self.enqueue(square, n=n)
        self.defer("launched %d children", count)
    if self.children():
        self.defer("waiting for %d children", len(self.children()))
    return count
