"""core4's scheduler, run by the workers themselves: no extra process to deploy or to lose.

Each worker's ticker calls :meth:`Scheduler.beat` once per heartbeat; only the
worker holding the scheduler lease (see :mod:`core4celery.store.schedules`)
goes on, so a dead scheduler's place is taken by another worker within one
lease (``worker_timeout``). core4's rules, per scheduled task:

* the first time a schedule is seen nothing fires; it counts from then;
* a tick is due when the first cron time after ``last_run`` has passed; firing
  sets ``last_run`` to now, so after any downtime at most one catch-up runs;
* a tick whose job still exists (same name, no arguments, waiting or
  running) is skipped: logged at INFO and counted, never queued twice;
* nothing fires while dispatching is paused (core4's maintenance); the ticks
  missed meanwhile become one catch-up after the resume.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..clock import now
from ..config.cron import Cron
from ..errors import Core4Error, JobExists, RegistryUnavailable
from ..store.connection import Doc
from ..store.schedules import ScheduleStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tick:
    """What one due tick came to: ``fired`` (job_id is the new job), ``skipped`` (the existing job) or ``failed``."""

    name: str
    at: datetime
    outcome: str
    job_id: str | None = None


def scheduled_tasks(tasks: Mapping[str, Any]) -> dict[str, Cron]:
    """The app's core4 tasks that carry a schedule of their own, by name."""
    found: dict[str, Cron] = {}
    for name, task in tasks.items():
        cron = getattr(task, "core4_schedule", None)
        if isinstance(cron, Cron):
            found[name] = cron
    return found


class Scheduler:
    def __init__(self, store: ScheduleStore, owner: str, lease: float, schedules: Callable[[], Mapping[str, Cron]],
                 enqueue: Callable[[str], str], paused: Callable[[], bool] = lambda: False,
                 clock: Callable[[], datetime] = now) -> None:
        self._store = store
        self._owner = owner
        self._lease = lease
        self._schedules = schedules
        self._enqueue = enqueue
        self._paused = paused
        self._clock = clock
        self.leading = False

    def beat(self) -> list[Tick]:
        """Renew (or try to take) the lease and fire the due ticks; what each due tick came to."""
        schedules = self._schedules()
        if not schedules:
            return []  # an app without schedules never takes the lease
        stamp = self._clock()
        leading = self._store.lead(self._owner, self._lease, stamp)
        if leading != self.leading:
            log.info("scheduler: %s %s the lease", self._owner, "took" if leading else "lost")
            self.leading = leading
        if not leading or self._paused():
            return []
        states = self._store.states()
        ticks = [self._tick(name, cron, states.get(name), stamp) for name, cron in sorted(schedules.items())]
        return [tick for tick in ticks if tick is not None]

    def resign(self) -> None:
        """A draining worker hands the lease on at once instead of letting it expire."""
        if self.leading:
            self._store.resign(self._owner)
            self.leading = False
            log.info("scheduler: %s resigned the lease", self._owner)

    def _tick(self, name: str, cron: Cron, state: Doc | None, stamp: datetime) -> Tick | None:
        if state is None or state.get("cron") != cron.expression:
            if self._store.begin(name, cron.expression, stamp, cron.next_after(stamp)):
                log.info("scheduler: %s scheduled %r (UTC), next run %s", name, cron.expression, cron.next_after(stamp))
            return None
        last_run: datetime = state["last_run"]
        if cron.next_after(last_run) > stamp:
            return None
        if not self._store.claim(name, cron.expression, last_run, stamp, cron.next_after(stamp), self._owner):
            return None  # another scheduler claimed this tick
        return self._fire(name, stamp)

    def _fire(self, name: str, stamp: datetime) -> Tick:
        try:
            job_id = self._enqueue(name)
        except JobExists as exc:
            log.info("scheduler: %s skipped at %s, its job %s still exists", name, stamp, exc.job_id)
            self._store.skipped(name, exc.job_id, stamp)
            return Tick(name, stamp, "skipped", exc.job_id)
        except RegistryUnavailable:
            raise  # the ticker rides it out; this tick is lost (at most once)
        except Core4Error as exc:  # the task cannot run without arguments, say: the next tick tries again
            log.error("scheduler: %s could not be enqueued: %s", name, exc)
            self._store.failed(name, str(exc), stamp)
            return Tick(name, stamp, "failed")
        log.info("scheduler: %s enqueued as job %s", name, job_id)
        self._store.fired(name, job_id, stamp)
        return Tick(name, stamp, "fired", job_id)
