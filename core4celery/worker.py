"""The worker bootstep: registers the worker and runs the dispatcher and
housekeeping on a thread of the worker's main process.

A thread (not Celery's consumer timer) keeps heartbeats and leases going
even while the consumer blocks on a full pool, which happens on the
MongoDB transport's synchronous event loop.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from celery import bootsteps, signals

from .control import Control
from .maintenance import Maintenance
from .node import Node

if TYPE_CHECKING:
    from .core import Core4

log = logging.getLogger(__name__)


class Ticker(threading.Thread):
    def __init__(self, core4: Core4, node: Node) -> None:
        super().__init__(name="core4celery-ticker", daemon=True)
        self.core4 = core4
        self.node = node
        self.maintenance = Maintenance(core4.registry, core4.dispatcher.gates)
        self.control = Control(core4.registry)
        self.stopping = threading.Event()
        self.draining = threading.Event()

    def run(self) -> None:
        settings = self.core4.settings
        next_beat = 0.0
        while not self.stopping.is_set():
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + settings.heartbeat_interval
                    self.housekeeping()
                if not self.draining.is_set():
                    self.core4.dispatcher.run(before=self.maintenance.repair_gates)
            except Exception:
                log.exception("core4celery housekeeping failed; retrying")
            self.stopping.wait(settings.dispatch_interval)

    def housekeeping(self) -> None:
        self.node.beat(draining=self.draining.is_set())
        self.node.tend(self.maintenance)
        self.maintenance.requeue_lost_tickets()
        self.maintenance.recover_expired_runs()
        self.maintenance.sweep_removed()
        if not self.draining.is_set() and self.control.halt_requested(self.node.started_at):
            log.warning("core4celery halt requested: finishing running jobs, then exiting")
            self.draining.set()
            self.node.beat(draining=True)
            os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown waits for running jobs


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
        self.core4.registry  # noqa: B018 - indexes and broker collections before the consumer connects
        self.ticker: Ticker | None = None

    def start(self, worker: Any) -> None:
        node = Node(self.core4, self.worker_id, worker.hostname, int(worker.concurrency or 1))
        node.beat()
        self.ticker = Ticker(self.core4, node)
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
        ticker.node.leave()
        self.ticker = None
