"""The server SIGKILLed under a running job: the store waits and retries, or gives up to lease recovery.

Each test runs its own on-disk SecantusDB with ``--sync-on-commit`` (without it
the server loses its last acknowledged writes on kill -9, which would be the
test server's loss, not ours) and kills its whole process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core4celery.clock import later, now
from core4celery.devserver import free_port, wait_ready
from core4celery.errors import RegistryUnavailable
from core4celery.store.states import State
from tests.conftest import ARTIFACTS

from .conftest import RUN_LEASE, CommandHook, Registry, settings_for

pytestmark = pytest.mark.slow

SERVER_SELECTION = 5.0  # Connection's serverSelectionTimeoutMS: an outage shorter than this is one blocked command
SLOTS = 4  # idle worker slots of the default queue


class DiskServer:
    def __init__(self, storage: Path, log: Path) -> None:
        self.port = free_port()
        self.storage = storage
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"mongodb://127.0.0.1:{self.port}/outage?retryWrites=false"

    def start(self) -> None:
        exe = str(Path(sys.executable).with_name("secantusd-py"))
        cmd = [exe, "--host", "127.0.0.1", "--port", str(self.port), "--storage-path", str(self.storage),
               "--sync-on-commit"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(self.url, 30)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DiskServer]:
    ARTIFACTS.mkdir(exist_ok=True)
    disk = DiskServer(tmp_path / "data", ARTIFACTS / "outage-server.log")
    disk.start()
    try:
        yield disk
    finally:
        disk.kill()


@pytest.fixture
def make_registry() -> Iterator[Any]:
    made: list[Registry] = []

    def make(url: str, outage_timeout: float) -> Registry:
        registry = Registry(settings_for(url, outage_timeout=outage_timeout))
        made.append(registry)
        registry.connection.ensure_indexes()
        registry.provide({"celery": SLOTS})
        return registry

    yield make
    for registry in made:
        registry.close()


@pytest.mark.parametrize("down", [2.5, SERVER_SELECTION + 1.5], ids=["within-server-selection", "retried"])
def test_completion_rides_out_a_server_restart(server: DiskServer, make_registry: Any, down: float) -> None:
    reg: Registry = make_registry(server.url, 20.0)
    witness, _ = reg.running("outage", max_parallel=2)
    doc, run = reg.running("outage", max_parallel=2)

    server.kill()
    outcome: dict[str, Any] = {}

    def finish() -> None:
        try:
            outcome["completed"] = reg.store.complete(run, {"survived": True}, now())
        except BaseException as exc:
            outcome["error"] = exc

    completer = threading.Thread(target=finish, daemon=True)
    began = time.monotonic()
    completer.start()
    completer.join(down)  # the outage: the call must still be retrying when it ends
    assert completer.is_alive(), f"complete returned during the outage: {outcome}"
    server.start()
    completer.join(30)
    assert not completer.is_alive()
    assert outcome == {"completed": True}
    assert time.monotonic() - began < 20
    if down > SERVER_SELECTION:
        assert reg.connection.outage.last_failure > 0  # the outage outlasted one command: Outage.call retried

    assert reg.live(doc["_id"]) is None
    assert reg.journal_count(doc["_id"]) == 1
    copy = reg.journaled(doc["_id"])
    assert copy is not None and copy["state"] == "complete" and copy["result"] == {"survived": True}
    assert reg.holders("outage") == [witness["_id"], doc["_id"]]  # the ending frees nothing ...
    assert reg.give(run)  # ... the finisher gives, once the server is back
    assert reg.holders("outage") == [witness["_id"]] and reg.free() == SLOTS - 1
    assert reg.live(witness["_id"])["state"] == "running"
    reg.check_slots()


@pytest.mark.parametrize("moment", ["before-the-journal-copy", "after-the-journal-copy"])
def test_an_outage_longer_than_outage_timeout_raises_and_leaves_the_job_recoverable(
    server: DiskServer, make_registry: Any, hook: CommandHook, moment: str,
) -> None:
    """The run gives up (RegistryUnavailable); the job stays running, and lease recovery ends it right:
    run again when nothing was journaled, the completion finished when its journal copy had landed."""
    reg: Registry = make_registry(server.url, 2.0)
    doc, run = reg.running("long-outage", attempts=2)

    if moment == "before-the-journal-copy":
        server.kill()
    else:  # the server-side copy is acknowledged, then the server dies
        hook.arm("aggregate", reg.connection.jobs.name, server.kill)
    began = time.monotonic()
    with pytest.raises(RegistryUnavailable) as caught:
        reg.store.complete(run, "result of run 1", now())
    waited = time.monotonic() - began
    assert "unreachable for 2 s" in str(caught.value)
    # bounded: outage_timeout plus at most one server-selection wait (5 s) of the attempt in flight
    assert 2.0 <= waited < 2.0 + SERVER_SELECTION + 2.0, waited

    server.start()
    live = reg.live(doc["_id"])
    assert live is not None and live["state"] == State.RUNNING.value
    assert live["locked"]["run"] == doc["locked"]["run"]
    assert reg.holders("long-outage") == [doc["_id"]]
    journaled = moment == "after-the-journal-copy"
    assert reg.journal_count(doc["_id"]) == int(journaled)

    # its worker gave the run up; lease recovery (on any node) ends it
    expired = reg.store.expired_runs(later(RUN_LEASE + 5))
    assert [d["_id"] for d in expired] == [doc["_id"]]
    assert reg.store.recover(expired[0], "lease expired")
    assert reg.holders("long-outage") == [] and reg.free() == SLOTS  # recovery freed the slots
    reg.check_slots()
    if journaled:  # the completion is finished: the result of run 1 is kept, nothing runs again
        assert reg.live(doc["_id"]) is None
        copy = reg.journaled(doc["_id"])
        assert copy["state"] == "complete" and copy["result"] == "result of run 1"
        assert reg.journal_count(doc["_id"]) == 1
        return
    recovered = reg.live(doc["_id"])
    assert recovered is not None and recovered["state"] == "pending" and recovered["attempts_left"] == 2
    _, again = reg.claim_and_start(recovered)
    assert again.trial == 2 and again.attempts_left == 2
    assert reg.store.complete(again, "result of run 2", now())
    assert reg.give(again)
    assert reg.journaled(doc["_id"])["result"] == "result of run 2"
    reg.check_slots()
