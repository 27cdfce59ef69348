"""Chaos run: real workers, a real on-disk server, SIGKILLs while the jobs drain, then the registry's account.

    .venv/bin/python -m tests.chaos.chaos --jobs 1000 --seed 1

1. starts its own SecantusDB on disk (``--sync-on-commit``) in its own process group;
2. enqueues ``--jobs`` jobs of ``tests/chaos/app.py`` (quick, gated with max_parallel=3, deferring,
   flaky, mothers with 3-5 children) and starts ``--workers`` celery workers;
3. while the jobs drain: SIGKILLs a random whole worker every ``--kill-every`` seconds (and starts
   a replacement), once SIGKILLs one pool child, once SIGKILLs the server for ``--server-down`` s
   and restarts it on the same storage and port; every kill is recorded with its time and pids;
4. when no live job is pending/deferred/failed/running any more (or nothing moved for
   ``--stall-timeout`` s, or ``--drain-timeout`` passed) it stops killing, waits ``--settle`` s and checks:
   every job (and child) journaled ``complete``; no ``complete`` job left live; no job left ``running``;
   at most 3 ``chaos.gated`` runs at a time; no two runs of one job at the same time.

Prints a summary and a table, writes the figures to ``test-artifacts/chaos/result-<seed>.json`` and
exits 0 only when every violation count is zero (1 otherwise, 2 when the run itself could not be done).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, TypeVar

from bson import ObjectId
from pymongo import MongoClient
from pymongo.errors import PyMongoError

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "chaos"
APP_MODULE = "tests.chaos.app"
DB_NAME = "chaos"
LIVE = "core4_jobs"
JOURNAL = "core4_journal"
WORKERS = "core4_workers"
RUNS = "chaos_runs"
NON_FINAL = ("pending", "deferred", "failed", "running")
GATED = "chaos.gated"
GATED_MAX = 3
MIX = (("quick", 0.40), ("gated", 0.20), ("deferring", 0.15), ("flaky", 0.15), ("mother", 0.10))
TICK = 0.2

T = TypeVar("T")

try:  # the package's helpers while they exist; the fallbacks below do the same
    from core4celery.devserver import free_port, wait_ready
except ImportError:  # pragma: no cover - depends on the package layout
    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def wait_ready(url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                client: MongoClient[Any] = MongoClient(url, serverSelectionTimeoutMS=500)
                try:
                    client.admin.command("ping")
                finally:
                    client.close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def say(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- processes ---------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc/<pid>/task/*/children), depth first."""
    found: list[int] = []
    for child in direct_children(pid):
        found.append(child)
        found.extend(descendants(child))
    return found


def direct_children(pid: int) -> list[int]:
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                children.extend(int(p) for p in handle.read().split())
        except OSError:
            continue
    return sorted(set(children))


def group_members(pgid: int) -> list[int]:
    """Processes whose process group is ``pgid`` (field 5 of /proc/<pid>/stat)."""
    members: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def killpg(pgid: int, sig: int = signal.SIGKILL) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def reap(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        say(f"process {proc.pid} still there {timeout} s after SIGKILL")


class Server:
    """SecantusDB on disk, its own process group; killed and restarted on the same storage and port."""

    def __init__(self, storage: Path, log_path: Path, port: int | None = None) -> None:
        self.storage = storage
        self.log_path = log_path
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None
        self.starts = 0

    @property
    def base_url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def url(self, database: str) -> str:
        return f"mongodb://127.0.0.1:{self.port}/{database}?retryWrites=false"

    def command(self) -> list[str]:
        exe = Path(sys.executable).with_name("secantusd-py")
        binary = str(exe) if exe.exists() else (shutil.which("secantusd-py") or str(exe))
        return [binary, "--host", "127.0.0.1", "--port", str(self.port), "--storage-path", str(self.storage),
                "--sync-on-commit"]

    def start(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.starts += 1
            if self.log is None:
                self.log = open(self.log_path, "ab")
            self.log.write(f"\n=== chaos: server start {self.starts} at {time.time():.3f}\n".encode())
            self.log.flush()
            # cwd: the storage's parent, so no secantusd.toml of the caller is picked up
            self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT,
                                         cwd=self.storage.parent, start_new_session=True)
            try:
                wait_ready(self.url("admin"), timeout=max(1.0, min(30.0, deadline - time.monotonic())))
                return
            except Exception as exc:
                self.kill()
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"server did not come up on port {self.port}: {exc!r}") from exc
                say(f"server start {self.starts} failed ({exc!r}); retrying")
                time.sleep(1.0)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> list[int]:
        """SIGKILL the whole process group; returns the pids that were in it."""
        if self.proc is None:
            return []
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        killpg(self.proc.pid)
        reap(self.proc)
        self.proc = None
        return pids

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                killpg(self.proc.pid)
                reap(self.proc)
        self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None


