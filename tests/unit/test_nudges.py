"""Nudges end a worker consumer's sleep between polls; they never reach the server."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import pytest

from core4celery import nudges

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nudges are Linux only")


@pytest.fixture
def listening(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process as a worker's main process (its state restored afterwards)."""
    for name in ("_owner", "_listener", "_poller"):
        monkeypatch.setattr(nudges, name, getattr(nudges, name))
    nudges._owner, nudges._listener, nudges._poller = 0, None, None
    nudges.listen()
    assert nudges._owner == os.getpid() and nudges._listener is not None
    yield
    nudges._listener.close()  # its name is free again for the next test of this process


@pytest.fixture
def crowded() -> Iterator[None]:
    """More than 1024 open descriptors, as in a long-lived worker with many connections."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if min(hard, 4096) < 1200:
        pytest.skip("cannot open more than 1024 descriptors here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        yield
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def timed_wait(seconds: float) -> float:
    began = time.monotonic()
    nudges.wait(seconds)
    return time.monotonic() - began


@pytest.mark.usefixtures("listening")
def test_a_nudge_from_a_forked_child_ends_the_wait() -> None:
    pid = os.fork()
    if pid == 0:  # a pool child: it inherited the owner, not a listener of its own
        try:
            time.sleep(0.2)
            nudges.nudge()
        finally:
            os._exit(0)
    try:
        assert timed_wait(30.0) < 10.0
    finally:
        os.waitpid(pid, 0)


@pytest.mark.usefixtures("crowded", "listening")
def test_a_nudge_reaches_a_listener_past_descriptor_1024() -> None:
    assert nudges._listener is not None and nudges._listener.fileno() > 1024
    nudges.nudge()
    assert timed_wait(30.0) < 10.0


@pytest.mark.usefixtures("listening")
def test_many_nudges_ask_for_one_poll() -> None:
    for _ in range(50):
        nudges.nudge()
    assert timed_wait(30.0) < 10.0
    assert timed_wait(0.3) >= 0.25  # all fifty were drained by the first wait


def test_without_a_listener_a_nudge_does_nothing_and_a_wait_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nudges, "_owner", 0)
    monkeypatch.setattr(nudges, "_listener", None)
    monkeypatch.setattr(nudges, "_poller", None)
    nudges.nudge()
    assert timed_wait(0.3) >= 0.25


def test_a_nudge_to_a_worker_that_is_gone_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nudges, "_owner", 2 ** 22 + 7)  # no process listens under this pid's name
    nudges.nudge()
