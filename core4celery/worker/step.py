"""The worker bootstep: registers the worker and runs the dispatcher and
housekeeping on a thread of the worker's main process.

A thread (not Celery's consumer timer) keeps heartbeats and leases going
even while the consumer blocks on a full pool, which happens on the
MongoDB transport's synchronous event loop.

Every worker beats and tends its own runs. The cluster's upkeep — timed
dispatch, housekeeping rounds, slot repair, reconciling slots with the
workers, the dependency sweep, the front and the schedules — is done by one
worker at a time, the *keeper* (a lease in the slots document, renewed each
beat, taken over by another worker ``KEEPER_BEATS`` beats after its keeper
stopped). Each of those duties is safe to run concurrently, so a keeper
that lost its lease unknowingly does no harm; done by every worker they cost
the server about a dozen commands per worker per second.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery import bootsteps, signals
from kombu import Exchange, Queue
from pymongo.errors import ConnectionFailure

from ..clock import now
from ..dispatch.front import FrontKeeper
from ..dispatch.routing import personal_queue
from ..errors import RegistryUnavailable
from ..metrics import code_path
from ..store.slots import SlotState
from ..transport import sleep_when_idle
from .housekeeping import Housekeeping
from .node import Node, kill_process
from .resources import GateKeeper, ResourceGate
from .scheduler import Scheduler, scheduled_tasks

if TYPE_CHECKING:
    from ..core import Core4

log = logging.getLogger(__name__)

KEEPER_BEATS = 3  # heartbeats a keeper's lease lasts


class Ticker(threading.Thread):
    def __init__(self, core4: Core4, node: Node, identity: dict[str, Any]) -> None:
        super().__init__(name="core4celery-ticker", daemon=True)
        self.core4 = core4
        self.node = node
        self.identity = identity  # worker_id, hostname, concurrency, queues (a callable), started_at
        self.housekeeping = Housekeeping(core4.store, core4.outage, core4.settings.run_lease)
        self.front = FrontKeeper(core4.store)
        self.scheduler = Scheduler(core4.schedules, identity["worker_id"], core4.settings.worker_timeout,
                                   lambda: scheduled_tasks(core4.app.tasks), core4.enqueue,
                                   paused=lambda: core4.control.paused() is not None)
        self.stopping = threading.Event()
        self.draining = threading.Event()
        self.keeping = False  # this worker holds the keeper's lease (as of its last beat)
        self.joined = False  # its first beat reconciled the slots itself: its own are usable at once

    def run(self) -> None:
        settings = self.core4.settings
        next_beat = 0.0
        while not self.stopping.is_set():
            try:
                beat = time.monotonic() >= next_beat
                if beat:
                    next_beat = time.monotonic() + settings.heartbeat_interval
                    self.beat()
                if self.keeping and not self.draining.is_set():
                    self.core4.dispatcher.tick()
            except (ConnectionFailure, RegistryUnavailable) as exc:
                self.core4.outage.note()
                log.warning("core4celery housekeeping: MongoDB unreachable (%s); retrying", type(exc).__name__)
            except Exception:
                log.exception("core4celery housekeeping failed; retrying")
            self.stopping.wait(settings.dispatch_interval)

    def beat(self) -> None:
        with code_path("housekeeping"):
            self._beat()

    def _beat(self) -> None:
        ident = self.identity
        draining = self.draining.is_set()
        gate = ident["gate"]
        gate.beat()
        self.core4.nodes.beat(ident["worker_id"], ident["hostname"], ident["concurrency"], ident["queues"](),
                              ident["started_at"], draining,
                              extra={"personal": ident["personal"], "serves": ident["serves"],
                                     "gate": gate.gate.report()})
        state = self.core4.store.slots()
        active = state.active()
        self.node.tend(active)
        keeping = not draining and self._lead(state)
        if self.keeping and not keeping:
            self.core4.store.resign(ident["worker_id"])  # draining: the next keeper need not wait for the lease
        self.keeping = keeping
        if not self.joined:  # its own slots are usable at once, not at the keeper's next beat
            self.core4.dispatcher.reconcile()
            self.joined = True
        if keeping:
            self.housekeeping.round(active)
            self.core4.store.repair_slots()
            self.core4.dispatcher.reconcile()
            self.core4.dependencies.sweep()
            self.front.keep()
            self.scheduler.beat()
        else:
            self.front.forget()
        if draining:
            self.scheduler.resign()
        if not draining and self.core4.control.halt_requested(ident["started_at"]):
            log.warning("core4celery halt requested: finishing running jobs, then exiting")
            self.draining.set()
            self._beat()
            os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown waits for running jobs

    def _lead(self, state: SlotState) -> bool:
        """Keep (or take over) the keeper's lease; no command while another worker holds it.

        A worker too young to recover other workers' runs (``Housekeeping.may_recover``) takes over an
        expired lease only one lease later, so a settled worker wins it: under churn a young keeper
        would otherwise leave dead workers' runs unrecovered until it had settled itself.
        """
        lease = KEEPER_BEATS * self.core4.settings.heartbeat_interval
        patience = 0.0 if self.housekeeping.may_recover() else lease
        if state.kept_by_other(self.identity["worker_id"], now() - timedelta(seconds=patience)):
            return False
        return self.core4.store.lead(self.identity["worker_id"], lease, patience)


def pool_terminate(worker: Any) -> Callable[[int], object]:
    """The pool's controlled termination (what ``revoke(terminate=True)`` uses): the pool reports the
    job as terminated (revoked) instead of logging a lost worker with a traceback."""
    def terminate(pid: int) -> None:
        pool = getattr(worker, "pool", None)
        if pool is not None and hasattr(pool, "terminate_job"):
            pool.terminate_job(pid, signal.SIGKILL)
        else:
            kill_process(pid)
    return terminate


class Core4WorkerStep(bootsteps.StartStopStep):
    """Installed by ``Core4(app)``; runs in every ``celery worker``."""

    label = "core4celery"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.core4: Core4 = worker.app.core4celery
        self.worker_id = f"{worker.hostname}:{os.getpid()}"
        self.core4.attach_worker(self.worker_id)  # pool children inherit it when forked
        if worker.task_events:
            self.core4.events.enable(worker.hostname)
        self.core4.prepare()  # indexes and broker collections before the consumer connects
        self.personal, self.gate = self._queues(worker)
        sleep_when_idle(self.core4.settings.idle_wait)  # this process's consumer waits for wake-ups when idle
        self.ticker: Ticker | None = None

    def _queues(self, worker: Any) -> tuple[str, GateKeeper]:
        """This worker's own queue (pinned, per-node capped and forced jobs), consumed whatever its gate
        says; its shared queues only while the resource gate is open (see worker/resources.py)."""
        queues = worker.app.amqp.queues
        shared = sorted(queues.consume_from)
        personal = personal_queue(worker.hostname)
        queues.select_add(Queue(personal, Exchange(personal), routing_key=personal))
        settings = self.core4.settings
        gate = GateKeeper(ResourceGate(settings.max_cpu, settings.min_free_ram), worker.app, worker.hostname,
                          shared, log.info)
        closed = gate.closed_at_start()
        if closed:
            queues.deselect(closed)
            gate.beat()  # logs core4's line
        return personal, gate

    def start(self, worker: Any) -> None:
        app = worker.app
        identity = {
            "worker_id": self.worker_id, "hostname": worker.hostname, "concurrency": int(worker.concurrency or 1),
            "queues": lambda: list(app.amqp.queues.consume_from), "started_at": now(),
            "personal": self.personal, "serves": self.gate.shared, "gate": self.gate,
        }
        node = Node(self.core4.store, self.worker_id, self.core4.settings.run_lease,
                    request_dispatch=self.core4.dispatch, terminate=pool_terminate(worker))
        self.ticker = Ticker(self.core4, node, identity)
        self.ticker.beat()
        self.ticker.start()
        signals.worker_shutdown.connect(self._on_shutdown, weak=False)
        log.info("core4celery worker %s registered at %s", self.worker_id, self.core4.settings.masked_url)

    def stop(self, worker: Any) -> None:
        """Stop taking work but keep leases alive until the pool has finished."""
        if self.ticker is not None:
            self.ticker.draining.set()

    def _on_shutdown(self, **_: Any) -> None:
        ticker = self.ticker
        if ticker is None:
            return
        ticker.stopping.set()
        ticker.join(timeout=5)
        ticker.scheduler.resign()  # the next worker's heartbeat schedules, not one lease later
        self.core4.store.resign(self.worker_id)
        self.core4.nodes.leave(self.worker_id)
        self.ticker = None