class Worker:
    """One ``celery worker`` in its own process group; the name (cN) is unique per incarnation."""

    def __init__(self, name: str, url: str, log_dir: Path, concurrency: int) -> None:
        self.name = name
        self.url = url
        self.log_path = log_dir / f"{name}.log"
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None
        self.started_at = 0.0
        self.last_alive = 0.0

    def start(self) -> Worker:
        env = {**os.environ, "CORE4CELERY_MONGODB_URL": self.url,
               "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
        cmd = [sys.executable, "-m", "celery", "-A", APP_MODULE, "worker", "-c", str(self.concurrency),
               "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"{self.name}@%h", "-l", "info"]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
                                     start_new_session=True)
        self.started_at = self.last_alive = time.time()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        self.last_alive = time.time()
        return True

    def kill(self) -> tuple[list[int], float]:
        """SIGKILL the whole process group; returns the pids that were in it and the time of the kill."""
        if self.proc is None:
            return [], time.time()
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        at = time.time()
        killpg(self.proc.pid)
        reap(self.proc)
        self.close()
        return pids, at

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


# -- the run -----------------------------------------------------------------
@dataclass
class Options:
    jobs: int = 1000
    seed: int = 1
    workers: int = 3
    concurrency: int = 2
    kill_every: tuple[float, float] = (3.0, 6.0)
    server_down: float = 10.0
    server_kill: bool = True
    pool_child_kill: bool = True
    worker_kills: bool = True
    max_worker_kills: int | None = None
    drain_timeout: float | None = None
    stall_timeout: float = 60.0
    settle: float = 3.0
    artifacts: Path = ARTIFACTS
    result_path: Path | None = None

    def effective_drain_timeout(self) -> float:
        return self.drain_timeout if self.drain_timeout is not None else max(300.0, 1.2 * self.jobs)


@dataclass
class Kill:
    kind: str  # worker | pool-child | server | exited (a worker that ended without our kill)
    time: float
    pids: list[int]
    worker: str | None = None
    note: str = ""


@dataclass
class Loop:
    """The chaos loop's state."""

    began: float
    deadline: float
    next_kill: float
    pool_at: float
    server_at: float
    pool_done: bool
    server_done: bool
    pool_due_since: float | None = None
    server_back_at: float | None = None
    next_poll: float = 0.0
    next_report: float = field(default_factory=lambda: time.monotonic() + 10.0)
    signature: tuple[int, frozenset[str]] | None = None
    last_change: float = field(default_factory=time.monotonic)
    fraction: float = 0.0
    outcome: str | None = None

    @property
    def server_up(self) -> bool:
        return self.server_back_at is None


@dataclass
class Plan:
    kind: str
    task: str
    kwargs: dict[str, Any]
    children: int = 0


def plan_jobs(count: int, rng: random.Random) -> list[Plan]:
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    plans: list[Plan] = []
    for i in range(count):
        kind = rng.choices(kinds, weights)[0]
        tag = f"{kind[0]}{i}"
        if kind == "deferring":
            plans.append(Plan(kind, "chaos.deferring", {"tag": tag, "times": rng.choice((1, 2))}))
        elif kind == "mother":
            children = rng.randint(3, 5)
            plans.append(Plan(kind, "chaos.mother", {"tag": tag, "children": children}, children))
        else:
            plans.append(Plan(kind, f"chaos.{kind}", {"tag": tag}))
    return plans


class Chaos:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.rng = random.Random(options.seed)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.log_dir = options.artifacts / f"run-{options.seed}-{stamp}-{os.getpid()}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.storage_root = Path(tempfile.mkdtemp(prefix="chaos-server-"))
        self.server = Server(self.storage_root / "data", self.log_dir / "server.log")
        self.url = self.server.url(DB_NAME)
        self.workers: list[Worker] = []
        self.all_workers: list[Worker] = []
        self.kills: list[Kill] = []
        self.counter = 0
        self.client: MongoClient[Any] | None = None
        self.job_ids: list[str] = []
        self.mother_ids: list[str] = []
        self.expected_total = 0
        self.notes: list[str] = []

    # -- helpers ---------------------------------------------------------
    @property
    def db(self) -> Any:
        assert self.client is not None
        return self.client[DB_NAME]

    def query(self, read: Callable[[], T]) -> T | None:
        """A registry read that returns None while the server is down."""
        try:
            return read()
        except PyMongoError:
            return None

    def note(self, message: str) -> None:
        self.notes.append(f"{time.time():.3f} {message}")
        say(message)

    def start_worker(self) -> Worker:
        self.counter += 1
        worker = Worker(f"c{self.counter}", self.url, self.log_dir, self.o.concurrency).start()
        self.workers.append(worker)
        self.all_workers.append(worker)
        return worker

    def kill_worker(self, worker: Worker) -> None:
        pids, at = worker.kill()
        self.workers.remove(worker)
        self.kills.append(Kill("worker", at, pids, worker.name))
        self.note(f"SIGKILL worker {worker.name} (pgid {worker.pid}, pids {pids}, up {at - worker.started_at:.1f} s)")

    def kill_pool_child(self, busy_only: bool) -> bool:
        candidates: list[tuple[Worker, int]] = [(w, c) for w in self.workers if w.alive() for c in direct_children(w.pid)]
        if not candidates:
            return False
        pids = [pid for _, pid in candidates]
        running = self.query(lambda: {
            doc["locked"]["pid"] for doc in self.db[LIVE].find(
                {"state": "running", "locked.pid": {"$in": pids}}, {"locked.pid": 1})
            if doc.get("locked")
        })
        if running is None:
            return False
        busy = [(w, pid) for w, pid in candidates if pid in running]
        if busy_only and not busy:
            return False
        worker, pid = self.rng.choice(busy or candidates)
        at = time.time()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        self.kills.append(Kill("pool-child", at, [pid], worker.name, "busy" if busy else "idle"))
        self.note(f"SIGKILL pool child {pid} of worker {worker.name} ({'running a job' if busy else 'idle'})")
        return True

    def kill_server(self) -> None:
        at = time.time()
        pids = self.server.kill()
        self.kills.append(Kill("server", at, pids))
        self.note(f"SIGKILL server (pids {pids}); down for {self.o.server_down:.0f} s")

    def progress(self) -> tuple[int, frozenset[str]] | None:
        """Journaled jobs and the ids of live jobs not yet final: the drain is over when no id is left, and
        stalled when neither changes (a mother deferring again and again while a child hangs is no progress)."""
        def read() -> tuple[int, frozenset[str]]:
            done = self.db[JOURNAL].estimated_document_count()
            docs = self.db[LIVE].find({"state": {"$in": list(NON_FINAL)}}, {"_id": 1})
            return done, frozenset(str(d["_id"]) for d in docs)
        return self.query(read)

    def report_progress(self) -> None:
        def read() -> tuple[int, dict[str, int]]:
            states = {s: self.db[LIVE].count_documents({"state": s}) for s in (*NON_FINAL, "complete")}
            return self.db[JOURNAL].estimated_document_count(), states
        found = self.query(read)
        if found is not None:
            done, states = found
            live = ", ".join(f"{state} {count}" for state, count in states.items() if count)
            say(f"journaled {done} of ~{self.expected_total}; live: {live or 'none'}; "
                f"workers {len(self.workers)}, kills {len(self.kills)}")

    # -- phases ----------------------------------------------------------
    def enqueue(self) -> None:
        from tests.chaos.app import build

        plans = plan_jobs(self.o.jobs, self.rng)
        self.expected_total = len(plans) + sum(p.children for p in plans)
        _, core4 = build(self.url)
        began = time.monotonic()
        for plan in plans:
            job_id = core4.enqueue(plan.task, **plan.kwargs)
            self.job_ids.append(job_id)
            if plan.kind == "mother":
                self.mother_ids.append(job_id)
        counts = Counter(p.kind for p in plans)
        self.note(f"enqueued {len(plans)} jobs in {time.monotonic() - began:.1f} s: "
                  + ", ".join(f"{k} {counts[k]}" for k, _ in MIX)
                  + f"; {self.expected_total - len(plans)} children to come")

    def wait_first_worker(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.query(lambda: self.db[WORKERS].find_one({})):
                return
            if not any(w.alive() for w in self.workers):
                raise RuntimeError(f"every worker exited before registering; see {self.log_dir}")
            time.sleep(TICK)
        raise RuntimeError(f"no worker registered within {timeout} s; see {self.log_dir}")

    def chaos_loop(self) -> dict[str, Any]:
        """Kill while the jobs drain; returns how the drain ended (drained, stalled, timeout) and when."""
        o = self.o
        loop = Loop(
            began=time.time(), deadline=time.monotonic() + o.effective_drain_timeout(),
            next_kill=time.time() + self.rng.uniform(*o.kill_every),
            pool_at=self.rng.uniform(0.1, 0.4), server_at=self.rng.uniform(0.25, 0.5),
            pool_done=not o.pool_child_kill, server_done=not o.server_kill,
        )
        while loop.outcome is None:
            self.tend_processes(loop)
            self.kill_some(loop)
            self.watch_drain(loop)
            if loop.outcome is None:
                time.sleep(TICK)
        drained_at = time.time()
        if loop.server_back_at is not None:  # never end with the server down
            time.sleep(max(0.0, loop.server_back_at - time.time()))
            self.server.start()
            self.note("server restarted on the same storage and port")
        return {"outcome": loop.outcome, "began": loop.began, "drained_at": drained_at}

    def tend_processes(self, loop: Loop) -> None:
        """Replace workers that ended by themselves, bring the server back when its time is up, keep the worker count."""
        for worker in list(self.workers):
            if not worker.alive():
                code = worker.proc.returncode if worker.proc else None
                last = worker.last_alive
                # the leader is reaped; its pool children may live on in its group (which keeps the group id theirs)
                pids = group_members(worker.pid)
                if pids:
                    killpg(worker.pid)
                worker.close()
                self.workers.remove(worker)
                self.kills.append(Kill("exited", time.time(), pids, worker.name,
                                       f"exit code {code}; last seen alive {last:.3f}"))
                self.note(f"worker {worker.name} exited by itself (code {code}); leftovers killed")
        if loop.server_up and not self.server.alive():
            self.note("server exited by itself; restarting it")
            self.kills.append(Kill("server-exited", time.time(), []))
            self.server.start()
        if loop.server_back_at is not None and time.time() >= loop.server_back_at:
            self.server.start()
            loop.server_back_at = None
            loop.last_change = time.monotonic()  # the outage is not a stall
            self.note("server restarted on the same storage and port")
        if loop.server_up:
            while len(self.workers) < self.o.workers:
                self.start_worker()

    def kill_some(self, loop: Loop) -> None:
        """Whole workers on their schedule (never while the server is down), then once a pool child, once the server."""
        o = self.o
        if not loop.server_up:
            return
        kills_left = o.max_worker_kills is None or sum(k.kind == "worker" for k in self.kills) < o.max_worker_kills
        now = time.time()
        if o.worker_kills and kills_left and now >= loop.next_kill and self.workers:
            old_enough = [w for w in self.workers if now - w.started_at >= 2.0] or self.workers
            self.kill_worker(self.rng.choice(old_enough))
            self.start_worker()
            loop.next_kill = time.time() + self.rng.uniform(*o.kill_every)
        if not loop.pool_done and loop.fraction >= loop.pool_at:
            loop.pool_due_since = loop.pool_due_since or time.monotonic()
            loop.pool_done = self.kill_pool_child(busy_only=time.monotonic() - loop.pool_due_since < 10.0)
        if not loop.server_done and loop.fraction >= loop.server_at:
            self.kill_server()
            loop.server_done = True
            loop.server_back_at = time.time() + o.server_down

    def watch_drain(self, loop: Loop) -> None:
        """Sets loop.outcome once no live job is open, nothing moved for the stall timeout, or the deadline passed."""
        if not loop.server_up:
            return
        clock = time.monotonic()
        if clock >= loop.next_poll:
            loop.next_poll = clock + 1.0
            current = self.progress()
            if current is not None:
                loop.fraction = current[0] / max(1, self.expected_total)
                if current != loop.signature:
                    loop.signature, loop.last_change = current, clock
                if not current[1]:
                    loop.outcome = "drained"
                    return
        if clock >= loop.next_report:
            loop.next_report = clock + 10.0
            self.report_progress()
        if clock - loop.last_change > self.o.stall_timeout:
            loop.outcome = "stalled"
            open_jobs = len(loop.signature[1]) if loop.signature else "?"
            self.note(f"nothing moved for {self.o.stall_timeout:.0f} s; {open_jobs} jobs open")
        elif clock > loop.deadline:
            loop.outcome = "timeout"

    # -- checks ----------------------------------------------------------
    def collect(self) -> dict[str, Any]:
        """Everything the checks need, read once the killing has stopped (retried through a short outage)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                db = self.db
                mother_keys: list[Any] = [*self.mother_ids, *(ObjectId(m) for m in self.mother_ids)]
                children = [str(d["_id"]) for coll in (LIVE, JOURNAL)
                            for d in db[coll].find({"mid": {"$in": mother_keys}}, {"_id": 1})]
                return {
                    "live": {str(d["_id"]): d for d in db[LIVE].find({}, {"args": 0, "result": 0})},
                    "journal": {str(d["_id"]): d for d in db[JOURNAL].find({}, {"args": 0, "result": 0})},
                    "children": sorted(set(children)),
                    "runs": list(db[RUNS].find({})),
                }
            except PyMongoError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def check(self, data: dict[str, Any]) -> dict[str, Any]:
        live: dict[str, Any] = data["live"]
        journal: dict[str, Any] = data["journal"]
        ids = [*self.job_ids, *data["children"]]
        not_complete: Counter[str] = Counter()
        examples: list[dict[str, Any]] = []
        for job_id in ids:
            doc = journal.get(job_id)
            if doc is not None and doc.get("state") == "complete":
                continue
            where = f"journal:{doc.get('state')}" if doc is not None else (
                f"live:{live[job_id].get('state')}" if job_id in live else "missing")
            not_complete[where] += 1
            source = doc if doc is not None else live.get(job_id, {})
            if len(examples) < 10:
                examples.append({"id": job_id, "where": where, "name": source.get("name"),
                                 "trial": source.get("trial"), "last_error": error_line(source.get("last_error"))})
        complete_live = [job_id for job_id, doc in live.items() if doc.get("state") == "complete"]
        running_after = [job_id for job_id, doc in live.items() if doc.get("state") == "running"]
        runs = self.run_intervals(data["runs"], journal)
        gated = [r for r in runs if r["name"] == GATED]
        max_gated, gated_at = max_overlap(gated)
        overlapping = overlapping_runs(runs)
        return {
            "jobs": len(self.job_ids),
            "children": len(data["children"]),
            "lost": sum(not_complete.values()),
            "lost_by_state": dict(not_complete),
            "lost_examples": examples,
            "complete_live": len(complete_live),
            "complete_live_ids": complete_live[:20],
            "running_after": len(running_after),
            "running_after_ids": running_after[:20],
            "runs": len(runs),
            "runs_end_by": dict(Counter(r["end_by"] for r in runs)),
            # runs that ended without a finish record and without a kill of ours: the end is inferred
            "runs_inferred_end": [r for r in runs if r["end_by"] in ("next run", "journal", "unknown")][:20],
            "max_gated_overlap": max_gated,
            "max_gated_overlap_runs": gated_at,
            "overlapping_runs": len(overlapping),
            "overlapping_examples": overlapping[:10],
        }

    def run_intervals(self, records: list[dict[str, Any]], journal: dict[str, Any]) -> list[dict[str, Any]]:
        """Each run as [start, end] (see :func:`run_end` for a run without a recorded finish)."""
        by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rec in records:
            by_job[str(rec.get("job"))].append(rec)
        runs: list[dict[str, Any]] = []
        for job_id, recs in by_job.items():
            recs.sort(key=lambda r: (r["start"], r.get("trial") or 0))
            for i, rec in enumerate(recs):
                later = recs[i + 1] if i + 1 < len(recs) else None
                end, end_by = run_end(rec, later, journal.get(job_id), self.kills)
                runs.append({"job": job_id, "name": rec.get("name"), "trial": rec.get("trial"), "pid": rec.get("pid"),
                             "worker": worker_name(rec), "start": float(rec["start"]), "end": end, "end_by": end_by,
                             "outcome": rec.get("outcome")})
        return runs

    # -- all of it -------------------------------------------------------
    def run(self) -> dict[str, Any]:
        o = self.o
        result: dict[str, Any] = {"seed": o.seed, "options": jsonable(asdict(o)), "log_dir": str(self.log_dir)}
        try:
            self.note(f"server on port {self.server.port}, storage {self.server.storage}; logs in {self.log_dir}")
            self.server.start()
            self.client = MongoClient(self.url, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000,
                                      socketTimeoutMS=30000)
            self.enqueue()
            for _ in range(o.workers):
                self.start_worker()
            self.wait_first_worker()
            timing = self.chaos_loop()
            self.note(f"drain {timing['outcome']} after {timing['drained_at'] - timing['began']:.1f} s; "
                      f"no more kills, settling {o.settle:.0f} s")
            time.sleep(o.settle)
            figures = self.check(self.collect())
            result.update(figures)
            result.update({
                "outcome": timing["outcome"],
                "drain_time": round(timing["drained_at"] - timing["began"], 1),
                "worker_kills": sum(1 for k in self.kills if k.kind == "worker"),
                "pool_child_kills": sum(1 for k in self.kills if k.kind == "pool-child"),
                "server_kills": sum(1 for k in self.kills if k.kind == "server"),
                "unexpected_exits": sum(1 for k in self.kills if k.kind in ("exited", "server-exited")),
                "workers_started": len(self.all_workers),
            })
            result["violations"] = violations(result)
            result["passed"] = result["violations"] == 0 and timing["outcome"] == "drained"
        except BaseException as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
            result["traceback"] = traceback.format_exc()
            result["passed"] = False
            if not isinstance(exc, (Exception, KeyboardInterrupt)):
                raise
        finally:
            result["kills"] = [asdict(k) for k in self.kills]
            result["notes"] = self.notes
            with signals_held():
                self.cleanup()
                self.write_result(result)
        return result

    def cleanup(self) -> None:
        # only groups whose leader we have not reaped: a reaped leader's pid (and so its group id) may
        # already belong to someone else's process
        for worker in self.all_workers:
            if worker.proc is not None and worker.proc.poll() is None:
                killpg(worker.pid)
                reap(worker.proc)
            worker.close()
        self.workers.clear()
        if self.client is not None:
            self.client.close()
        self.server.stop()
        shutil.rmtree(self.storage_root, ignore_errors=True)

    def write_result(self, result: dict[str, Any]) -> None:
        path = self.o.result_path or self.o.artifacts / f"result-{self.o.seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(jsonable(result), indent=2, sort_keys=True) + "\n")
        result["result_path"] = str(path)


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGTERM/SIGINT wait until the cleanup is done (only the main thread can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    saved = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
             for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if received:
            say(f"cleanup done; now handling signal {received[0]}")
            os.kill(os.getpid(), received[0])


# -- analysis helpers --------------------------------------------------------
def worker_name(record: dict[str, Any]) -> str:
    """cN of the record's ``cN@host``."""
    return str(record.get("worker") or "").split("@", 1)[0]


def run_end(record: dict[str, Any], next_run: dict[str, Any] | None, journaled: dict[str, Any] | None,
            kills: Sequence[Kill]) -> tuple[float, str]:
    """When a run ended, and how that is known: its recorded finish; else the SIGKILL of its pool process
    (same worker and pid, at or after its start); else the kill (or unexpected exit) of its whole worker;
    else the start of the job's next run; else, for its last run, the journal's ``finished_at``;
    else only its start ("unknown", so it cannot make an overlap)."""
    start = float(record["start"])
    if record.get("finish") is not None:
        return float(record["finish"]), "finish"
    worker = worker_name(record)
    child = [k.time for k in kills
             if k.kind == "pool-child" and k.worker == worker and record.get("pid") in k.pids and k.time >= start]
    if child:
        return min(child), "pool-child kill"
    # worker names are never reused: every run of that worker ended by its death (max(): a run may have
    # started in the instant between the kill's time stamp and the signal)
    whole = [k.time for k in kills if k.kind in ("worker", "exited") and k.worker == worker]
    if whole:
        return max(min(whole), start), "worker kill"
    if next_run is not None:
        return float(next_run["start"]), "next run"
    if journaled is not None and journaled.get("finished_at") and utc_seconds(journaled["finished_at"]) >= start:
        return utc_seconds(journaled["finished_at"]), "journal"
    return start, "unknown"


def utc_seconds(stamp: Any) -> float:
    if isinstance(stamp, datetime):
        aware = stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
        return aware.timestamp()
    return float(stamp)


def error_line(error: Any) -> str | None:
    if isinstance(error, dict):
        return str(error.get("exception"))[:300]
    return None if error is None else str(error)[:300]


def max_overlap(runs: Sequence[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    """The most runs alive at one instant (an end at t comes before a start at t), and those runs."""
    events = sorted([(r["start"], 1, i) for i, r in enumerate(runs)] + [(r["end"], 0, i) for i, r in enumerate(runs)])
    alive: set[int] = set()
    best, best_set = 0, []
    for _, is_start, i in events:
        if is_start:
            alive.add(i)
            if len(alive) > best:
                best, best_set = len(alive), [runs[j] for j in sorted(alive)]
        else:
            alive.discard(i)
    return best, [{k: r[k] for k in ("job", "trial", "worker", "pid", "start", "end", "end_by")} for r in best_set]


def overlapping_runs(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs of runs of one job whose intervals overlap (touching ends do not count)."""
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_job[run["job"]].append(run)
    pairs: list[dict[str, Any]] = []
    for job_id, job_runs in by_job.items():
        job_runs.sort(key=lambda r: r["start"])
        for i, first in enumerate(job_runs):
            for second in job_runs[i + 1:]:
                if second["start"] >= first["end"]:
                    break
                pairs.append({"job": job_id, "name": first["name"],
                              "first": {k: first[k] for k in ("trial", "worker", "pid", "start", "end", "end_by")},
                              "second": {k: second[k] for k in ("trial", "worker", "pid", "start", "end", "end_by")}})
    return pairs


def violations(result: dict[str, Any]) -> int:
    return (int(result["lost"]) + int(result["complete_live"]) + int(result["running_after"])
            + max(0, int(result["max_gated_overlap"]) - GATED_MAX) + int(result["overlapping_runs"]))


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (ObjectId, Path)):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def report(result: dict[str, Any]) -> str:
    if "violations" not in result:
        trace = "" if str(result.get("error", "")).startswith("KeyboardInterrupt") else result.get("traceback", "")
        return (f"chaos seed {result.get('seed')}: the run did not finish: {result.get('error')}\n{trace}"
                f"  result: {result.get('result_path')}; logs: {result.get('log_dir')}")
    status = "PASS" if result["passed"] else "FAIL"
    lost = ", ".join(f"{k} {v}" for k, v in sorted(result["lost_by_state"].items())) or "none"
    lines = [
        f"chaos {status} seed {result['seed']}: {result['jobs']} jobs + {result['children']} children, "
        f"{result['violations']} violation(s), drain {result['outcome']} in {result['drain_time']} s; "
        f"lost: {lost}; kills: {result['worker_kills']} worker, {result['pool_child_kills']} pool child, "
        f"{result['server_kills']} server; {result['unexpected_exits']} unexpected exit(s)",
    ]
    rows = [
        ("jobs", result["jobs"] + result["children"]),
        ("lost", result["lost"]),
        ("complete-live", result["complete_live"]),
        ("running-after", result["running_after"]),
        (f"max gated overlap (<= {GATED_MAX})", result["max_gated_overlap"]),
        ("overlapping runs", result["overlapping_runs"]),
        ("worker kills", result["worker_kills"]),
        ("pool-child kills", result["pool_child_kills"]),
        ("server kills", result["server_kills"]),
        ("drain time (s)", result["drain_time"]),
    ]
    width = max(len(name) for name, _ in rows)
    lines += [f"  {name:<{width}}  {value:>8}" for name, value in rows]
    for example in result.get("lost_examples", []):
        lines.append(f"  not complete: {example['id']} {example['name']} {example['where']} "
                     f"trial {example['trial']}: {example['last_error']}")
    for job_id in result.get("complete_live_ids", []):
        lines.append(f"  complete but live: {job_id}")
    for job_id in result.get("running_after_ids", []):
        lines.append(f"  running after the drain: {job_id}")
    if result["max_gated_overlap"] > GATED_MAX:
        lines.append(f"  gated runs at once: {json.dumps(result['max_gated_overlap_runs'])}")
    for pair in result.get("overlapping_examples", []):
        lines.append(f"  overlapping runs: {json.dumps(pair)}")
    lines.append(f"  result: {result.get('result_path')}; logs: {result.get('log_dir')}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="top-level jobs to enqueue (default 1000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=3, help="celery workers at any time (default 3)")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker (default 2)")
    parser.add_argument("--kill-every", type=float, nargs=2, default=(3.0, 6.0), metavar=("MIN", "MAX"),
                        help="seconds between whole-worker kills, drawn uniformly (default 3 6)")
    parser.add_argument("--no-worker-kill", action="store_true", help="no whole-worker kills")
    parser.add_argument("--max-worker-kills", type=int, default=None, help="stop the worker kills after this many")
    parser.add_argument("--no-pool-child-kill", action="store_true", help="no pool-child kill")
    parser.add_argument("--server-down", type=float, default=10.0, help="seconds the server stays down (default 10)")
    parser.add_argument("--no-server-kill", action="store_true")
    parser.add_argument("--drain-timeout", type=float, default=None,
                        help="overall bound on the drain (default max(300, 1.2 s per job))")
    parser.add_argument("--stall-timeout", type=float, default=60.0,
                        help="end the drain when no live job changed for this long (default 60)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between the drain and the checks")
    parser.add_argument("--artifacts", type=Path, default=ARTIFACTS, help=f"logs and results (default {ARTIFACTS})")
    parser.add_argument("--result", type=Path, default=None, help="result JSON (default ARTIFACTS/result-SEED.json)")
    args = parser.parse_args(argv)
    low, high = sorted(args.kill_every)
    if args.jobs < 1 or args.workers < 1 or args.concurrency < 1 or low <= 0:
        parser.error("--jobs, --workers, --concurrency and --kill-every must be positive")
    return Options(
        jobs=args.jobs, seed=args.seed, workers=args.workers, concurrency=args.concurrency, kill_every=(low, high),
        server_down=args.server_down, server_kill=not args.no_server_kill, pool_child_kill=not args.no_pool_child_kill,
        worker_kills=not args.no_worker_kill, max_worker_kills=args.max_worker_kills,
        drain_timeout=args.drain_timeout, stall_timeout=args.stall_timeout, settle=args.settle,
        artifacts=args.artifacts, result_path=args.result,
    )


def run(options: Options) -> dict[str, Any]:
    return Chaos(options).run()


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)

    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        result = run(options)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(report(result), flush=True)
    if "violations" not in result:
        return 2
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
