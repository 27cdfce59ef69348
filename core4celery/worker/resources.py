"""core4's resource gate (§4.7): a worker takes no new job while it is short of CPU or memory.

Each heartbeat the worker samples the utilisation of its least-busy core
(so the gate trips only when every core is busy) and its free memory, and
keeps their mean over the last minute. While the mean CPU is above
``max_cpu`` or the mean free RAM below ``min_free_ram`` the gate is closed:
the worker stops consuming its shared queues, so it takes no ticket at all
and its idle slots are not counted for them (other workers get the work). It
keeps consuming its own queue, where only ``force`` jobs and jobs pinned to
it arrive — a ``force`` job passes the gate, as in core4. The decision is the
node's own, before it takes a ticket, so a node that looks free to others
cannot be flooded.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import psutil

WINDOW = 60.0  # seconds of samples in the mean (core4's worker.avg_stats_secs)
MIB = 2**20


def sample_resources() -> tuple[float, float]:
    """(least-busy core's CPU percent since the last call, free memory in MiB), as core4 samples them."""
    return min(psutil.cpu_percent(percpu=True)), psutil.virtual_memory().free / MIB


class ResourceGate:
    def __init__(self, max_cpu: float, min_free_ram: float, window: float = WINDOW,
                 sample: Callable[[], tuple[float, float]] = sample_resources,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_cpu = max_cpu
        self.min_free_ram = min_free_ram
        self._window = window
        self._sample = sample
        self._clock = clock
        self._samples: deque[tuple[float, float, float]] = deque()

    def sample(self) -> None:
        stamp = self._clock()
        cpu, free = self._sample()
        self._samples.append((stamp, cpu, free))
        while self._samples and self._samples[0][0] < stamp - self._window:
            self._samples.popleft()

    @property
    def mean(self) -> tuple[float, float]:
        """(mean CPU percent, mean free MiB) over the window; (0, inf) before the first sample."""
        if not self._samples:
            return 0.0, float("inf")
        count = len(self._samples)
        return sum(s[1] for s in self._samples) / count, sum(s[2] for s in self._samples) / count

    @property
    def open(self) -> bool:
        cpu, free = self.mean
        return cpu <= self.max_cpu and free >= self.min_free_ram

    def report(self) -> dict[str, Any]:
        """What the heartbeat shows (``core4celery workers``)."""
        cpu, free = self.mean
        return {"open": self.open, "cpu": round(cpu, 1), "free_ram": round(min(free, 1e12), 1),
                "max_cpu": self.max_cpu, "min_free_ram": self.min_free_ram}


class GateKeeper:
    """Applies the gate to this worker: its shared queues are consumed only while the gate is open.

    The switch goes through Celery's own remote control (``cancel_consumer``/``add_consumer`` addressed
    to this worker), which the consumer carries out on its own thread.
    """

    def __init__(self, gate: ResourceGate, app: Any, node_name: str, shared: list[str],
                 log: Callable[..., object]) -> None:
        self.gate = gate
        self._app = app
        self._node_name = node_name
        self._shared = shared
        self._log = log
        self.gate.sample()
        self._open = self.gate.open
        self._next_note = 0.0

    @property
    def open(self) -> bool:
        return self._open

    @property
    def shared(self) -> list[str]:
        return list(self._shared)

    def closed_at_start(self) -> list[str]:
        """The shared queues not to consume from the start (all, when the gate starts closed)."""
        return [] if self._open else list(self._shared)

    def beat(self) -> None:
        self.gate.sample()
        now_open = self.gate.open
        if now_open != self._open:
            self._switch(now_open)
        elif not now_open and time.monotonic() >= self._next_note:
            self._note()

    def _switch(self, now_open: bool) -> None:
        control = self._app.control
        for queue in self._shared:
            if now_open:
                control.add_consumer(queue, destination=[self._node_name], reply=False)
            else:
                control.cancel_consumer(queue, destination=[self._node_name], reply=False)
        self._open = now_open
        if now_open:
            cpu, free = self.gate.mean
            self._log("resources available again: cpu [%1.1f], memory [%1.1f]; taking jobs from %s", cpu, free,
                      ", ".join(self._shared))
        else:
            self._note()

    def _note(self) -> None:
        """core4's line (its "skipped job" message, for the node rather than one job), at most once a minute."""
        cpu, free = self.gate.mean
        self._log("skipped jobs of %s: not enough resources available: cpu [%1.1f], memory [%1.1f] "
                  "(max_cpu %s, min_free_ram %s MiB; force jobs still run)", ", ".join(self._shared), cpu, free,
                  self.gate.max_cpu, self.gate.min_free_ram)
        self._next_note = time.monotonic() + WINDOW
