"""Nudges: a worker's own processes tell its consumer that a ticket is out, without a server command.

While it is busy, a worker's consumer polls its queues every ``polling_interval``
(0.05 s) and sleeps in between. A run that ends hands its slots to the next job
and publishes that job's ticket from its pool process; the consumer would find it
only at its next poll, half an interval later on average. Every job of a burst
and every link of a ``max_parallel`` chain paid that wait. A nudge ends the sleep:
one datagram on a local socket named after the worker's main process, so the
consumer polls at once. Best effort: a lost nudge costs the old wait, nothing else.

Rings (:mod:`core4celery.wakeups`) stay the way to reach other machines and a
consumer waiting on the server; nudges reach only the worker whose process
published. Linux only (an abstract socket name leaves no file behind); elsewhere
``listen`` does nothing and waits are plain sleeps.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time

from .process import PerProcess

_ENABLED = sys.platform.startswith("linux")
_owner = 0  # pid of the worker main process that listens; pool children inherit it when forked
_listener: socket.socket | None = None
_poller: select.poll | None = None  # poll, not select: a busy worker's descriptors go past select's 1024


def _address(pid: int) -> str:
    return f"\0core4celery-nudge-{pid}"


def _sender() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


_senders: PerProcess[socket.socket] = PerProcess(_sender)


def listen() -> None:
    """In a worker's main process, before its pool forks: its consumer can be nudged from now on."""
    global _owner, _listener, _poller
    if not _ENABLED or (_listener is not None and _owner == os.getpid()):
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(_address(os.getpid()))
    except OSError:
        sock.close()
        return
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    _owner, _listener, _poller = os.getpid(), sock, poller


def nudge() -> None:
    """Wake this worker's consumer (from its main process or a pool child); a no-op anywhere else."""
    if not _owner:
        return
    try:
        _senders.get().sendto(b"!", _address(_owner))
    except OSError:  # the consumer is gone, or its buffer is full of nudges already
        pass


def wait(seconds: float) -> None:
    """Sleep up to ``seconds``; the consumer's process returns early when nudged."""
    if _listener is None or _poller is None or _owner != os.getpid():
        time.sleep(seconds)
        return
    if _poller.poll(seconds * 1000):
        _drain(_listener)


def _drain(sock: socket.socket) -> None:
    """Many nudges since the last poll ask for one poll."""
    while True:
        try:
            sock.recv(64)
        except OSError:
            return
